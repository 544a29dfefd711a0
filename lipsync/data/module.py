"""The Lightning DataModule: train / val datasets of one task from a dataset's filelists, the loaders."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

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


class EpochSampler(DistributedSampler):
    """This process's share of a training epoch, in index order (every item is already random): items rank,
    rank + world_size, ..., as many for every process (the last few of an epoch are dropped). Being a
    DistributedSampler, Lightning uses it as it is in multi-process runs. `set_epoch` (Lightning calls it at each
    epoch) reaches the dataset's shared epoch counter; `skip` items are left out of the next pass only (resume)."""

    def __init__(self, dataset: WindowDataset, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.skip:]
        self.skip = 0
        return iter(indices)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.dataset.set_epoch(epoch)


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch through the protocol Lightning saves in every checkpoint and
    restores before the first batch of a resumed run (`state_dict` / `load_state_dict`, lightning_fabric's
    `_Stateful`): the epoch and the number of batches of it this process has delivered. Items are drawn from
    (seed, epoch, index) alone, so that position is the whole state: a resumed run sees the batches an
    uninterrupted one would have seen (with the same number of processes; with another, each process goes on at
    the same batch count, which is Lightning's own bookkeeping)."""

    def __init__(self, dataset: WindowDataset, sampler: EpochSampler, **kwargs):
        super().__init__(dataset, sampler=sampler, drop_last=True, **kwargs)
        self.delivered = 0  # batches of the current pass handed out
        self.resume_at = 0  # batches the next pass starts after (load_state_dict)

    def __iter__(self):
        self.sampler.skip = self.resume_at * self.batch_size
        self.delivered, self.resume_at = self.resume_at, 0
        return self._counted(super().__iter__())  # the workers start now, as for a plain DataLoader

    def _counted(self, batches):
        for batch in batches:
            self.delivered += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self.delivered}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved after the epoch's last batch: the next one starts from its beginning
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)  # before the workers start: they read the epoch when they draw
        self.resume_at = batches


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

    def train_dataloader(self) -> ResumableLoader:
        """This process's share of the training epoch (one process when there is no trainer)."""
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        sampler = EpochSampler(self.train_dataset, num_replicas=world_size, rank=rank)
        if len(sampler) < self.batch_size:
            raise UserError(f"{len(self.train_dataset)} training samples per epoch give each of the {world_size} "
                            f"processes fewer than one batch of {self.batch_size}")
        return ResumableLoader(self.train_dataset, sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_dataset, shuffle=False, **self._loader_options())

    def _loader_options(self) -> dict:
        options = dict(batch_size=self.batch_size, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        if self.num_workers > 0:
            gc.collect()  # no garbage left for the forked workers to inherit (see freeze_inherited_objects)
            options.update(worker_init_fn=freeze_inherited_objects, persistent_workers=True)
        return options


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
