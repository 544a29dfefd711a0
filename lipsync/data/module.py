"""The Lightning DataModule: train / val datasets of one task from a dataset's filelists, the loaders."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Sampler

from lipsync import timing
from lipsync.data.datasets import GeneratorDataset, SyncNetDataset, WindowDataset, check_compatible
from lipsync.data.filelists import filelist_dir, read_filelist
from lipsync.data.folder import META_FILE, VideoLatents, read_meta
from lipsync.errors import UserError

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
    initialization error" (seen in `--compile` runs on a GPU). gc.freeze() moves everything inherited into the
    permanent generation (Python's documented pattern for fork without exec, which also keeps the collector from
    touching, and so copying, the parent's pages). The datasets draw with explicit generators; Lightning's worker
    seeding runs as before when enabled."""
    gc.freeze()
    if os.environ.get("PL_SEED_WORKERS") == "1":  # seed_everything(workers=True); ours replaces its worker_init_fn
        pl_worker_init_function(worker_id)
