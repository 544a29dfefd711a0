"""The ONE data module: dataset roots, filelists, splits, windows, the SyncNet and generator datasets, the DataModule.

Dataset folder, one per video (docs/ARCHITECTURE.md; `write_latent_folder` writes it):
  latents.safetensors  full fp16 [N, C, h, w], masked fp16 [N, C, h, w], frame_index int64 [N] (25-fps frame of
                       each row, strictly increasing; gaps = dropped frames)
  wav2vec2.pt          dict(features fp16 [F, D], model_id str, hidden_size int, num_samples int)
  audio.wav, meta.json (image_size, codec, scaling_factor, ...)

Filelists: filelists_<name>/{train,val,test}.txt, one folder per line relative to --data_root, made by
make_filelists.py: seeded splits of GROUPS (speaker / source video), so no group is in two splits.

Windows: a window is T rows holding T consecutive frames (no dropped frame inside). The negative (SyncNet) or
reference (generator) window starts >= T frames away from the positive one, so it is never a near-duplicate.
Audio windows come from lipsync.timing only.

Sampling: training item idx of epoch e is drawn from np.random.default_rng((seed, e, idx)): the same in any
worker, new each epoch, no worker seeding needed. Validation items are a fixed list drawn once from the seed:
identical across epochs, runs and workers.
"""
from __future__ import annotations

import bisect
import functools
import gc
import json
import os
import pickle
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Sampler

from lipsync import timing
from lipsync.audio import write_wav
from lipsync.errors import UserError
from lipsync.files import atomic_path

DATASET_NAMES = ("lrs2", "hdtf", "3300", "3300_and_hdtf", "all")
UNION_PARTS = {"3300_and_hdtf": ("3300", "hdtf"), "all": ("lrs2", "3300", "hdtf")}
SPLITS = ("train", "val", "test")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LATENTS_FILE = "latents.safetensors"
FEATURES_FILE = "wav2vec2.pt"
AUDIO_FILE = "audio.wav"
META_FILE = "meta.json"


# ---------------------------------------------------------------------------------------------- filelists

def filelist_dir(name: str) -> Path:
    """filelists_<name>/ of the current directory if it has one, else of the project root.

    The five shipped names always resolve; any other name works once its filelists_<name>/ folder exists."""
    for root in (Path.cwd(), PROJECT_ROOT):
        if (root / f"filelists_{name}").is_dir():
            return root / f"filelists_{name}"
    if name in DATASET_NAMES:
        return PROJECT_ROOT / f"filelists_{name}"
    raise UserError(f"unknown dataset name {name!r}: no filelists_{name}/ in {Path.cwd()} or {PROJECT_ROOT} "
                    f"(shipped names: {', '.join(DATASET_NAMES)})")


def read_entries(path) -> list[str]:
    """A filelist -> the first whitespace token of each line; blank lines and # comments are skipped."""
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip() and not line.lstrip().startswith("#")]


def read_filelist(name: str, split: str, data_root) -> list[Path]:
    """Video folders of `split` ("train", "val", "test") of dataset `name`, joined onto data_root.

    Entries without latents.safetensors under data_root are left out with one warning (count and the first few).
    """
    path = filelist_dir(name) / f"{split}.txt"
    if not path.is_file():
        raise UserError(f"filelist {path} not found; make it with make_filelists.py ({path.parent / 'README.md'})")
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise UserError(f"data root {data_root} is not a folder")
    folders = [data_root / entry for entry in read_entries(path)]
    is_present = [(folder / LATENTS_FILE).is_file() for folder in folders]
    present = [folder for folder, ok in zip(folders, is_present) if ok]
    if len(present) < len(folders):
        missing = [str(folder) for folder, ok in zip(folders, is_present) if not ok]
        warnings.warn(f"{len(missing)} of {len(folders)} entries of {path} have no {LATENTS_FILE}, left out "
                      f"(first: {', '.join(missing[:3])})")
    if not present:
        raise UserError(f"{path} lists no video folder present under {data_root}")
    return present


def find_video_folders(data_root) -> list[str]:
    """Folders holding latents.safetensors at any depth under data_root (symlinks followed, each real folder
    once) -> sorted '/'-separated paths relative to data_root."""
    root = Path(data_root)
    if not root.is_dir():
        raise UserError(f"data root {root} is not a folder")
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle or a second link to a folder already listed
            dirnames.clear()
            continue
        seen.add(real)
        dirnames.sort()  # deterministic walk, so the same link wins on every machine
        if LATENTS_FILE in filenames:
            found.append(Path(dirpath).relative_to(root).as_posix())
            dirnames.clear()  # a video folder holds no other video folder
    return sorted(found)


def make_filelists(data_root, out_dir, val_groups: int | float = 0.05, test_groups: int | float = 0.05,
                   seed: int = 0, group_depth: int = 1, official_split=None, group_pattern: str | None = None,
                   command: str | None = None) -> dict[str, list[str]]:
    """Write out_dir/{train,val,test}.txt and a README.md saying how they were made; returns {split: entries}.

    Video folders are grouped (by default the first `group_depth` path parts, e.g. LRS2 `<source id>/<clip>`; or
    `group_pattern`, a regex searched in the relative path whose first group, else whole match, is the group) and
    whole groups are shuffled with random.Random(seed) (stable across Python versions and platforms), so no group
    is in two splits. val_groups / test_groups: a count of groups (int) or a fraction of them (float in [0, 1)).
    official_split: a folder with LRS2's own train.txt / val.txt / test.txt, used instead of a random split.
    """
    entries = find_video_folders(data_root)
    if not entries:
        raise UserError(f"no folder under {data_root} holds {LATENTS_FILE}")
    if official_split is not None:
        splits, how = _official_splits(entries, Path(official_split))
    else:
        splits, how = _group_splits(entries, val_groups, test_groups, seed, group_depth, group_pattern)
    _write_filelists(Path(out_dir), splits, [f"- data root: `{data_root}` ({len(entries)} video folders found)",
                                             how], command)
    return splits


def _group_splits(entries, val_groups, test_groups, seed, group_depth, group_pattern) -> tuple[dict, str]:
    try:
        pattern = group_pattern and re.compile(group_pattern)
    except re.error as err:
        raise UserError(f"bad group pattern {group_pattern!r}: {err}") from None
    groups: dict[str, list[str]] = {}
    unmatched = []
    for entry in entries:
        if pattern:
            match = pattern.search(entry)
            key = match and (match.group(1) if pattern.groups else match.group(0))
        else:
            key = "/".join(entry.split("/")[:group_depth])
        if key:
            groups.setdefault(key, []).append(entry)
        else:
            unmatched.append(entry)
    if unmatched:
        raise UserError(f"{len(unmatched)} folders do not match the group pattern {group_pattern!r} "
                        f"(first: {', '.join(unmatched[:3])})")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    n_val, n_test = _num_groups(val_groups, len(names), "val"), _num_groups(test_groups, len(names), "test")
    if n_val + n_test >= len(names):
        raise UserError(f"{len(names)} groups cannot give {n_val} val + {n_test} test groups and a train split")
    chosen = {"val": names[:n_val], "test": names[n_val:n_val + n_test], "train": names[n_val + n_test:]}
    splits = {split: sorted(e for group in chosen[split] for e in groups[group]) for split in SPLITS}
    grouping = f"regex `{group_pattern}`" if group_pattern else f"first {group_depth} path part(s)"
    how = (f"- split: by group ({grouping}; {len(names)} groups), groups shuffled with random.Random({seed}): "
           + ", ".join(f"{split} {len(chosen[split])} groups" for split in SPLITS))
    return splits, how


def _num_groups(size: int | float, total: int, what: str) -> int:
    """A count of groups, or a fraction of `total` (at least one group when the fraction is > 0)."""
    if isinstance(size, float):
        if not 0 <= size < 1:
            raise UserError(f"{what} size {size}: a fraction must be in [0, 1) (or give a count)")
        return max(1, round(size * total)) if size > 0 else 0
    if size < 0:
        raise UserError(f"{what} size must be >= 0, got {size}")
    return size


def _official_splits(entries, split_dir: Path) -> tuple[dict, str]:
    on_disk = set(entries)
    splits, not_found = {}, 0
    for split in SPLITS:
        path = split_dir / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"official split file {path} not found")
        listed = read_entries(path)  # `5535415699068794046/00001 [tag]`
        splits[split] = sorted(entry for entry in listed if entry in on_disk)
        not_found += len(listed) - len(splits[split])
    unlisted = len(on_disk - set().union(*splits.values()))
    if not_found:
        warnings.warn(f"{not_found} clips of the official lists in {split_dir} have no folder under the data root")
    how = (f"- split: LRS2's official lists in `{split_dir}`; {not_found} listed clips not found under the data "
           f"root; {unlisted} folders found but in no list, left out")
    return splits, how


def union_filelists(out_dir, parts, command: str | None = None) -> dict[str, list[str]]:
    """Write out_dir/{split}.txt = union of the same split of each filelist folder in `parts` (first occurrence
    order) and a README.md. All parts' entries must be relative to one data root (e.g. symlinks side by side)."""
    parts = [Path(part) for part in parts]
    splits = {}
    for split in SPLITS:
        entries = []
        for part in parts:
            path = part / f"{split}.txt"
            if not path.is_file():
                raise UserError(f"{path} not found: make the {part.name} filelists first")
            entries += read_entries(path)
        splits[split] = list(dict.fromkeys(entries))
    train, val, test = (set(splits[split]) for split in SPLITS)
    leaked = sorted((train & val) | (train & test) | (val & test))
    if leaked:
        raise UserError(f"{len(leaked)} entries are in two splits of the parts (first: {', '.join(leaked[:3])})")
    _write_filelists(Path(out_dir), splits, [f"- union of: {', '.join(f'`{part}`' for part in parts)}"], command)
    return splits


def _write_filelists(out_dir: Path, splits: dict[str, list[str]], how: list[str], command: str | None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        with atomic_path(out_dir / f"{split}.txt") as tmp:
            tmp.write_text("".join(f"{e}\n" for e in splits[split]))
    readme = ["# Filelists (generated)", "",
              "Made by `lipsync.data` (`make_filelists.py`). One video folder per line, relative to the data root.",
              "The data is not redistributable: regenerate these lists on your own copy.", ""]
    if command:
        readme += ["Command:", "", f"    {command}", ""]
    readme += [*how, "- folders: " + ", ".join(f"{split} {len(splits[split])}" for split in SPLITS), ""]
    with atomic_path(out_dir / "README.md") as tmp:
        tmp.write_text("\n".join(readme))


# ------------------------------------------------------------------------------------------ video folders

def write_latent_folder(folder, full, masked, frame_index, features, model_id: str, meta: dict,
                        audio: np.ndarray | None = None) -> Path:
    """Write one video folder in the dataset format, each file atomically and meta.json last (as preprocessing
    does: its presence marks a finished folder). full, masked [N, C, h, w] and features [F, D] are stored fp16,
    frame_index [N] int64. audio (float32 [S], 16 kHz, optional) becomes audio.wav and gives num_samples; without
    it num_samples is the shortest length that gives F feature frames."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    features = torch.as_tensor(features).to(torch.float16).contiguous()  # [F, D]
    if audio is None:
        num_samples = (features.shape[0] - 1) * timing.FEATURE_HOP + timing.FEATURE_RECEPTIVE_FIELD
    else:
        num_samples = len(audio)
        write_wav(folder / AUDIO_FILE, audio)
    tensors = {"full": torch.as_tensor(full).to(torch.float16).contiguous(),  # [N, C, h, w]
               "masked": torch.as_tensor(masked).to(torch.float16).contiguous(),  # [N, C, h, w]
               "frame_index": torch.as_tensor(frame_index, dtype=torch.int64).contiguous()}  # [N]
    with atomic_path(folder / LATENTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    audio_dict = dict(features=features, model_id=model_id, hidden_size=features.shape[1], num_samples=num_samples)
    with atomic_path(folder / FEATURES_FILE) as tmp:
        torch.save(audio_dict, tmp)
    with atomic_path(folder / META_FILE) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))
    return folder


def read_meta(folder) -> dict:
    path = Path(folder) / META_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


# Per-process caches of what a video's items read, 1024 videos each: items pick videos uniformly, so a cache
# smaller than the dataset misses on almost every item and reopens the files (with 64, 314 demo videos: 21 ms
# per SyncNet batch of 64 on the CPU; with 1024: 4.4). Open maps are virtual memory; the OS pages them in.
@functools.lru_cache(maxsize=1024)
def _latents_file(path: Path):
    """Open, memory-mapped latents file: each DataLoader worker opens its own on first use (VideoLatents holds
    only paths, so nothing open is ever pickled)."""
    return safe_open(str(path), framework="pt")


@functools.lru_cache(maxsize=1024)
def _features(path: Path) -> torch.Tensor:
    """A video's audio features fp16 [F, D] (memory-mapped)."""
    return torch.load(path, mmap=True, weights_only=True)["features"]


class VideoLatents:
    """One video folder: a small picklable index built once, tensors read lazily through per-process caches.

    starts: rows i whose window rows i..i+T-1 hold T consecutive frames (frame_index[i+T-1] - frame_index[i] ==
    T - 1) that all have audio; anchors: the starts with another start >= T frames away (usable as positives).
    """

    def __init__(self, folder, T: int = timing.SYNCNET_T):
        self.folder = Path(folder)
        self.T = T
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

        fi = self.frame_index
        # rows [0, with_audio) have audio (all of them unless the audio is shorter than the video)
        with_audio = bisect.bisect_left(
            range(n), True, key=lambda row: timing.syncnet_window_start(int(fi[row])) >= self.audio_frames)
        rows = np.arange(max(0, with_audio - T + 1))
        self.starts = rows[fi[rows + T - 1] - fi[rows] == T - 1]  # int64 [S], ascending
        self.start_frames = sf = fi[self.starts]  # [S]
        self.anchors = self.starts[(sf - sf[:1] >= T) | (sf[-1:] - sf >= T)]  # [A]

    def far_starts(self, row: int) -> np.ndarray:
        """Window starts (rows) whose first frame is >= T frames from row's: [K]."""
        frame = self.frame_index[row]
        before = np.searchsorted(self.start_frames, frame - self.T, "right")
        after = np.searchsorted(self.start_frames, frame + self.T, "left")
        return np.concatenate([self.starts[:before], self.starts[after:]])

    def latents(self, key: str, row: int) -> torch.Tensor:
        """key "full" or "masked" -> the window at row: fp16 [T, C, h, w]."""
        return _latents_file(self.folder / LATENTS_FILE).get_slice(key)[row:row + self.T]

    def features(self) -> torch.Tensor:
        """Audio features fp16 [F, D]."""
        return _features(self.folder / FEATURES_FILE)

    def frames(self, row: int) -> list[int]:
        """25-fps frame indices of the window at row: [T]."""
        return self.frame_index[row:row + self.T].tolist()


def check_compatible(videos, reference: VideoLatents, audio_model_id: str | None = None) -> None:
    """Every video must have the reference's audio encoder (or audio_model_id when given), latent shape and
    feature size: mixing them is a UserError naming the folder."""
    expected = audio_model_id or reference.audio_model_id
    for video in videos:
        if video.audio_model_id != expected:
            source = "the expected encoder" if audio_model_id else f"the encoder of {reference.folder}"
            raise UserError(f"{video.folder}: {FEATURES_FILE} was made by {video.audio_model_id!r}, not {expected!r} "
                            f"({source}); encode every video of a dataset with one audio encoder")
        if (video.latent_shape, video.audio_dim) != (reference.latent_shape, reference.audio_dim):
            raise UserError(f"{video.folder}: latents {video.latent_shape} / features {video.audio_dim} differ from "
                            f"{reference.folder}'s {reference.latent_shape} / {reference.audio_dim}")


def index_videos(folders, T: int = timing.SYNCNET_T, audio_model_id: str | None = None) -> list[VideoLatents]:
    """Index every folder (all compatible with the first, see check_compatible). Videos without two windows >= T
    frames apart are left out with one warning."""
    videos = [VideoLatents(folder, T) for folder in folders]
    if not videos:
        raise UserError("no video folders given")
    check_compatible(videos, videos[0], audio_model_id)
    usable = [video for video in videos if len(video.anchors)]
    if len(usable) < len(videos):
        short = [str(video.folder) for video in videos if not len(video.anchors)]
        warnings.warn(f"{len(short)} of {len(videos)} videos have no two {T}-frame windows {T} frames apart, left out "
                      f"(first: {', '.join(short[:3])})")
    if not usable:
        raise UserError(f"none of the {len(videos)} videos has two {T}-frame windows {T} frames apart")
    return usable


# ----------------------------------------------------------------------------------------------- datasets

class Sample(NamedTuple):
    video: int  # index into dataset.videos
    s: int  # row of the positive / ground-truth window (its audio is the item's audio)
    w: int  # row of the negative / reference window, >= T frames from s
    label: int  # SyncNet: 1 = faces of s (in sync), 0 = faces of w


class WindowDataset(Dataset):
    """Draws Samples; subclasses turn them into tensors.

    Train: item idx of epoch e comes from default_rng((seed, e, idx)); len = samples_per_epoch (default: the
    number of usable windows). Val (train=False): a fixed list of val_samples Samples drawn once from
    default_rng(seed), labels alternating 1, 0. A Sample picks a video uniformly, then s uniformly among its
    anchors, then w uniformly among the windows >= T frames from s.
    Floating-point tensors come out in `dtype` (default float32; the training scripts pass the dtype Lightning
    would otherwise cast each batch to on its main thread: `lipsync.training.batch_dtype`).
    """

    def __init__(self, folders, T: int = timing.SYNCNET_T, train: bool = True, samples_per_epoch: int | None = None,
                 val_samples: int = 1024, seed: int = 0, audio_model_id: str | None = None,
                 dtype: torch.dtype = torch.float32):
        self.videos = index_videos(folders, T, audio_model_id)
        self.audio_model_id = self.videos[0].audio_model_id
        self.T, self.seed, self.dtype = T, seed, dtype
        # in shared memory, so set_epoch also reaches persistent DataLoader workers
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        if train:
            self.fixed = None  # items are drawn in __getitem__
            self.num_samples = samples_per_epoch or sum(len(video.anchors) for video in self.videos)
        else:
            rng = np.random.default_rng(seed)
            self.fixed = [self._draw(rng, label=(i + 1) % 2) for i in range(val_samples)]
            self.num_samples = val_samples

    def set_epoch(self, epoch: int) -> None:
        """Training items of a new epoch (call before iterating; LatentDataModule's sampler does it for Lightning)."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, idx: int) -> Sample:
        if self.fixed is not None:
            return self.fixed[idx]
        rng = np.random.default_rng((self.seed, int(self._epoch), idx))
        return self._draw(rng, label=int(rng.integers(2)))

    def _draw(self, rng: np.random.Generator, label: int) -> Sample:
        v = int(rng.integers(len(self.videos)))
        video = self.videos[v]
        s = int(rng.choice(video.anchors))
        return Sample(v, s, int(rng.choice(video.far_starts(s))), label)

    def _sync_audio(self, video: VideoLatents, s: int) -> torch.Tensor:
        """Audio of the window at row s: [2T, D]."""
        return timing.syncnet_audio_window(video.features(), int(video.frame_index[s]), self.T).to(self.dtype)


class SyncNetDataset(WindowDataset):
    """Items (floating tensors in the dataset's dtype): faces [T, C, h, w] (full latents of s if label else of w),
    audio [2T, D] (of s), label [] (1 in sync, 0 not)."""

    def __getitem__(self, idx: int) -> dict:
        video_i, s, w, label = self.sample(idx)
        video = self.videos[video_i]
        return dict(faces=video.latents("full", s if label else w).to(self.dtype),
                    audio=self._sync_audio(video, s),
                    label=torch.tensor(float(label), dtype=self.dtype))


class GeneratorDataset(WindowDataset):
    """Items (in the dataset's dtype): masked, reference (full latents of w), gt (full latents of s): [T, C, h, w];
    audio [T, 10, D] (per-frame windows of s's frames); sync_audio [2T, D]."""

    def __getitem__(self, idx: int) -> dict:
        video_i, s, w, _ = self.sample(idx)
        video = self.videos[video_i]
        return dict(masked=video.latents("masked", s).to(self.dtype),
                    reference=video.latents("full", w).to(self.dtype),
                    gt=video.latents("full", s).to(self.dtype),
                    audio=timing.generator_audio_windows(video.features(), video.frames(s)).to(self.dtype),
                    sync_audio=self._sync_audio(video, s))


# ------------------------------------------------------------------------------------------- data module

TASKS = {"syncnet": SyncNetDataset, "generator": GeneratorDataset}


@dataclass(frozen=True)
class DataDescription:
    """What a checkpoint records about its training data."""
    latent_channels: int
    latent_size: int  # latents are latent_size x latent_size
    audio_dim: int
    audio_model_id: str
    codec_id: str
    image_size: int


def describe_video(video: VideoLatents) -> DataDescription:
    meta = read_meta(video.folder)
    if "codec" not in meta or "image_size" not in meta:
        raise UserError(f"{video.folder / META_FILE} lacks 'codec' or 'image_size'")
    channels, height, _ = video.latent_shape
    return DataDescription(latent_channels=channels, latent_size=height, audio_dim=video.audio_dim,
                           audio_model_id=video.audio_model_id, codec_id=str(meta["codec"]),
                           image_size=int(meta["image_size"]))


class EpochSampler(Sampler[int]):
    """Indices 0..n-1 in order (every item is already random). Lightning calls set_epoch at each epoch (through
    its DDP sampler wrapper too); it reaches the dataset's shared epoch counter."""

    def __init__(self, dataset: WindowDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        return iter(range(len(self.dataset)))

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


class LatentDataModule(pl.LightningDataModule):
    """Train / val datasets of `task` ("syncnet" | "generator") from filelists_<dataset_name>/ under data_root.

    overfit: validate on the train split (a fixed sample of it). dtype: of the batches' floating tensors.
    latent_channels, latent_size, audio_dim, audio_model_id, codec_id, image_size describe the data (read from the
    first training video on first use).
    """

    def __init__(self, data_root, dataset_name: str, task: str = "syncnet", batch_size: int = 8,
                 num_workers: int = 4, T: int = timing.SYNCNET_T, train_samples_per_epoch: int | None = None,
                 val_samples: int = 1024, seed: int = 0, overfit: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        filelist_dir(dataset_name)  # an unknown name fails here, before any work
        self.data_root, self.dataset_name, self.task = Path(data_root), dataset_name, task
        self.batch_size, self.num_workers, self.T = batch_size, num_workers, T
        self.train_samples_per_epoch, self.val_samples = train_samples_per_epoch, val_samples
        self.seed, self.overfit, self.dtype = seed, overfit, dtype
        self.train_dataset: WindowDataset | None = None
        self.val_dataset: WindowDataset | None = None
        self.description: DataDescription | None = None

    # the data's description, read on first use (training scripts put these in checkpoints)
    latent_channels = property(lambda self: self.describe().latent_channels)
    latent_size = property(lambda self: self.describe().latent_size)
    audio_dim = property(lambda self: self.describe().audio_dim)
    audio_model_id = property(lambda self: self.describe().audio_model_id)
    codec_id = property(lambda self: self.describe().codec_id)
    image_size = property(lambda self: self.describe().image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        dataset = TASKS[self.task]
        self.train_dataset = dataset(read_filelist(self.dataset_name, "train", self.data_root), self.T, train=True,
                                     samples_per_epoch=self.train_samples_per_epoch, seed=self.seed, dtype=self.dtype)
        if len(self.train_dataset) < self.batch_size:
            raise UserError(f"{len(self.train_dataset)} training samples per epoch < batch size {self.batch_size}")
        val_split = "train" if self.overfit else "val"
        self.val_dataset = dataset(read_filelist(self.dataset_name, val_split, self.data_root), self.T, train=False,
                                   val_samples=self.val_samples, seed=self.seed, dtype=self.dtype)
        check_compatible(self.val_dataset.videos, self.train_dataset.videos[0])

    def describe(self) -> DataDescription:
        """The data's description, from the first training video (headers and meta.json only; setup not needed)."""
        if self.description is None:
            video = (self.train_dataset.videos[0] if self.train_dataset is not None else
                     VideoLatents(read_filelist(self.dataset_name, "train", self.data_root)[0], self.T))
            self.description = describe_video(video)
        return self.description

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, sampler=EpochSampler(self.train_dataset), drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def _loader(self, dataset: WindowDataset, **kwargs) -> DataLoader:
        if self.num_workers > 0:
            gc.collect()  # no garbage left for the forked workers to inherit (see freeze_inherited_objects)
            kwargs.update(worker_init_fn=freeze_inherited_objects, persistent_workers=True)
        return DataLoader(dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), **kwargs)


def freeze_inherited_objects(worker_id: int) -> None:
    """DataLoader worker_init_fn: the objects a forked worker inherits are never garbage-collected in it.
    A worker forked after CUDA is initialized inherits the parent's CUDA tensors; if its collector frees one (a
    cycle that was garbage in the parent, e.g. left by torch.compile), the worker aborts with "CUDA error:
    initialization error": 2 of 9 `--compile` training runs on an H100 lost their loader workers so at the first
    step. gc.freeze() moves everything inherited into the permanent generation (Python's documented pattern for
    fork without exec, which also keeps the collector from touching, and so copying, the parent's pages). The
    datasets draw with explicit generators; Lightning's worker seeding runs as before when enabled."""
    gc.freeze()
    if os.environ.get("PL_SEED_WORKERS") == "1":  # seed_everything(workers=True); ours replaces its worker_init_fn
        pl_worker_init_function(worker_id)
