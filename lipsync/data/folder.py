"""THE on-disk dataset format: one folder per video, with its ONE writer and ONE reader.

  latents.safetensors  full fp16 [N, C, h, w] = codec.encode(face), masked fp16 [N, C, h, w] =
                       codec.encode(mask_lower_half(face)), frame_index int64 [N] (25-fps frame of each row,
                       strictly increasing; gaps = dropped frames without a face)
  audio.wav            16 kHz mono PCM16
  meta.json            source, rates, shapes, codec, crop recipe and boxes, dropped frames, code version;
                       written LAST: its presence marks a finished folder (an interrupted one is never read)
  wav2vec2.pt          dict(features fp16 [F, D], model_id str, hidden_size int, num_samples int), F =
                       timing.num_feature_frames(num_samples); written by the audio stage
  sync.json            the measured AV offset and confidence (score_sync.py; lipsync.data.curation): scorer, its
                       fingerprint, offset (video frames at 25 fps, > 0: the sound comes early, the sign of
                       lipsync.evaluation.sync), confidence, distance, windows; training windows correct the offset

Every file is written under a temp name and renamed (lipsync.files.atomic_path).
"""
from __future__ import annotations

import bisect
import functools
import json
import pickle
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from lipsync import timing
from lipsync.audio import write_wav
from lipsync.errors import UserError
from lipsync.files import atomic_path, walk

LATENTS_FILE = "latents.safetensors"
FEATURES_FILE = "wav2vec2.pt"
AUDIO_FILE = "audio.wav"
META_FILE = "meta.json"
SYNC_FILE = "sync.json"


def write_video_folder(folder, full, masked, frame_index, meta: dict, audio: np.ndarray | None = None,
                       features=None, model_id: str | None = None) -> Path:
    """Write one video folder: latents.safetensors (full, masked [N, C, h, w] stored fp16, frame_index [N]
    int64), audio.wav when `audio` (float32 [S], 16 kHz) is given, wav2vec2.pt when `features` [F, D] are (with
    the encoder's `model_id`), and meta.json last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"full": torch.as_tensor(full).to(torch.float16).contiguous(),  # [N, C, h, w]
               "masked": torch.as_tensor(masked).to(torch.float16).contiguous(),  # [N, C, h, w]
               "frame_index": torch.as_tensor(frame_index, dtype=torch.int64).contiguous()}  # [N]
    with atomic_path(folder / LATENTS_FILE) as tmp:  # bytes, not save_file: that would create it mode 0600
        tmp.write_bytes(safetensors_bytes(tensors))
    if audio is not None:
        write_wav(folder / AUDIO_FILE, audio)
    if features is not None:
        num_samples = len(audio) if audio is not None else timing.num_samples_for_features(len(features))
        write_features(folder, features, model_id, num_samples)
    with atomic_path(folder / META_FILE) as tmp:
        tmp.write_text(_json_lines(meta))
    return folder


def write_features(folder, features, model_id: str, num_samples: int) -> Path:
    """folder/wav2vec2.pt: the audio encoder's features [F, D] of the folder's `num_samples` of audio, fp16."""
    features = torch.as_tensor(features).to(torch.float16).contiguous()  # [F, D]
    path = Path(folder) / FEATURES_FILE
    with atomic_path(path) as tmp:
        torch.save({"features": features, "model_id": model_id, "hidden_size": int(features.shape[1]),
                    "num_samples": int(num_samples)}, tmp)
    return path


def features_model_id(folder) -> str | None:
    """The audio encoder id recorded in folder/wav2vec2.pt (None when there is none)."""
    path = Path(folder) / FEATURES_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("model_id")


def _json_lines(record: dict) -> str:
    """JSON object with one top-level key per line (readable, yet thousands of boxes stay compact)."""
    return "{\n" + ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items()) + "\n}\n"


def is_finished(folder) -> bool:
    """The video stage completed this folder (meta.json is written last)."""
    folder = Path(folder)
    return (folder / META_FILE).is_file() and (folder / LATENTS_FILE).is_file()


def find_video_folders(data_root) -> list[str]:
    """Finished video folders at any depth under data_root (symlinks followed, each real folder once) -> sorted
    '/'-separated paths relative to data_root. Folders an interrupted run left unfinished are not listed."""
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder")
    found = []
    for folder, files in walk(root):
        if META_FILE in files and LATENTS_FILE in files:
            found.append(folder.relative_to(root).as_posix())
    return sorted(found)


def write_sync(folder, record: dict) -> Path:
    """folder/sync.json: one sync score of the folder (see the module doc)."""
    path = Path(folder) / SYNC_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(_json_lines(record))
    return path


def read_sync(folder) -> dict | None:
    """The folder's sync.json, None when it was never scored."""
    path = Path(folder) / SYNC_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def sync_offset(folder) -> int:
    """The AV offset to correct when training on the folder (video frames, > 0: sound early); 0 if not scored."""
    record = read_sync(folder)
    return int(record["offset"]) if record else 0


def read_meta(folder) -> dict:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
# Per-process caches of what a video's items read, 1024 videos each: items pick videos uniformly, so a cache
# smaller than the dataset misses on almost every item and reopens the files (BENCHMARKS.md, data loading).
# Open maps are virtual memory; the OS pages them in.
@functools.lru_cache(maxsize=1024)
def _latents_file(path: str):
    """Open, memory-mapped latents file: each DataLoader worker opens its own on first use (VideoLatents holds
    only paths, so nothing open is ever pickled)."""
    return safe_open(path, framework="pt")


@functools.lru_cache(maxsize=1024)
def _features(path: str) -> torch.Tensor:
    """A video's audio features fp16 [F, D] (memory-mapped)."""
    return torch.load(path, mmap=True, weights_only=True)["features"]


class VideoLatents:
    """One video folder: a small picklable index built once, tensors read lazily through per-process caches.

    starts: rows i whose window rows i..i+T-1 hold T consecutive frames (frame_index[i+T-1] - frame_index[i] ==
    T - 1) that all have audio; offset: the AV offset of sync.json (0 when not scored): the audio of frame f is
    taken at timing.audio_frame(f, offset), and windows whose audio would start outside the track are left out;
    anchors: the starts with another start >= T frames away (usable as positives).
    """

    def __init__(self, folder, T: int = timing.SYNCNET_T):
        self.folder = Path(folder)
        self.T = T
        # the cache keys, as strings: items read them twice each, and a Path is rebuilt and rehashed every time
        self._latents_path, self._features_path = str(self.folder / LATENTS_FILE), str(self.folder / FEATURES_FILE)
        if not (self.folder / FEATURES_FILE).is_file():
            raise UserError(f"{self.folder} has no {FEATURES_FILE}: run audio_preprocess.py on its data root")
        try:
            with safe_open(str(self.folder / LATENTS_FILE), framework="pt") as f:  # reads the header only
                keys = set(f.keys())
                if not {"full", "masked", "frame_index"} <= keys:
                    raise UserError(f"{self.folder / LATENTS_FILE} lacks full / masked / frame_index (has {keys})")
                self.frame_index = f.get_tensor("frame_index").numpy()  # int64 [N]
                full_shape, masked_shape = (tuple(f.get_slice(key).get_shape()) for key in ("full", "masked"))
            audio = torch.load(self.folder / FEATURES_FILE, mmap=True, weights_only=True)  # header only
            self.audio_model_id = str(audio["model_id"])
            self.audio_frames, self.audio_dim = audio["features"].shape  # F, D
        except (OSError, RuntimeError, KeyError, ValueError, SafetensorError, pickle.UnpicklingError) as err:
            raise UserError(f"{self.folder}: cannot read the dataset files: {err}") from None
        n = len(self.frame_index)
        if (len(full_shape) != 4 or full_shape != masked_shape or full_shape[0] != n
                or np.any(np.diff(self.frame_index) <= 0)):
            raise UserError(f"{self.folder / LATENTS_FILE}: expected full and masked [N, C, h, w] and strictly "
                            f"increasing frame_index [N]; got {full_shape}, {masked_shape}, [{n}]")
        self.latent_shape = full_shape[1:]  # (C, h, w)

        self.offset = sync_offset(self.folder)
        fi = self.frame_index
        # rows [first, with_audio) have audio (all of them unless the audio is shorter than the video, or shifted)
        with_audio = bisect.bisect_left(
            range(n), True, key=lambda row: timing.syncnet_window_start(self.audio_frame(fi[row])) >= self.audio_frames)
        first = int(np.searchsorted(fi, max(self.offset, 0)))  # the first row whose audio_frame is >= 0
        rows = np.arange(first, max(first, with_audio - T + 1))
        self.starts = rows[fi[rows + T - 1] - fi[rows] == T - 1]  # int64 [S], ascending
        self.start_frames = sf = fi[self.starts]  # [S]
        self.anchors = self.starts[(sf - sf[:1] >= T) | (sf[-1:] - sf >= T)]  # [A]

    def audio_frame(self, frame) -> int:
        """The frame of the audio track that belongs to video frame `frame` (timing.audio_frame of the offset)."""
        return timing.audio_frame(int(frame), self.offset)

    def far_starts(self, row: int) -> np.ndarray:
        """Window starts (rows) whose first frame is >= T frames from row's: [K]."""
        frame = self.frame_index[row]
        before = np.searchsorted(self.start_frames, frame - self.T, "right")
        after = np.searchsorted(self.start_frames, frame + self.T, "left")
        return np.concatenate([self.starts[:before], self.starts[after:]])

    def latents(self, key: str, row: int) -> torch.Tensor:
        """key "full" or "masked" -> the window at row: fp16 [T, C, h, w]."""
        return _latents_file(self._latents_path).get_slice(key)[row:row + self.T]

    def features(self) -> torch.Tensor:
        """Audio features fp16 [F, D]."""
        return _features(self._features_path)

    def frames(self, row: int) -> list[int]:
        """25-fps frame indices of the window at row: [T]."""
        return self.frame_index[row:row + self.T].tolist()

    def audio_frames_of(self, row: int) -> list[int]:
        """Audio track frames of the window at row (its frames, shifted by the offset): [T]."""
        return [self.audio_frame(frame) for frame in self.frames(row)]

