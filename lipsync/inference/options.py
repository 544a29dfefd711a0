"""lip_sync()'s options (unet_inference.py and the web app take their defaults from here) and its run summary."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lipsync.errors import UserError
from lipsync.video_writer import X264_PRESETS

DEFAULT_OUTFILE = "results/result_voice.mp4"
# the per-stage table's rows, in order; "generate" = vae_encode + unet + vae_decode replayed as one CUDA graph
STAGES = ("audio", "video_decode", "detect", "crop", "vae_encode", "unet", "vae_decode", "generate", "blend",
          "write")

# on_frame(output index, source index, crop box [4] x1y1x2y2 or None, input frame, output frame), both RGB uint8
# [H, W, 3]: lets a caller see every frame before it is encoded (tests, validation samples)
FrameCallback = Callable[[int, int, "np.ndarray | None", np.ndarray, np.ndarray], None]
# on_progress(step, done, total), called from the caller's thread, in this order: "load models" (only when given
# a checkpoint path), "encode audio", "detect" (source frames searched for faces; at least once per batch; not
# called for a video with a fixed --box), "lip sync" (output frames written: 0 first, then once per batch),
# "finish" (the encoder flushes, the file is renamed into place). Steps without a frame count come once as
# (step, 0, 0).
ProgressCallback = Callable[[str, int, int], None]


@dataclass
class LipSyncOptions:
    """Every option of lip_sync()."""
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
    # x264 preset: "superfast" encodes about twice as fast as "veryfast" (several times faster than x264's default
    # "medium") at the same CRF with the same or better quality, in a larger file (up to twice the size on noisy
    # footage); the writer is a CPU stage of the pipeline, one of the limits at small crop sizes (BENCHMARKS.md)
    preset: str = "superfast"
    unet_config: str | None = None  # UNet config folder: only for checkpoints without a model card
    audio_encoder: str | None = None  # overrides the checkpoint's audio encoder id
    codec: str | None = None  # overrides the checkpoint's codec (VAE) id
    image_size: int | None = None  # overrides the checkpoint's face crop size
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # torch.compile the UNet and the codec (CUDA); None = where it pays (inference.models.compile_pays): on long
    # clips, and on clips of a few hundred frames where this machine compiled the same models before
    compile: bool | None = None
    cuda_graph: bool = True  # CUDA: record encode + UNet + decode of a batch once, replay it per batch
    progress: bool = True  # tqdm bars (shown only on a terminal)
    on_frame: FrameCallback | None = None
    on_progress: ProgressCallback | None = None
    cancel: threading.Event | None = None  # set it to stop the run within a batch (lipsync.errors.Cancelled)
    max_seconds: float | None = None  # refuse driving audio longer than this (a server's limit)


def check_options(opts: LipSyncOptions) -> None:
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


def format_summary(summary: dict) -> str:
    """lip_sync()'s summary as a few human-readable lines."""
    lines = [f"wrote {summary['outfile']}: {summary['frames']} frames, {summary['width']}x{summary['height']} "
             f"@ {summary['fps']:g} fps, {summary['audio_seconds']:g} s of audio",
             f"faces found in {summary['faces_found']}/{summary['frames']} frames "
             f"({summary['frames_without_face']} passed through unchanged); {summary['source_frames']} source "
             f"frames; {summary['crop_size']} px face crops; {summary['seconds']:.1f} s on {summary['device']} "
             f"({summary['dtype']}{', compiled' if summary.get('compiled') else ''})",
             "steps (wall s): " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in summary["phases"].items()),
             f"{'stage':<13}{'seconds':>9}{'frames':>8}{'fps':>9}"]
    for name, stage in summary["stages"].items():
        fps = f"{stage['fps']:.1f}" if stage["fps"] is not None else "-"
        lines.append(f"{name:<13}{stage['seconds']:>9.3f}{stage['frames']:>8}{fps:>9}")
    return "\n".join(lines)
