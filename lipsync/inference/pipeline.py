"""lip_sync(): a face video (or still image) + driving speech -> an H.264 + AAC mp4 whose lower face speaks it.

Streaming, two passes over the face video; the video is never held in memory:
1. face boxes of every source frame the output can show (`faces.face_boxes`; detection sees each source frame
   once, even when the output ping-pongs over it; a video longer than the audio is read only as far as needed);
2. output frame i shows source frame `pingpong_indices(n_src, n_out)[i]`; in batches: crop the face, generate
   (`generation.generate_faces`, on CUDA replayed as one recorded graph), paste ONLY the lower face back through
   the feathered mask, and encode the frame into the mp4 (one H.264 encode, the driving audio muxed in the same
   pass, temp name then rename). Four threads overlap the CPU and GPU work (decode + crop -> generate -> paste ->
   write), and pass 2 decodes the face video and writes the mp4 in two child processes (`lipsync.video_workers`),
   so that PyAV does not wait for Python's GIL behind them.

The output lasts as long as the audio (`timing.num_video_frames`, within a frame) at the face video's own fps
and resolution (divided by --resize_factor); a still image is repeated at `fps`. Frames without a face pass
through unchanged.
"""
from __future__ import annotations

import contextlib
import itertools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch
from tqdm import tqdm

from lipsync import timing
from lipsync.audio import decode_audio, load_audio
from lipsync.compile_cache import remember_compiled
from lipsync.errors import Cancelled, UserError
from lipsync.faces import (
    SMOOTH_WINDOW,
    FaceDetector,
    color_match,
    crop_boxes,
    crop_faces,
    face_boxes,
    fixed_box,
    lower_face_mask,
    paste_faces,
)
from lipsync.inference.generation import GraphedGeneration, generate_faces, reference_latent
from lipsync.inference.models import LipSyncModels, compile_key, compile_models, compile_pays, load_models
from lipsync.inference.options import DEFAULT_OUTFILE, STAGES, LipSyncOptions, check_options
from lipsync.iterables import background
from lipsync.stopwatch import Stopwatch
from lipsync.video_io import (
    count_frames,
    is_image_path,
    iter_frames,
    iter_frames_by_index,
    pingpong_indices,
    probe_video,
    read_image,
)
from lipsync.video_workers import VideoWriterProcess, iter_frames_by_index_in_process, start_worker, stop_worker
from lipsync.video_writer import check_output_video


@dataclass
class FaceSource:
    """The face input: a video streamed from disk, or one still frame (an image file, or --static)."""
    path: Path
    fps: float
    width: int
    height: int
    num_frames: int  # from the header, for progress bars only (pass 1 counts the real frames)
    resize_factor: int
    still: np.ndarray | None  # RGB uint8 [H, W, 3]

    def frames(self) -> Iterator[np.ndarray]:
        """Every source frame, in order (pass 1)."""
        if self.still is not None:
            return iter([self.still])
        return iter_frames(self.path, target_fps=self.fps, resize_factor=self.resize_factor)

    def frames_at(self, indices: np.ndarray, chunk: int = 48,
                  worker: subprocess.Popen | None = None) -> Iterator[np.ndarray]:
        """Source frames indices[0], indices[1], ... holding at most `chunk` decoded frames; decoded by `worker`
        (a `video_workers.start_worker("decode")` process) when given: pass 2 runs next to other Python threads."""
        if self.still is not None:
            return (self.still for _ in indices)
        if worker is not None:
            return iter_frames_by_index_in_process(self.path, indices, fps=self.fps, resize_factor=self.resize_factor,
                                                   chunk=chunk, worker=worker)
        return iter_frames_by_index(self.path, indices, fps=self.fps, resize_factor=self.resize_factor, chunk=chunk)


def open_face(face, static: bool, fps: float, resize_factor: int) -> FaceSource:
    """A video keeps its own fps (also with --static); an image is shown at `fps`."""
    path = Path(face)
    if not path.is_file():
        raise UserError(f"face file not found: {path}")
    if is_image_path(path):
        still = read_image(path)
        if resize_factor > 1:
            height, width = still.shape[:2]
            still = cv2.resize(still, (width // resize_factor, height // resize_factor), interpolation=cv2.INTER_AREA)
        return FaceSource(path, fps, still.shape[1], still.shape[0], 1, resize_factor, still)
    info = probe_video(path)  # one-line UserError for a missing, unreadable or video-less file
    source = FaceSource(path, info.fps, info.width // resize_factor, info.height // resize_factor, info.num_frames,
                        resize_factor, None)
    if static:
        frames = source.frames()
        source.still = next(frames, None)
        frames.close()
        if source.still is None:
            raise UserError(f"{path} has no frames")
    return source


@dataclass
class Batch:
    """One batch of output frames on its way through the pipeline."""
    start: int  # output index of the first frame
    sources: np.ndarray  # [B] source frame shown by each output frame
    frames: list  # B x [H, W, 3] uint8 RGB input frames
    rows: np.ndarray  # [F] rows of the batch with a face
    crops: np.ndarray | None = None  # [U, S, S, 3] uint8: each distinct source face of the rows, cropped once
    inverse: np.ndarray | None = None  # [F] index into crops of each row
    faces: np.ndarray | None = None  # [F, S, S, 3] uint8 generated faces


def _prepare_batches(source: FaceSource, sources: np.ndarray, boxes: np.ndarray, found: np.ndarray,
                     batch_size: int, image_size: int, timer: Stopwatch,
                     decoder: subprocess.Popen | None) -> Iterator[Batch]:
    """CPU side, thread 1: the output's source frames, decoded by the `decoder` process (a video's; None for a
    still), and each distinct face of a batch cropped once."""
    frames = timer.iterate("video_decode", source.frames_at(sources, chunk=max(48, batch_size), worker=decoder))
    for start in range(0, len(sources), batch_size):
        batch_sources = sources[start:start + batch_size]
        batch = Batch(start, batch_sources, [next(frames) for _ in batch_sources],
                      np.flatnonzero(found[batch_sources]))
        if batch.rows.size:
            # a still image or a ping-pong turn repeats source frames: crop and encode each once
            row_sources = batch_sources[batch.rows]
            _, first, batch.inverse = np.unique(row_sources, return_index=True, return_inverse=True)
            with timer.stage("crop", len(first)):
                batch.crops = crop_faces([batch.frames[batch.rows[i]] for i in first], boxes[row_sources[first]],
                                         image_size)  # [U, S, S, 3]
        yield batch


def _generate_eagerly(models: LipSyncModels, batch: Batch, audio: torch.Tensor, reference: torch.Tensor | None,
                      timer: Stopwatch, pad_to: int | None) -> None:
    """GPU side without a CUDA graph: the batch's crops + its rows' audio windows [F, 10, D] -> generated faces
    [F, S, S, 3] uint8 (stored on the batch), each model call launched from Python and timed per stage."""
    num = len(batch.rows)
    crops = torch.from_numpy(batch.crops).to(models.device, non_blocking=True)
    repeat = torch.from_numpy(batch.inverse).to(models.device)
    faces = generate_faces(models, crops, repeat, audio.to(models.device), reference, pad_to,
                           stage=lambda name: timer.stage(name, num))
    with timer.stage("vae_decode"):  # the copy back belongs to the decode stage
        batch.faces = faces.cpu().numpy()


def _blend(batches: Iterable[Batch], boxes: np.ndarray, mask: np.ndarray, match_colors: bool,
           timer: Stopwatch) -> Iterator[tuple[Batch, list[np.ndarray]]]:
    """CPU side, thread 3: paste the generated lower faces back (feathered mask) -> (batch, its output frames)."""
    for batch in batches:
        output = list(batch.frames)
        if batch.rows.size:
            with timer.stage("blend", len(batch.rows)):
                faces = batch.faces
                if match_colors:
                    faces = color_match(faces, batch.crops[batch.inverse], mask)
                pasted = paste_faces([batch.frames[r] for r in batch.rows], boxes[batch.sources[batch.rows]],
                                     faces, mask)
                for row, frame in zip(batch.rows, pasted):
                    output[row] = frame
        yield batch, output


def _announce(opts: LipSyncOptions, step: str) -> None:
    """on_progress for a step without a frame count: (step, 0, 0)."""
    if opts.on_progress is not None:
        opts.on_progress(step, 0, 0)


def _check_cancel(opts: LipSyncOptions) -> None:
    if opts.cancel is not None and opts.cancel.is_set():
        raise Cancelled("lip sync cancelled")


def _write(blended: Iterable[tuple[Batch, list[np.ndarray]]], writer: VideoWriterProcess, boxes: np.ndarray,
           found: np.ndarray, opts: LipSyncOptions, total: int, bar, timer: Stopwatch) -> None:
    """CPU side, thread 4 (the caller's): hand the frames to the encoder process; progress and cancel here."""
    written = 0
    for batch, output in blended:
        _check_cancel(opts)
        with timer.stage("write", len(output)):
            for frame in output:
                writer.write(frame)
        if opts.on_frame is not None:
            for row, (src, before, after) in enumerate(zip(batch.sources, batch.frames, output)):
                opts.on_frame(batch.start + row, int(src), boxes[src] if found[src] else None, before, after)
        written += len(output)
        bar.update(len(output))
        if opts.on_progress is not None:
            opts.on_progress("lip sync", written, total)


def _pass1_boxes(source: FaceSource, opts: LipSyncOptions, num_out: int, timer: Stopwatch,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1: crop boxes [N, 4] x1y1x2y2 and found [N] of the source frames the output can show. A video longer
    than the audio is read only up to frame num_out + SMOOTH_WINDOW // 2: the smoothed boxes of the shown frames
    are then exactly those of a whole-video pass, and a 10-minute face video driven by 10 s of speech costs 10 s
    of detection."""
    needed = max(num_out + SMOOTH_WINDOW // 2, (opts.ref_frame or 0) + 1)
    if opts.box is not None and source.still is None:  # a fixed box needs only the number of frames
        with timer.stage("video_decode"):
            num_frames = count_frames(source.path, source.fps, needed)
        with timer.stage("detect", num_frames):
            return crop_boxes(fixed_box(opts.box, num_frames), opts.pads, smooth=False)  # constant: nothing to smooth
    detector = None if opts.box is not None else FaceDetector(device=device)  # on the models' GPU
    frames = source.frames()
    total = 1 if source.still is not None else min(source.num_frames, needed)

    def counted(items):  # progress and cancel between frames, in the caller's thread
        for done, frame in enumerate(items, 1):
            _check_cancel(opts)
            if opts.on_progress is not None and (done % opts.batch_size == 0 or done == total):
                opts.on_progress("detect", done, total)
            yield frame

    bar = tqdm(counted(timer.iterate("video_decode", itertools.islice(frames, needed))), desc="detect faces",
               unit="frame", total=total, disable=None if opts.progress else True, leave=False)
    with timer.stage("detect"):
        boxes, found = face_boxes(bar, detector, batch_size=opts.batch_size, pads=opts.pads,
                                  smooth=not opts.nosmooth and source.still is None, box=opts.box)
    bar.close()
    if hasattr(frames, "close"):  # a video decoder stopped early: close its file now
        frames.close()
    timer.items["detect"] = len(boxes)
    return boxes, found


@torch.inference_mode()
def lip_sync(checkpoint, face, audio, outfile=DEFAULT_OUTFILE, **options) -> dict:
    """Lip-sync `face` (video or image) to `audio` (any file with an audio stream) into `outfile` (mp4).

    checkpoint: a generator checkpoint of any kind `lipsync.checkpoint` reads, or LipSyncModels from
    `load_models` (then the model options are ignored). options: the fields of LipSyncOptions.
    Returns the run summary (frame counts, faces found, wall seconds per step, seconds / frames / fps per stage).
    Raises UserError for bad input and Cancelled when `cancel` is set; then no output file exists.
    """
    opts = LipSyncOptions(**options)
    check_options(opts)
    check_output_video(outfile)  # before any work: the writer process would report it at the first frame
    steps = Stopwatch()  # laps: the wall seconds of each step, in order (what a short clip's time goes to)

    source = open_face(face, opts.static, opts.fps, opts.resize_factor)
    speech = load_audio(audio)  # float32 [S] 16 kHz mono: what the audio encoder hears
    seconds = len(speech) / timing.AUDIO_SAMPLE_RATE
    if opts.max_seconds is not None and seconds > opts.max_seconds:
        raise UserError(f"{Path(audio).name} lasts {seconds:.1f} s: the limit is {opts.max_seconds:g} s")
    track, track_rate = decode_audio(audio)  # float32 [C, S'] at the file's own rate: what the output plays
    if track.shape[0] > 2:  # the AAC writer takes mono or stereo
        track = track.mean(axis=0)
    num_out = timing.num_video_frames(len(speech), source.fps)
    if num_out == 0:
        raise UserError(f"{audio} is shorter than one video frame ({len(speech)} samples)")

    with contextlib.ExitStack() as workers:
        # pass 2's decoder and writer processes start now: their interpreters load while this one loads the
        # models and finds the face boxes. An error on the way discards the output (and stops both).
        decoder = None
        if source.still is None:
            decoder = start_worker("decode")
            workers.callback(stop_worker, decoder)
        writer = workers.enter_context(VideoWriterProcess(outfile, source.fps, source.width, source.height,
                                                          crf=opts.crf, audio=track, audio_rate=track_rate,
                                                          preset=opts.preset))
        steps.lap("inputs")  # face probe, audio decode, worker processes started
        if isinstance(checkpoint, LipSyncModels):
            models = checkpoint
        else:
            _announce(opts, "load models")
            models = load_models(checkpoint, opts.unet_config, opts.audio_encoder, opts.codec, opts.image_size,
                                 opts.device, compile=bool(opts.compile))
            if opts.compile is None and compile_pays(models, opts.batch_size, num_out):
                compile_models(models)
        sync = torch.cuda.synchronize if models.device.type == "cuda" else None
        timer = Stopwatch(sync)
        _announce(opts, "encode audio")
        with timer.stage("audio", num_out):
            features = models.audio_encoder.encode(speech)  # [F, D] at 50 Hz

        steps.lap("models_and_audio")
        boxes, found = _pass1_boxes(source, opts, num_out, timer, models.device)  # [N, 4] x1y1x2y2, [N] bool
        steps.lap("boxes")
        if not found.any():
            raise UserError(f"no face found in any of the {len(boxes)} frames of {face} that the output would show")
        pad_to = opts.batch_size if models.compiled else None  # compiled: one batch shape for every call
        reference = None
        if opts.ref_frame is not None:
            k = opts.ref_frame
            if k >= len(boxes):
                raise UserError(f"--ref_frame {k}: the face input has only {len(boxes)} frames")
            if not found[k]:
                raise UserError(f"--ref_frame {k}: no face found in that frame")
            reference = reference_latent(models, next(source.frames_at(np.array([k]))), boxes[k], pad_to)

        # pass 2: four threads overlap CPU and GPU work: decode + crop -> codec + UNet (GPU) -> paste -> encode
        sources = pingpong_indices(len(boxes), num_out)  # [n_out] source frame shown by each output frame
        mask = lower_face_mask(models.image_size)  # [S, S] float32 in crop coordinates
        timers = [Stopwatch(), timer, Stopwatch(), Stopwatch()]  # one per thread
        # each thread is stopped and joined on the way out, before the workers' pipes close: after an error or a
        # cancel, no thread of this run is left reading a pipe whose descriptor the next run may be given
        prepared = workers.enter_context(contextlib.closing(background(
            _prepare_batches(source, sources, boxes, found, opts.batch_size, models.image_size, timers[0], decoder))))

        graphed = None
        if opts.cuda_graph and models.device.type == "cuda":
            with timer.stage("generate"):  # recording (and compiling, with --compile) is charged to the stage
                graphed = GraphedGeneration.for_models(models, opts.batch_size, features.shape[1],
                                                       reference is not None)

        def generated():
            for batch in prepared:
                if batch.rows.size:
                    windows = timing.generator_audio_windows(features, batch.start + batch.rows, fps=source.fps)
                    with torch.inference_mode():  # grad mode is per thread
                        if graphed is None:
                            _generate_eagerly(models, batch, windows, reference, timer, pad_to)  # windows [F, 10, D]
                        else:
                            with timer.stage("generate", len(batch.rows)):
                                batch.faces = graphed(batch.crops, batch.inverse, windows, reference)
                yield batch

        steps.lap("reference_and_graph")
        if opts.on_progress is not None:
            opts.on_progress("lip sync", 0, num_out)
        with tqdm(total=num_out, desc="lip sync", unit="frame", disable=None if opts.progress else True) as bar:
            # generation and pasting each run one batch ahead in their own threads; the main thread writes
            generated_ahead = workers.enter_context(contextlib.closing(background(generated())))
            blended = workers.enter_context(contextlib.closing(background(
                _blend(generated_ahead, boxes, mask, opts.color_match, timers[2]))))
            _write(blended, writer, boxes, found, opts, num_out, bar, timers[3])
        for other in (timers[0], timers[2], timers[3]):
            timer.merge(other)
        steps.lap("generate_and_write")
        _announce(opts, "finish")
    steps.lap("finish")  # the writer flushes x264 and closes the file; both workers stop
    if models.compiled:  # its kernels are in the persistent cache now: later runs of short clips may compile too
        remember_compiled(compile_key(models, opts.batch_size))

    faces_found = int(found[sources].sum())
    # source_frames: frames of the face input read (all of them when the output ping-pongs over them)
    return {"outfile": str(outfile), "frames": num_out, "source_frames": len(boxes), "faces_found": faces_found,
            "frames_without_face": num_out - faces_found, "fps": source.fps, "width": source.width,
            "height": source.height, "crop_size": models.image_size, "audio_seconds": round(seconds, 3),
            "device": str(models.device), "dtype": str(models.dtype).replace("torch.", ""), "compiled": models.compiled,
            "seconds": round(steps.total, 3), "phases": steps.laps, "stages": timer.summary(STAGES)}
