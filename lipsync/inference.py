"""lip_sync(): a face video (or still image) + driving speech -> an H.264 + AAC mp4 whose lower face speaks it.

Streaming, two passes over the face video; the video is never held in memory:
1. face boxes of every source frame the output can show (`faces.face_boxes`; detection sees each source frame
   once, even when the output ping-pongs over it; a video longer than the audio is read only as far as needed);
2. output frame i shows source frame `pingpong_indices(n_src, n_out)[i]`; in batches: crop the face (RGB,
   image_size), encode the masked crop and the reference crop with the codec, run the UNet on the frame's audio
   window, decode, paste ONLY the lower face back through the feathered mask, and encode the frame into the mp4
   (one H.264 encode, the driving audio muxed in the same pass, temp name then rename). On CUDA the
   encode -> UNet -> decode of a batch is one recorded CUDA graph (`GraphedGeneration`). Pass 2 decodes the
   face video and writes the mp4 in two child processes (`lipsync.video_workers`), so that PyAV does not wait
   for Python's GIL behind this process's four pipeline threads.

The output lasts as long as the audio (`timing.num_video_frames`, within a frame) at the face video's own fps
and resolution (divided by --resize_factor); a still image is repeated at `fps`. Frames without a face pass
through unchanged.
"""
from __future__ import annotations

import contextlib
import itertools
import subprocess
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from tqdm import tqdm

from lipsync import timing
from lipsync.audio import decode_audio, load_audio
from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER, AudioEncoder
from lipsync.background import background
from lipsync.checkpoint import load_generator
from lipsync.errors import UserError
from lipsync.faces import (SMOOTH_WINDOW, FaceDetector, color_match, crop_boxes, crop_faces, face_boxes,
                           fixed_box, lower_face_mask, paste_faces)
from lipsync.latent_codec import (DEFAULT_CODEC, LatentCodec, mask_lower_half, model_to_uint8_tensor, padded_call,
                                  uint8_tensor_to_model, uint8_to_model)
from lipsync.video_io import (
    X264_PRESETS, count_frames, is_image_path, iter_frames, iter_frames_by_index, pingpong_indices, probe_video,
    read_image,
)
from lipsync.video_workers import VideoWriterProcess, iter_frames_by_index_in_process, start_worker, stop_worker
from models.unet import check_unet_config, generate

DEFAULT_OUTFILE = "results/result_voice.mp4"
# "generate" = vae_encode + unet + vae_decode replayed as one CUDA graph (on CUDA, unless --no_cuda_graph)
STAGES = ("audio", "video_decode", "detect", "crop", "vae_encode", "unet", "vae_decode", "generate", "blend",
          "write")

# on_frame(output index, source index, crop box [4] x1y1x2y2 or None, input frame, output frame), both
# RGB uint8 [H, W, 3]: lets a caller see every frame before it is encoded (tests, validation samples)
FrameCallback = Callable[[int, int, "np.ndarray | None", np.ndarray, np.ndarray], None]


@dataclass
class LipSyncOptions:
    """Every option of lip_sync(); unet_inference.py takes its flag defaults from here."""
    static: bool = False  # use only the first frame of the face video
    fps: float = 25.0  # frame rate of a still image's output (a video keeps its own)
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right pixels added to detected boxes
    box: tuple[int, int, int, int] | None = None  # fixed face box top, bottom, left, right: no detection
    resize_factor: int = 1  # integer downscale of the face frames (and of the output)
    nosmooth: bool = False  # no temporal smoothing of the detected boxes
    batch_size: int = 16  # frames per codec / UNet batch
    ref_frame: int | None = None  # reference face = this source frame's (default: each frame's own face)
    color_match: bool = False  # match the generated lower face's colour statistics to the input's
    crf: int = 18  # x264 constant rate factor
    # x264 preset: at CRF 18 "veryfast" writes 512 px frames ~2.6x faster than x264's default "medium" (295 vs 114
    # frames/s on 2 CPU cores) in a file of about the same size; the writer is a CPU stage of the pipeline
    preset: str = "veryfast"
    unet_config: str | None = None  # UNet config folder: only for checkpoints without a model card
    audio_encoder: str | None = None  # overrides the checkpoint's audio encoder id
    codec: str | None = None  # overrides the checkpoint's codec (VAE) id
    image_size: int | None = None  # overrides the checkpoint's face crop size
    device: str = "auto"  # "auto" = cuda when available, else cpu
    compile: bool = False  # torch.compile the UNet and the codec (CUDA; pays off from a few hundred frames on)
    cuda_graph: bool = True  # CUDA: record encode + UNet + decode of a batch once, replay it per batch
    progress: bool = True  # tqdm bars (shown only on a terminal)
    on_frame: FrameCallback | None = None


@dataclass
class LipSyncModels:
    """Everything generation needs, loaded once per run (or once per training run by validation)."""
    unet: UNet2DConditionModel
    codec: LatentCodec
    audio_encoder: AudioEncoder
    image_size: int
    device: torch.device
    compiled: bool = False  # torch.compile'd UNet and codec: calls are padded to one batch shape
    graphs: dict = field(default_factory=dict)  # recorded GraphedGeneration per (batch, audio dim, fixed ref)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available")
    return device


def _read_unet_config(folder) -> dict:
    try:
        return dict(UNet2DConditionModel.load_config(str(folder)))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a UNet config from {folder}: {str(err).splitlines()[0]}") from None


def load_models(checkpoint_path, unet_config=None, audio_encoder: str | None = None, codec: str | None = None,
                image_size: int | None = None, device: str = "auto", compile: bool = False) -> LipSyncModels:
    """UNet from any checkpoint kind; codec, audio encoder and crop size from its model card (arguments given
    here override it). CUDA: codec + UNet in bf16 (fp16 where bf16 is missing), SDPA attention, cuDNN autotuning;
    NCHW, not channels_last: both nets are GroupNorm-heavy and ran slower channels_last on an H100 in bf16
    (SD-VAE encode at 768 px 39 vs 70 img/s, customized_unet at batch 16 400 vs 426 frames/s); compiled, the
    codec takes its own recipe (LatentCodec.compile).
    CPU: fp32. The audio encoder stays fp32: it runs once per clip."""
    device = resolve_device(device)
    loaded = load_generator(checkpoint_path, _read_unet_config(unet_config) if unet_config else None)
    card = loaded.card
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    latent_codec = LatentCodec.from_pretrained(codec or card.get("codec") or DEFAULT_CODEC, device, dtype)
    speech_encoder = AudioEncoder(audio_encoder or card.get("audio_encoder") or DEFAULT_AUDIO_ENCODER, device)
    check_unet_config(card["unet_config"], speech_encoder.hidden_size, latent_codec.latent_channels)
    # without a card entry, the crop size is the one the UNet's default latent size decodes to
    size = image_size or card.get("image_size") or card["unet_config"]["sample_size"] * latent_codec.downsample_factor
    latent_codec.latent_size(size)  # one-line error when the codec cannot encode that size
    # nn.Module.to: diffusers' own to() warns about keeping its (empty) list of fp32 modules when given a dtype
    unet = torch.nn.Module.to(loaded.unet, device, dtype).eval().requires_grad_(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # crops have one fixed size: autotuned kernels pay off
        unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA (flash / memory-efficient kernels)
        latent_codec.vae.set_attn_processor(AttnProcessor2_0())
    if compile and device.type == "cuda":  # fuses the GroupNorm / SiLU / residual chains that dominate the VAE
        # lip_sync pads every call to one shape, but a caller may use several batch sizes on the same models
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        unet = torch.compile(unet)
        latent_codec.compile()
    return LipSyncModels(unet, latent_codec, speech_encoder, int(size), device,
                         compiled=compile and device.type == "cuda")


class StageTimer:
    """Wall time and frame count per stage; a nested stage's time is not counted in its parent's. On CUDA every
    stage boundary synchronises, so each stage's kernels are charged to it."""

    def __init__(self, device: torch.device):
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds: dict[str, float] = defaultdict(float)
        self.frames: dict[str, int] = defaultdict(int)
        self._child_seconds: list[float] = []  # per open stage: time spent in stages nested inside it

    @contextmanager
    def stage(self, name: str, frames: int = 0):
        self._sync()
        start = time.perf_counter()
        self._child_seconds.append(0.0)
        try:
            yield
        finally:
            self._sync()
            elapsed = time.perf_counter() - start
            self.seconds[name] += elapsed - self._child_seconds.pop()
            self.frames[name] += frames
            if self._child_seconds:
                self._child_seconds[-1] += elapsed

    def iterate(self, name: str, items: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Charge the time spent producing each item of `items` (e.g. decoding a frame) to stage `name`."""
        items = iter(items)
        while True:
            with self.stage(name):
                item = next(items, None)
            if item is None:
                return
            self.frames[name] += 1
            yield item

    def merge(self, other: "StageTimer") -> None:
        """Add another thread's stage times (stages of different threads overlap in wall time)."""
        for name, seconds in other.seconds.items():
            self.seconds[name] += seconds
            self.frames[name] += other.frames[name]

    def summary(self) -> dict:
        return {name: {"seconds": round(self.seconds[name], 3), "frames": self.frames[name],
                       "fps": round(self.frames[name] / self.seconds[name], 1) if self.seconds[name] > 0 else None}
                for name in STAGES if name in self.seconds}


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


def _check_options(opts: LipSyncOptions) -> None:
    for name, value, low in (("batch_size", opts.batch_size, 1), ("resize_factor", opts.resize_factor, 1),
                             ("ref_frame", opts.ref_frame, 0), ("crf", opts.crf, 0)):
        if value is not None and value < low:
            raise UserError(f"--{name} must be >= {low}, got {value}")
    if opts.crf > 51:
        raise UserError(f"--crf must be <= 51, got {opts.crf}")
    if opts.preset not in X264_PRESETS:
        raise UserError(f"--preset must be one of {', '.join(X264_PRESETS)}, got {opts.preset!r}")
    if opts.fps <= 0:
        raise UserError(f"--fps must be > 0, got {opts.fps}")


def _reference_latent(models: LipSyncModels, source: FaceSource, boxes: np.ndarray, found: np.ndarray,
                      k: int, pad_to: int | None) -> torch.Tensor:
    """--ref_frame K: the scaled latent [1, C, h, w] of source frame K's face, encoded once (padded to `pad_to`)."""
    if k >= len(boxes):
        raise UserError(f"--ref_frame {k}: the face input has only {len(boxes)} frames")
    if not found[k]:
        raise UserError(f"--ref_frame {k}: no face found in that frame")
    frame = next(source.frames_at(np.array([k])))
    crop = crop_faces([frame], boxes[k:k + 1], models.image_size)  # [1, S, S, 3]
    return padded_call(models.codec.encode, pad_to, uint8_to_model(crop, models.device, models.dtype))


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
                     batch_size: int, image_size: int, timer: StageTimer,
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


def _faces_from_crops(models: LipSyncModels, crops: torch.Tensor, repeat: torch.Tensor, audio: torch.Tensor,
                      reference: torch.Tensor | None, pad_to: int | None, stage=None) -> torch.Tensor:
    """THE generation step, on the device: distinct face crops uint8 [U, S, S, 3] -> masked (+ own reference)
    latents, repeated to the F output rows by `repeat` [F] (index into the crops) -> UNet on the rows' audio
    windows [F, 10, D] -> decoded faces uint8 [F, S, S, 3].

    reference: one fixed scaled latent [1, C, h, w], or None (each crop is its own reference). pad_to: compiled
    models get every codec / UNet call padded to this many rows. stage(name): context manager timing each part.
    """
    stage = stage or (lambda name: contextlib.nullcontext())
    with stage("vae_encode"):
        x = uint8_tensor_to_model(crops, models.dtype)  # [U, 3, S, S] in [-1, 1]
        if reference is None:  # each frame's own face: one codec call for masked + reference
            # in calls of pad_to rows, like every other codec call (one compiled shape; half the activations
            # and attention scores of one 2 x pad_to call)
            masked, own = padded_call(models.codec.encode, pad_to,
                                      torch.cat([mask_lower_half(x), x])).chunk(2)  # [U, C, h, w] each
            masked, references = masked[repeat], own[repeat]  # [F, C, h, w]
        else:
            masked = padded_call(models.codec.encode, pad_to, mask_lower_half(x))[repeat]  # [F, C, h, w]
            references = reference.expand(len(repeat), -1, -1, -1)
    with stage("unet"):
        latents = padded_call(lambda *t: generate(models.unet, *t), pad_to, masked, references, audio)
    with stage("vae_decode"):
        images = padded_call(models.codec.decode, pad_to, latents)  # [F, 3, S, S] in about [-1, 1]
        return model_to_uint8_tensor(images)


def _generate_faces(models: LipSyncModels, batch: Batch, audio: torch.Tensor, reference: torch.Tensor | None,
                    timer: StageTimer, pad_to: int | None) -> None:
    """GPU side, one thread: the batch's crops + its rows' audio windows [F, 10, D] -> generated faces
    [F, S, S, 3] uint8 (stored on the batch), each model call launched from Python and timed per stage."""
    num = len(batch.rows)
    crops = torch.from_numpy(batch.crops).to(models.device, non_blocking=True)
    repeat = torch.from_numpy(batch.inverse).to(models.device)
    faces = _faces_from_crops(models, crops, repeat, audio.to(models.device), reference, pad_to,
                              stage=lambda name: timer.stage(name, num))
    with timer.stage("vae_decode"):  # the copy back belongs to the decode stage
        batch.faces = faces.cpu().numpy()


class GraphedGeneration:
    """_faces_from_crops for batches of up to `batch_size` rows as ONE CUDA graph: a batch is a copy in, one
    replay and a copy out, so the GPU never waits for Python to launch each kernel while the decode, paste and
    write threads hold the GIL (H100, 256 px crops, fixed box: 31 -> 50-62 frames/s end to end). Inputs live in
    fixed buffers; rows past a short batch's end hold stale data that is computed and ignored (rows are
    independent). Recorded once per (models, batch size, audio dim, fixed reference or not) and kept on the models,
    with its memory pool (one batch's activations)."""

    def __init__(self, models: LipSyncModels, batch_size: int, audio_dim: int, fixed_reference: bool):
        size, device = models.image_size, models.device
        self._lock = threading.Lock()
        self.crops = torch.zeros(batch_size, size, size, 3, dtype=torch.uint8, device=device)
        self.repeat = torch.arange(batch_size, device=device)
        self.audio = torch.zeros(batch_size, timing.GENERATOR_AUDIO_FRAMES, audio_dim, device=device)
        latent = models.codec.latent_size(size)
        self.reference = torch.zeros(1, models.codec.latent_channels, latent, latent, dtype=models.dtype,
                                     device=device) if fixed_reference else None

        def run():
            return _faces_from_crops(models, self.crops, self.repeat, self.audio, self.reference, None)

        side = torch.cuda.Stream(device)  # one warm-up call (cuDNN autotuning, compilation) off the capture stream
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self.faces = run()  # [batch_size, S, S, 3] uint8, rewritten by every replay
        except RuntimeError as err:
            raise UserError(f"recording the generation step as a CUDA graph failed ({str(err).splitlines()[0]}); "
                            f"run with --no_cuda_graph") from None

    _recording = threading.Lock()  # one recording at a time, whichever models

    @classmethod
    def for_models(cls, models: LipSyncModels, batch_size: int, audio_dim: int,
                   fixed_reference: bool) -> "GraphedGeneration":
        """The models' graph for this batch size and reference kind, recorded on first use."""
        key = (batch_size, audio_dim, fixed_reference)
        with cls._recording:
            if key not in models.graphs:
                models.graphs[key] = cls(models, batch_size, audio_dim, fixed_reference)
        return models.graphs[key]

    def __call__(self, crops: np.ndarray, inverse: np.ndarray, audio: torch.Tensor,
                 reference: torch.Tensor | None = None) -> np.ndarray:
        """crops uint8 [U, S, S, 3], inverse [F] (row of each frame among the crops), audio [F, 10, D], the
        run's fixed reference latent [1, C, h, w] (graphs recorded with one) -> faces uint8 [F, S, S, 3] (CPU)."""
        num = len(inverse)
        with self._lock:  # buffers and output are shared by every run on these models (e.g. a server's threads)
            if self.reference is not None:
                self.reference.copy_(reference)
            self.crops[:len(crops)].copy_(torch.from_numpy(crops))
            self.repeat[:num].copy_(torch.from_numpy(inverse))
            self.audio[:num].copy_(audio)
            self.graph.replay()
            return self.faces[:num].cpu().numpy()


def _blend(batches: Iterable[Batch], boxes: np.ndarray, mask: np.ndarray, match_colors: bool,
           timer: StageTimer) -> Iterator[tuple[Batch, list[np.ndarray]]]:
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


def _write(blended: Iterable[tuple[Batch, list[np.ndarray]]], writer: VideoWriterProcess, boxes: np.ndarray,
           found: np.ndarray, on_frame: FrameCallback | None, bar, timer: StageTimer) -> None:
    """CPU side, thread 4 (the caller's): hand the frames to the encoder process."""
    for batch, output in blended:
        with timer.stage("write", len(output)):
            for frame in output:
                writer.write(frame)
        if on_frame is not None:
            for row, (src, before, after) in enumerate(zip(batch.sources, batch.frames, output)):
                on_frame(batch.start + row, int(src), boxes[src] if found[src] else None, before, after)
        bar.update(len(output))


def _pass1_boxes(source: FaceSource, opts: LipSyncOptions, num_out: int, timer: StageTimer,
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
    bar = tqdm(timer.iterate("video_decode", itertools.islice(frames, needed)), desc="detect faces", unit="frame",
               total=1 if source.still is not None else min(source.num_frames, needed),
               disable=None if opts.progress else True, leave=False)
    with timer.stage("detect"):
        boxes, found = face_boxes(bar, detector, batch_size=opts.batch_size, pads=opts.pads,
                                  smooth=not opts.nosmooth and source.still is None, box=opts.box)
    bar.close()
    if hasattr(frames, "close"):  # a video decoder stopped early: close its file now
        frames.close()
    timer.frames["detect"] = len(boxes)
    return boxes, found


@torch.inference_mode()
def lip_sync(checkpoint, face, audio, outfile=DEFAULT_OUTFILE, **options) -> dict:
    """Lip-sync `face` (video or image) to `audio` (any file with an audio stream) into `outfile` (mp4).

    checkpoint: a generator checkpoint of any kind `lipsync.checkpoint` reads, or LipSyncModels from
    `load_models` (then the model options are ignored). options: the fields of LipSyncOptions.
    Returns the run summary (frame counts, faces found, wall seconds per step, seconds / frames / fps per stage).
    """
    opts = LipSyncOptions(**options)
    _check_options(opts)
    started = time.perf_counter()
    phases: dict[str, float] = {}  # wall seconds of each step, in order (what a short clip's time goes to)
    last_step_end = [started]

    def phase_done(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - last_step_end[0], 3)
        last_step_end[0] = now

    source = open_face(face, opts.static, opts.fps, opts.resize_factor)
    speech = load_audio(audio)  # float32 [S] 16 kHz mono: what the audio encoder hears
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
        phase_done("inputs")  # face probe, audio decode, worker processes started
        if isinstance(checkpoint, LipSyncModels):
            models = checkpoint
        else:
            models = load_models(checkpoint, opts.unet_config, opts.audio_encoder, opts.codec, opts.image_size,
                                 opts.device, opts.compile)
        timer = StageTimer(models.device)
        with timer.stage("audio", num_out):
            features = models.audio_encoder.encode(speech)  # [F, D] at 50 Hz

        phase_done("models_and_audio")
        boxes, found = _pass1_boxes(source, opts, num_out, timer, models.device)  # [N, 4] x1y1x2y2, [N] bool
        phase_done("boxes")
        if not found.any():
            raise UserError(f"no face found in any of the {len(boxes)} frames of {face} that the output would show")
        pad_to = opts.batch_size if models.compiled else None  # compiled: one batch shape for every call
        reference = None if opts.ref_frame is None else _reference_latent(models, source, boxes, found,
                                                                          opts.ref_frame, pad_to)

        # pass 2: four threads overlap CPU and GPU work: decode + crop -> codec + UNet (GPU) -> paste -> encode
        sources = pingpong_indices(len(boxes), num_out)  # [n_out] source frame shown by each output frame
        mask = lower_face_mask(models.image_size)  # [S, S] float32 in crop coordinates
        timers = [StageTimer(torch.device("cpu")), timer, StageTimer(torch.device("cpu")),
                  StageTimer(torch.device("cpu"))]  # one per thread
        prepared = background(_prepare_batches(source, sources, boxes, found, opts.batch_size, models.image_size,
                                                timers[0], decoder))

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
                            _generate_faces(models, batch, windows, reference, timer, pad_to)  # windows [F, 10, D]
                        else:
                            with timer.stage("generate", len(batch.rows)):
                                batch.faces = graphed(batch.crops, batch.inverse, windows, reference)
                yield batch

        phase_done("reference_and_graph")
        with tqdm(total=num_out, desc="lip sync", unit="frame", disable=None if opts.progress else True) as bar:
            # generation and pasting each run one batch ahead in their own threads; the main thread writes
            blended = _blend(background(generated()), boxes, mask, opts.color_match, timers[2])
            _write(background(blended), writer, boxes, found, opts.on_frame, bar, timers[3])
        for other in (timers[0], timers[2], timers[3]):
            timer.merge(other)
        phase_done("generate_and_write")
    phase_done("finish")  # the writer flushes x264 and closes the file; both workers stop

    faces_found = int(found[sources].sum())
    # source_frames: frames of the face input read (all of them when the output ping-pongs over them)
    return {"outfile": str(outfile), "frames": num_out, "source_frames": len(boxes), "faces_found": faces_found,
            "frames_without_face": num_out - faces_found, "fps": source.fps, "width": source.width,
            "height": source.height, "audio_seconds": round(len(speech) / timing.AUDIO_SAMPLE_RATE, 3),
            "device": str(models.device), "dtype": str(models.dtype).replace("torch.", ""),
            "seconds": round(time.perf_counter() - started, 3), "phases": phases, "stages": timer.summary()}


def format_summary(summary: dict) -> str:
    """The summary as a few human-readable lines."""
    lines = [f"wrote {summary['outfile']}: {summary['frames']} frames, {summary['width']}x{summary['height']} "
             f"@ {summary['fps']:g} fps, {summary['audio_seconds']:g} s of audio",
             f"faces found in {summary['faces_found']}/{summary['frames']} frames "
             f"({summary['frames_without_face']} passed through unchanged); {summary['source_frames']} source "
             f"frames; {summary['seconds']:.1f} s on {summary['device']} ({summary['dtype']})",
             "steps (wall s): " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in summary["phases"].items()),
             f"{'stage':<13}{'seconds':>9}{'frames':>8}{'fps':>9}"]
    for name, stage in summary["stages"].items():
        fps = f"{stage['fps']:.1f}" if stage["fps"] is not None else "-"
        lines.append(f"{name:<13}{stage['seconds']:>9.3f}{stage['frames']:>8}{fps:>9}")
    return "\n".join(lines)

