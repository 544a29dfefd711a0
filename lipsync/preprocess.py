"""Raw videos -> latent dataset folders (video_preprocess.py), then Wav2Vec2 features (audio_preprocess.py).

One folder per video (docs/ARCHITECTURE.md, "Dataset folder"):
- `latents.safetensors`: `full` fp16 [N, C, h, w] = codec.encode(face), `masked` fp16 [N, C, h, w] =
  codec.encode(mask_lower_half(face)), `frame_index` int64 [N] = 25-fps index of each row. Frames without a face
  are dropped (a gap in frame_index), never shifted.
- `audio.wav`: 16 kHz mono PCM16 of the video's first audio stream.
- `meta.json`: source, rates, shapes, codec, the crop recipe and boxes, dropped frames, code version. Written LAST:
  its presence marks a finished folder, so an interrupted run redoes exactly the unfinished videos.
- `wav2vec2.pt` (audio stage): dict features fp16 [F, D] (F = timing.num_feature_frames(num_samples)), model_id,
  hidden_size, num_samples.

Every file is written under a hidden temp name and renamed, so no reader ever sees half a file. A video or folder
that fails becomes one line of the final summary; the batch goes on.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.multiprocessing as mp
from safetensors.torch import save as safetensors_bytes
from tqdm import tqdm

from lipsync import timing
from lipsync.audio import load_audio, write_wav
from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER, AudioEncoder
from lipsync.background import background
from lipsync.data import AUDIO_FILE, FEATURES_FILE, LATENTS_FILE, META_FILE  # the dataset format's owner
from lipsync.errors import UserError
from lipsync.faces import FaceDetector, crop_faces, face_boxes
from lipsync.files import atomic_path
from lipsync.latent_codec import DEFAULT_CODEC, LatentCodec, mask_lower_half, padded_call, uint8_to_model
from lipsync.video_io import iter_frames, probe_video

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm"})
VIDEO_OUTPUTS = (LATENTS_FILE, AUDIO_FILE, META_FILE)


# ------------------------------------------------------------------------------------------- shared helpers

@dataclass
class Outcome:
    """What happened to one video (or dataset folder): status is "done", "skipped" or "failed"."""
    name: str  # path relative to the root it was found under
    status: str
    message: str = ""  # one line; why it failed
    frames: int = 0  # 25-fps frames decoded (video stage)
    detect_s: float = 0.0  # seconds spent waiting for the boxes (probe, audio, first decode pass, detection)
    total_s: float = 0.0  # seconds of the worker's time


def _attempt(name: str, work: Callable[[], Outcome]) -> Outcome:
    """Run `work`; any exception becomes a failed Outcome with a one-line message (the batch must go on)."""
    try:
        return work()
    except UserError as err:
        return Outcome(name, "failed", str(err).splitlines()[0])
    except Exception as err:  # noqa: BLE001 - a bad file must not stop a 50,000-video batch
        first_line = (str(err).splitlines() or [""])[0]
        return Outcome(name, "failed", f"{type(err).__name__}: {first_line}")


def summarize(outcomes: list[Outcome], noun: str) -> str:
    """Counts, throughput when frames were processed, then one line per failure."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines = [f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
             f"(of {len(outcomes)} {noun})"]
    frames = sum(o.frames for o in outcomes)
    seconds = sum(o.total_s for o in outcomes if o.status == "done")
    if frames and seconds:
        detect = sum(o.detect_s for o in outcomes if o.status == "done")
        lines[0] += (f"; {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s per worker, "
                     f"waiting for detection {100 * detect / seconds:.0f} %)")
    lines += [f"  failed  {o.name}: {o.message}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of this checkout, else "unknown" (e.g. an installed copy)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _json_lines(record: dict) -> str:
    """JSON object with one top-level key per line (readable, yet thousands of boxes stay compact)."""
    return "{\n" + ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items()) + "\n}\n"


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) under root, following symlinked folders (datasets are often assembled from links)."""
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        yield Path(folder), sorted(files)


# ---------------------------------------------------------------------------------------------- video stage

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
    compile: bool = False  # torch.compile the codec (CUDA only; execution, not recipe: never in meta.json)


@dataclass(frozen=True)
class VideoJob:
    video: Path
    out_dir: Path
    name: str  # video path relative to the data root


def find_videos(data_root) -> list[Path]:
    """Every video file under data_root (any depth), sorted, so shards and worker splits are reproducible."""
    return [folder / name for folder, files in _walk(Path(data_root)) for name in files
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


def is_complete(out_dir: Path) -> bool:
    return all((out_dir / name).is_file() for name in VIDEO_OUTPUTS)


def _batches(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


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
                outcome = _attempt(job.name, lambda: self._second_pass(job, first))
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
        boxes, found = face_boxes(_until(stop, frames), self.detector, s.batch_size,
                                  pads=s.pads, smooth=s.smooth, box=s.box)
        if not found.any():
            raise UserError(f"no face found in any of its {len(found)} frames at {s.fps:g} fps")
        return info, audio, boxes, found

    def _second_pass(self, job: VideoJob, first: tuple | Exception) -> Outcome:
        """Crop + encode (second decode), then write the three files."""
        if isinstance(first, Exception):
            raise first
        s = self.settings
        info, audio, boxes, found = first
        full, masked, frame_index = self._encode(job.video, boxes, found)

        job.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(job.out_dir / LATENTS_FILE) as tmp:  # (save_file would create it mode 0600)
            tmp.write_bytes(safetensors_bytes({"full": full, "masked": masked, "frame_index": frame_index}))
        write_wav(job.out_dir / AUDIO_FILE, audio)
        meta = {
            "source": str(job.video.absolute()),
            "relative_path": job.name,
            "source_fps": info.fps,
            "fps": s.fps,
            "num_frames": len(found),  # at `fps`; rows of the latents = num_frames - len(dropped_frames)
            "dropped_frames": np.flatnonzero(~found).tolist(),
            "image_size": s.image_size,
            "codec": s.codec,
            "scaling_factor": self.codec.scaling_factor,
            "shift_factor": self.codec.shift_factor,
            "latent_shape": list(full.shape[1:]),
            "audio_samples": len(audio),
            "audio_sample_rate": timing.AUDIO_SAMPLE_RATE,
            "face_recipe": {"detect_size": s.detect_size, "pads": list(s.pads), "smooth": s.smooth,
                            "box": list(s.box) if s.box else None},
            # square crop boxes x1 y1 x2 y2 (full-resolution pixels), one per latent row
            "boxes": np.round(boxes[found].astype(np.float64), 2).tolist(),
            "code_version": code_version(),
        }
        with atomic_path(job.out_dir / META_FILE) as tmp:  # last: marks the folder complete
            tmp.write_text(_json_lines(meta))
        return Outcome(job.name, "done", frames=len(found))

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
            for batch in _batches(((k, frame) for k, frame in frames if found[k]), s.batch_size):
                indices = [k for k, _ in batch]
                yield crop_faces(np.stack([frame for _, frame in batch]), boxes[indices], s.image_size)

        filled = 0
        for crops in background(crop_batches()):  # uint8 [B, S, S, 3]
            images = uint8_to_model(crops, self.device, self.codec.dtype)  # [B, 3, S, S] in [-1, 1]
            # full + masked faces in codec calls of batch_size rows, padded to that one shape for the compiled
            # codec only; one call of 2 x batch_size held twice the activations: two 768 px workers on one
            # 80 GB H100 peaked at 78 GB that way
            latents = padded_call(self.codec.encode, s.batch_size, torch.cat([images, mask_lower_half(images)]),
                                  pad=self.compiled)
            latents = latents.to("cpu", torch.float16)
            full[filled:filled + len(crops)], masked[filled:filled + len(crops)] = latents.chunk(2)
            filled += len(crops)
        if filled != len(frame_index):  # the two decode passes must see the same frames
            raise RuntimeError(f"second decode pass gave {filled} of the {len(frame_index)} frames with a face")
        return full, masked, frame_index


def preprocess_videos(data_root, output_root, settings: VideoSettings, devices: list[str], num_workers: int = 1,
                      shard: tuple[int, int] = (0, 1)) -> list[Outcome]:
    """Every video of data_root (this shard) -> its dataset folder; finished folders are skipped."""
    videos = find_videos(data_root)
    if not videos:
        raise UserError(f"no videos ({' '.join(sorted(VIDEO_EXTENSIONS))}) under {data_root}")
    jobs = take_shard(video_jobs(videos, data_root, output_root), shard)
    complete = [is_complete(job.out_dir) for job in jobs]
    pending = [job for job, done in zip(jobs, complete) if not done]
    outcomes = [Outcome(job.name, "skipped") for job, done in zip(jobs, complete) if done]
    results = run_video_jobs(pending, settings, devices, num_workers)
    outcomes += tqdm(results, total=len(pending), unit="video", desc="videos")
    return outcomes


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


# ---------------------------------------------------------------------------------------------- audio stage

def find_dataset_folders(data_root) -> list[Path]:
    """Video folders of a dataset: every folder holding audio.wav or meta.json, sorted."""
    return [folder for folder, files in _walk(Path(data_root)) if AUDIO_FILE in files or META_FILE in files]


def encode_folder_audio(encoder: AudioEncoder, folder: Path, name: str, overwrite: bool = False) -> Outcome:
    """folder/audio.wav -> folder/wav2vec2.pt, skipped when it already holds this encoder's features.

    Features of another encoder are recomputed only with `overwrite`: silently mixing encoders in one dataset
    is the classic train/test mismatch (the reference preprocessed with one Wav2Vec2 and inferred with another).
    """
    target = folder / FEATURES_FILE
    if target.is_file() and not overwrite:
        stored = torch.load(target, map_location="cpu", weights_only=True, mmap=True).get("model_id")
        if stored == encoder.model_id:
            return Outcome(name, "skipped")
        raise UserError(f"{FEATURES_FILE} holds features of {stored!r}, not {encoder.model_id!r} "
                        f"(pass --overwrite to recompute)")
    if not (folder / AUDIO_FILE).is_file():
        raise UserError(f"no {AUDIO_FILE} (run video_preprocess.py on its video again)")
    audio = load_audio(folder / AUDIO_FILE)  # float32 [S] at 16 kHz
    features = encoder.encode(audio).to(torch.float16)  # [num_feature_frames(S), hidden]
    with atomic_path(target) as tmp:
        torch.save({"features": features, "model_id": encoder.model_id, "hidden_size": encoder.hidden_size,
                    "num_samples": len(audio)}, tmp)
    return Outcome(name, "done")


def encode_dataset_audio(data_root, model_id: str = DEFAULT_AUDIO_ENCODER, device: str = "cpu",
                         overwrite: bool = False) -> list[Outcome]:
    """Run `encode_folder_audio` on every folder of the dataset with one encoder loaded once."""
    data_root = Path(data_root)
    folders = find_dataset_folders(data_root)
    if not folders:
        raise UserError(f"no dataset folders (with {AUDIO_FILE} or {META_FILE}) under {data_root}")
    encoder = AudioEncoder(model_id, device=device)
    outcomes = []
    for folder in tqdm(folders, unit="folder", desc="audio"):
        name = str(folder.relative_to(data_root))
        outcomes.append(_attempt(name, lambda: encode_folder_audio(encoder, folder, name, overwrite)))
    return outcomes

