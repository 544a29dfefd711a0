"""The training datasets: windows of T consecutive frames drawn from indexed video folders.

Windows: a window is T rows holding T consecutive frames (no dropped frame inside). The negative (SyncNet) or
reference (generator) window starts >= T frames away from the positive one, so it is never a near-duplicate.
Audio windows come from lipsync.timing only, at the folder's measured AV offset (sync.json, score_sync.py):
a clip whose sound is k frames off trains as in sync.

Sampling: training item idx of epoch e is drawn from np.random.default_rng((seed, e, idx)): the same in any
worker, new each epoch, no worker seeding needed. Validation items are a fixed list drawn once from the seed:
identical across epochs, runs and workers.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lipsync import timing
from lipsync.data.folder import FEATURES_FILE, VideoLatents
from lipsync.errors import UserError


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


def _pick(rng: np.random.Generator, values: np.ndarray):
    """rng.choice(values) for a 1-D array: the same draw from the same stream, a quarter of the time."""
    return values[rng.integers(len(values))]


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
        s = int(_pick(rng, video.anchors))
        return Sample(v, s, int(_pick(rng, video.far_starts(s))), label)

    def _sync_audio(self, video: VideoLatents, s: int) -> torch.Tensor:
        """Audio of the window at row s: [2T, D]."""
        return timing.syncnet_audio_window(video.features(), video.audio_frame(video.frame_index[s]),
                                           self.T).to(self.dtype)


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
                    audio=timing.generator_audio_windows(video.features(), video.audio_frames_of(s)).to(self.dtype),
                    sync_audio=self._sync_audio(video, s))
