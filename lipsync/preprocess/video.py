"""Video stage: raw videos -> dataset folders (latents.safetensors, audio.wav, meta.json; lipsync.data.folder).

Frames without a face are dropped (a gap in frame_index), never shifted. A video with scene cuts becomes one
folder per shot (lipsync.preprocess.shots: `<name>_shot{k:03d}`; shots shorter than min_shot_seconds or without a
face are dropped and named in the video's summary line); boxes are smoothed within a shot only. Finished folders
are skipped, so an interrupted run redoes exactly the unfinished videos. A video that fails becomes one line of the
final summary.
"""
from __future__ import annotations

import functools
import itertools
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.multiprocessing as mp
from tqdm import tqdm

from lipsync import timing
from lipsync.audio import load_audio
from lipsync.data.folder import is_finished, read_meta, write_video_folder
from lipsync.errors import UserError
from lipsync.faces import FaceDetector, crop_boxes, crop_faces, raw_boxes
from lipsync.files import check_writable_folder, walk
from lipsync.iterables import background, batched
from lipsync.latent_codec import DEFAULT_CODEC, LatentCodec, mask_lower_half, padded_call, uint8_to_model
from lipsync.preprocess.report import Outcome, attempt
from lipsync.preprocess.shots import DEFAULT_THRESHOLD, CutDetector, shot_folder, shot_folders, shot_ranges
from lipsync.video_io import VideoInfo, iter_frames, probe_video

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm"})


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of this checkout, else "unknown" (e.g. an installed copy)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass(frozen=True)
class VideoSettings:
    """The recipe of a dataset (recorded in every meta.json). Picklable: it travels to spawned workers."""
    image_size: int = 768
    codec: str = DEFAULT_CODEC
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right (px, full resolution)
    box: tuple[int, int, int, int] | None = None  # fixed face box (top, bottom, left, right) instead of detection
    smooth: bool = True
    detect_size: int = 480
    batch_size: int = 16
    fps: float = timing.VIDEO_FPS
    scene_split: bool = True  # one folder per shot of a video with scene cuts
    scene_threshold: float = DEFAULT_THRESHOLD  # ContentDetector's cut threshold
    min_shot_seconds: float = 0.4  # shorter shots of a cut video are dropped (0.4 s: two 5-frame windows apart)
    compile: bool = False  # torch.compile the codec (CUDA only; execution, not recipe: never in meta.json)


@dataclass(frozen=True)
class Shot:
    """A kept shot of a video: frames [start, end) at the dataset fps, its square boxes [end - start, 4] and found."""
    index: int
    start: int
    end: int
    boxes: np.ndarray
    found: np.ndarray


@dataclass(frozen=True)
class VideoJob:
    video: Path
    out_dir: Path
    name: str  # video path relative to the data root


def find_videos(data_root) -> list[Path]:
    """Every video file under data_root (any depth), sorted, so shards and worker splits are reproducible."""
    return [folder / name for folder, files in walk(data_root) for name in files
            if Path(name).suffix.lower() in VIDEO_EXTENSIONS]


def video_jobs(videos: list[Path], data_root, output_root) -> list[VideoJob]:
    """Output folder = output_root / relative path without the extension (LRS2 `group/clip.mp4` -> `group/clip/`)."""
    data_root, output_root = Path(data_root), Path(output_root)
    jobs, seen = [], {}
    for video in videos:
        relative = video.relative_to(data_root)
        out_dir = output_root / relative.with_suffix("")
        if out_dir in seen:
            raise UserError(f"{seen[out_dir]} and {relative} would both be written to {out_dir}: rename one")
        seen[out_dir] = relative
        jobs.append(VideoJob(video, out_dir, str(relative)))
    return jobs


def _until(stop: threading.Event, items: Iterable) -> Iterator:
    """`items` until `stop` is set, then an error (the caller is gone: nobody reads the result)."""
    for item in items:
        if stop.is_set():
            raise RuntimeError("stopped")
        yield item


class VideoPreprocessor:
    """Loads the codec and the detector once, then turns videos into dataset folders (`run`)."""

    def __init__(self, settings: VideoSettings, device="cpu"):
        self.settings = settings
        self.device = torch.device(device)
        # bf16 on GPU: the VAE encoder's activations overflow fp16 for some VAEs; latents are stored fp16 anyway
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.codec = LatentCodec.from_pretrained(settings.codec, self.device, dtype)
        self.compiled = settings.compile and self.device.type == "cuda"
        if self.compiled:
            torch.backends.cudnn.benchmark = True
            self.codec.compile()
        self.latent_size = self.codec.latent_size(settings.image_size)
        self.detector = None if settings.box else FaceDetector(
            settings.detect_size, device=self.device)

    def run(self, jobs: Iterable[VideoJob]) -> Iterator[Outcome]:
        """Outcome of every job, in order. Pass 1 of the next video (probe, audio, decode, detection) runs in a
        background thread while this one's pass 2 encodes, so the detector's light GPU load and its decoding
        overlap the encoder's GPU work instead of leaving the GPU idle. An Outcome's total_s is the worker's
        wall time since the previous video ended (summed: the worker's time) and detect_s the part of it spent
        waiting for pass 1."""
        stop = threading.Event()  # set when the consumer stops early (Ctrl-C): pass 1 quits within a frame

        def first_passes():
            for job in jobs:
                try:
                    yield job, self._first_pass(job, stop)
                except Exception as err:  # noqa: BLE001 - reported as this video's Outcome, in order
                    yield job, err

        passes = background(first_passes(), maxsize=1)
        last = time.perf_counter()
        try:
            for job, first in passes:
                waited = time.perf_counter() - last
                outcome = attempt(job.name, lambda: self._second_pass(job, first))
                now = time.perf_counter()
                outcome.total_s, outcome.detect_s, last = now - last, waited, now
                yield outcome
        finally:  # before closing `passes`, which waits for its thread: it must not finish a long video first
            stop.set()
            passes.close()

    def _first_pass(self, job: VideoJob, stop: threading.Event) -> tuple:
        """Probe, read the audio, decode and detect: (info, audio, boxes, found)."""
        s = self.settings
        info = probe_video(job.video)  # fails fast on a file that is not a video
        audio = load_audio(job.video)  # fails fast on a video without audio; float32 [S] at 16 kHz
        frames = iter_frames(job.video, target_fps=s.fps)
        cutter = CutDetector(s.scene_threshold) if s.scene_split else None
        raw = raw_boxes(_until(stop, cutter.watch(frames) if cutter else frames), self.detector, s.batch_size,
                        box=s.box)  # [N, 4], NaN without a face
        ranges = shot_ranges(cutter.cuts if cutter else [], len(raw))
        shots, notes = [], []
        for k, (a, b) in enumerate(ranges):
            boxes, found = crop_boxes(raw[a:b], s.pads, smooth=s.smooth)  # smoothed within the shot only
            where = f"shot {k} (frames {a}-{b - 1}): " if len(ranges) > 1 else ""
            if len(ranges) > 1 and b - a < s.min_shot_seconds * s.fps:
                notes.append(f"{where}{(b - a) / s.fps:.2f} s < --min_shot_seconds {s.min_shot_seconds:g}")
            elif not found.any():
                notes.append(f"{where}no face found in any of its {len(found)} frames at {s.fps:g} fps")
            elif found.sum() < timing.SYNCNET_T:
                notes.append(f"{where}too short to train on: a face in {found.sum()} of its {len(found)} frames at "
                             f"{s.fps:g} fps, and a training window is {timing.SYNCNET_T} frames")
            else:
                shots.append(Shot(k, a, b, boxes, found))
        if not shots:
            raise UserError("; ".join(notes))
        return info, audio, ranges, shots, notes

    def _second_pass(self, job: VideoJob, first: tuple | Exception) -> Outcome:
        """Crop + encode (second decode), then write the three files."""
        if isinstance(first, Exception):
            raise first
        s = self.settings
        info, audio, ranges, shots, notes = first
        num_frames = ranges[-1][1]
        boxes = np.full((num_frames, 4), np.nan, np.float32)
        found = np.zeros(num_frames, bool)
        for shot in shots:
            boxes[shot.start:shot.end], found[shot.start:shot.end] = shot.boxes, shot.found
        full, masked, frame_index = self._encode(job.video, boxes, found)  # one decode pass for every shot
        for shot in shots:
            rows = slice(*np.searchsorted(frame_index.numpy(), [shot.start, shot.end]))
            a, b = (round(f * timing.AUDIO_SAMPLE_RATE / s.fps) for f in (shot.start, shot.end))
            shot_audio = audio[a:b] if len(ranges) > 1 else audio
            meta = self._meta(job, info, shot_audio, shot, full.shape[1:])
            if len(ranges) > 1:
                meta["shot"] = {"index": shot.index, "start_frame": shot.start, "end_frame": shot.end,
                                "cuts": [start for start, _ in ranges[1:]], "kept": [x.index for x in shots]}
            out_dir = shot_folder(job.out_dir, shot.index) if len(ranges) > 1 else job.out_dir
            write_video_folder(out_dir, full[rows], masked[rows], frame_index[rows] - shot.start, meta,
                               audio=shot_audio)
        message = "; ".join(filter(None, [truncation_note(info, num_frames, s.fps),
                                          f"{len(ranges)} shots, {len(shots)} kept" if len(ranges) > 1 else "",
                                          *(f"dropped {note}" for note in notes)]))
        return Outcome(job.name, "done", message, frames=num_frames)

    def _meta(self, job: VideoJob, info: VideoInfo, audio: np.ndarray, shot: Shot, latent_shape) -> dict:
        s = self.settings
        found, boxes = shot.found, shot.boxes
        return {
            "source": str(job.video.absolute()),
            "relative_path": job.name,
            "source_fps": info.fps,
            "fps": s.fps,
            "num_frames": len(found),  # at `fps`; rows of the latents = num_frames - len(dropped_frames)
            "header_frames": expected_frames(info, s.fps),  # what the file's header promises, at `fps`
            "dropped_frames": np.flatnonzero(~found).tolist(),
            "image_size": s.image_size,
            "codec": s.codec,
            "scaling_factor": self.codec.scaling_factor,
            "shift_factor": self.codec.shift_factor,
            "latent_shape": list(latent_shape),
            "audio_samples": len(audio),
            "audio_sample_rate": timing.AUDIO_SAMPLE_RATE,
            "face_recipe": {"detect_size": s.detect_size, "pads": list(s.pads), "smooth": s.smooth,
                            "box": list(s.box) if s.box else None},
            # square crop boxes x1 y1 x2 y2 (full-resolution pixels), one per latent row
            "boxes": np.round(boxes[found].astype(np.float64), 2).tolist(),
            "code_version": code_version(),
        }

    @torch.inference_mode()
    def _encode(self, video: Path, boxes: np.ndarray, found: np.ndarray):
        """Second decode pass: crop the frames with a face, encode `batch_size` of them at a time.

        Returns full, masked fp16 [N, C, h, w] and frame_index int64 [N] (N = found.sum()). Crops are made in a
        background thread, at most two batches ahead of the encoder; the latents are 48x smaller than 768 px RGB
        crops.
        """
        s = self.settings
        frame_index = torch.from_numpy(np.flatnonzero(found))
        shape = (len(frame_index), self.codec.latent_channels, self.latent_size, self.latent_size)
        full, masked = torch.empty(shape, dtype=torch.float16), torch.empty(shape, dtype=torch.float16)
        frames = itertools.islice(enumerate(iter_frames(video, target_fps=s.fps)), len(found))

        def crop_batches():  # decoding and OpenCV resizing release the GIL: they overlap the GPU's encode
            for batch in batched(((k, frame) for k, frame in frames if found[k]), s.batch_size):
                indices = [k for k, _ in batch]
                yield crop_faces(np.stack([frame for _, frame in batch]), boxes[indices], s.image_size)

        filled = 0
        for crops in background(crop_batches()):  # uint8 [B, S, S, 3]
            images = uint8_to_model(crops, self.device, self.codec.dtype)  # [B, 3, S, S] in [-1, 1]
            # full + masked faces in codec calls of batch_size rows, padded to that one shape for the compiled
            # codec only; one call of 2 x batch_size would hold twice the activations (two 768 px workers then
            # nearly filled an 80 GB GPU)
            latents = padded_call(self.codec.encode, s.batch_size, torch.cat([images, mask_lower_half(images)]),
                                  pad=self.compiled)
            latents = latents.to("cpu", torch.float16)
            full[filled:filled + len(crops)], masked[filled:filled + len(crops)] = latents.chunk(2)
            filled += len(crops)
        if filled != len(frame_index):  # the two decode passes must see the same frames
            raise RuntimeError(f"second decode pass gave {filled} of the {len(frame_index)} frames with a face")
        return full, masked, frame_index


def expected_frames(info: VideoInfo, fps: float) -> int:
    """Frames the header of a video promises at `fps`."""
    return round(info.num_frames * fps / info.fps)


def truncation_note(info: VideoInfo, decoded: int, fps: float) -> str:
    """A warning when fewer frames decode than the header promises (a truncated or damaged file: its decodable
    start is kept), else "". Header estimates can be off by a frame or two."""
    expected = expected_frames(info, fps)
    if expected - decoded <= max(2, 0.005 * expected):
        return ""
    return (f"truncated or damaged: its header promises {expected} frames at {fps:g} fps, {decoded} decode "
            f"(kept: {decoded / fps:.1f} of {expected / fps:.1f} s)")


def preprocess_videos(data_root, output_root, settings: VideoSettings, devices: list[str], num_workers: int = 1,
                      shard: tuple[int, int] = (0, 1)) -> list[Outcome]:
    """Every video of data_root (this shard) -> its dataset folder; finished folders are skipped."""
    check_writable_folder(output_root, "--output_root")
    videos = find_videos(data_root)
    if not videos:
        raise UserError(f"no videos ({' '.join(sorted(VIDEO_EXTENSIONS))}) under {data_root}")
    jobs = take_shard(video_jobs(videos, data_root, output_root), shard)
    complete = [job_finished(job.out_dir) for job in jobs]
    pending = [job for job, done in zip(jobs, complete) if not done]
    outcomes = [Outcome(job.name, "skipped") for job, done in zip(jobs, complete) if done]
    results = run_video_jobs(pending, settings, devices, num_workers)
    outcomes += tqdm(results, total=len(pending), unit="video", desc="videos")
    return outcomes


def job_finished(out_dir) -> bool:
    """A video's folder is finished, or (a video with cuts) every shot folder its first finished shot lists is."""
    if is_finished(out_dir):
        return True
    done = [folder for folder in shot_folders(out_dir) if is_finished(folder)]
    if not done:
        return False
    kept = read_meta(done[0]).get("shot", {}).get("kept", [])
    return bool(kept) and all(is_finished(shot_folder(out_dir, k)) for k in kept)


def take_shard(items: list, shard: tuple[int, int]) -> list:
    """Shard (i, n): every n-th item starting at i, so n machines split one sorted list without overlap."""
    index, count = shard
    return items[index::count]


def resolve_devices(num_gpus: int | None) -> list[str]:
    """--devices N -> ["cuda:0", ..., "cuda:N-1"]; all visible GPUs when None; ["cpu"] when 0 or none."""
    available = torch.cuda.device_count()
    if num_gpus is None:
        num_gpus = available
    if num_gpus > available:
        raise UserError(f"--devices {num_gpus}: only {available} CUDA device(s) visible")
    return [f"cuda:{i}" for i in range(num_gpus)] or ["cpu"]


def _worker(rank: int, jobs: list[VideoJob], settings: VideoSettings, devices: list[str], num_workers: int,
            results) -> None:
    """Spawned worker: videos rank, rank + num_workers, ... on devices[rank % len(devices)]."""
    # Split the CPU cores: decoding, cropping, CPU detection (onnxruntime sizes its pool by the affinity) and
    # torch threads of the workers would otherwise all fight over every core.
    if hasattr(os, "sched_setaffinity"):  # Linux
        cores = sorted(os.sched_getaffinity(0))
        cores = cores[rank::num_workers] or cores
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    try:
        preprocessor = VideoPreprocessor(settings, devices[rank % len(devices)])
    except UserError as err:  # e.g. a codec that does not load: fatal for the whole run
        results.put(err)
        return
    for outcome in preprocessor.run(jobs[rank::num_workers]):
        results.put(outcome)


def run_video_jobs(jobs: list[VideoJob], settings: VideoSettings, devices: list[str],
                   num_workers: int = 1) -> Iterator[Outcome]:
    """Outcome of every job, as they finish: in this process for one worker, else `num_workers` spawned
    processes (videos dealt round-robin; worker w on devices[w % len(devices)])."""
    if not jobs:
        return
    if num_workers == 1:
        yield from VideoPreprocessor(settings, devices[0]).run(jobs)
        return
    results = mp.get_context("spawn").Queue()
    context = mp.start_processes(_worker, args=(jobs, settings, devices, num_workers, results),
                                 nprocs=num_workers, join=False, start_method="spawn")
    try:
        for _ in jobs:
            while True:
                try:
                    item = results.get(timeout=1.0)
                    break
                except queue.Empty:
                    context.join(timeout=0)  # raises if a worker died without reporting
            if isinstance(item, UserError):
                raise item
            yield item
        context.join()
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
