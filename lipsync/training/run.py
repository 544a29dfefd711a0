"""A training run: hardware defaults, seeding, the data module, the trainer, its run folder and checkpoints,
resuming. Shared by unet_syncnet_lightning.py and unet_wav2lip_lightning.py.

Run folder: `<output_dir>/<experiment>/version_K/` with `options.json` (the resolved options, also stored in
every checkpoint under "options"), `checkpoints/` (top-k by a validation metric + `last.ckpt`; under DeepSpeed
each is a ZeRO folder holding DeepSpeed's `zero_to_fp32.py`), TensorBoard events and `samples/`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.strategies import DeepSpeedStrategy

from lipsync.checkpoint import decode_model_card, read_checkpoint
from lipsync.data.module import LatentDataModule
from lipsync.errors import UserError
from lipsync.files import atomic_path, check_writable_folder, recover
from lipsync.training.optim import COSINE_NEEDS_FINITE_RUN
from lipsync.training.progress import progress_bar
from lipsync.training.zero import CPUDeepSpeedStrategy, ZeroStage2Strategy


def start_run(args, task: str) -> LatentDataModule:
    """Resolve hardware defaults, seed everything, and build the data module of `task` ("syncnet" | "generator")."""
    resolve_args(args)
    pl.seed_everything(args.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: cuDNN times its convolution kernels once
    return LatentDataModule(args.data_root, args.dataset_name, task=task, batch_size=args.batch_size,
                            num_workers=args.num_workers, T=args.T,
                            train_samples_per_epoch=args.train_samples_per_epoch, val_samples=args.val_samples,
                            seed=args.seed, overfit=args.overfit, dtype=batch_dtype(args))


def batch_dtype(args) -> torch.dtype:
    """The dtype of the batches' floating tensors: the one Lightning's precision plugin would cast every batch
    to (DeepSpeed's for any 16-bit precision, and every "-true" one), so the loader workers deliver it instead.
    Lightning's cast runs on the host's main thread before the batch moves to the GPU, which then waits for it
    (BENCHMARKS.md, training). float32 otherwise (autocast casts on the GPU). The values are the same either way:
    the stored latents and features are fp16."""
    half = {"bf16": torch.bfloat16, "16": torch.float16}.get(args.precision.split("-")[0])
    if half is not None and (args.strategy == "deepspeed_stage_2" or args.precision.endswith("-true")):
        return half
    return torch.float32


def data_card(data) -> dict:
    """The model-card entries that come from the dataset (every checkpoint records what it was trained on)."""
    return {"audio_encoder": data.audio_model_id, "audio_hidden_size": data.audio_dim, "codec": data.codec_id,
            "image_size": data.image_size, "latent_size": data.latent_size}


def check_card_matches_data(card: dict, data, source) -> None:
    """A network trained on other features (audio encoder, codec, crop size) is useless here: say so."""
    wanted = data_card(data)
    diff = [f"{k} {card[k]!r} != {wanted[k]!r}" for k in wanted if k in card and card[k] != wanted[k]]
    if diff:
        raise UserError(f"{source} was trained on other data than {data.dataset_name}: {'; '.join(diff)}")


def resolve_args(args) -> None:
    """Fill hardware-dependent defaults in place, so options.json records what actually ran."""
    cuda = torch.cuda.is_available()
    if args.precision is None:
        args.precision = "bf16-mixed" if cuda else "32-true"
    if args.strategy == "ddp" and _one_process(args):
        # Lightning's single-device strategy: DDP with one process would only copy every gradient into its
        # all-reduce buckets (BENCHMARKS.md, demo)
        args.strategy = "auto"
    if args.lr_schedule == "cosine" and args.max_steps == -1 and args.max_epochs == -1:
        raise UserError(COSINE_NEEDS_FINITE_RUN)
    check_writable_folder(args.output_dir, "--output_dir")  # not after the models are built and the data read
    if args.wandb:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--wandb needs the wandb package (pip install wandb)") from None


def _one_process(args) -> bool:
    """The run has one device on one node (--devices auto: every GPU, or the CPU)."""
    devices = args.devices
    if devices in ("auto", -1):
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    return args.num_nodes == 1 and devices == 1


def _strategy(args):
    if args.strategy != "deepspeed_stage_2":
        return args.strategy
    if torch.cuda.is_available():
        return ZeroStage2Strategy()
    return CPUDeepSpeedStrategy(processes=1 if args.devices in ("auto", -1) else args.devices)


def run_dir(trainer: pl.Trainer) -> Path:
    """<output_dir>/<experiment>/version_K (the parent of the checkpoint folder, identical on every rank)."""
    return Path(trainer.checkpoint_callback.dirpath).parent


class RunOptions(Callback):
    """Writes options.json into the run folder and stores the options in every checkpoint."""

    def __init__(self, options: dict):
        self.options = options

    def on_fit_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            folder = run_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "options.json").write_text(json.dumps(self.options, indent=2, sort_keys=True) + "\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["options"] = self.options


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files written under a temp name and renamed (lipsync.files.atomic_path): a run killed while it
    writes last.ckpt leaves the previous one. (Lightning's own write goes through a temp file in the system's
    temp folder, moved over the checkpoint: a copy, not a rename, where that is another file system.) DeepSpeed's
    checkpoint folders: ZeroStage2Strategy.save_checkpoint."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class LastCheckpoint(Callback):
    """checkpoints/last.ckpt: the state at every validation and at the end of training, what --ckpt resumes from.
    Lightning's own save_last (2.6) writes last.ckpt only at a validation that also wrote a top-k checkpoint: once
    the metric stops improving, last.ckpt would stay at the last improvement, and a killed run would resume
    from there."""

    def __init__(self, checkpoints: ModelCheckpoint):
        self.checkpoints = checkpoints  # whose folder (resolved by Lightning at setup) last.ckpt goes to
        self.saved_step: int | None = None

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.save(trainer)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer)

    def save(self, trainer) -> None:
        if self.saved_step != trainer.global_step:
            name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
            trainer.save_checkpoint(Path(self.checkpoints.dirpath) / name)
            self.saved_step = trainer.global_step


def make_trainer(args, experiment_name: str, monitor: str, filename: str, mode: str = "min") -> pl.Trainer:
    """Trainer writing to <output_dir>/<experiment_name>/version_K/, keeping the top-k checkpoints by `monitor`
    (`filename` is a ModelCheckpoint pattern, e.g. "syncnet-u-{step}-{val/loss:.3f}") and last.ckpt."""
    loggers = [TensorBoardLogger(save_dir=args.output_dir, name=experiment_name, default_hp_metric=False)]
    if args.wandb:
        from pytorch_lightning.loggers import WandbLogger
        loggers.append(WandbLogger(project=experiment_name, save_dir=args.output_dir))
    checkpoints = ModelCheckpoint(monitor=monitor, mode=mode, save_top_k=args.save_top_k, filename=filename,
                                  auto_insert_metric_name=False)
    step_interval = isinstance(args.val_check_interval, int)
    strategy = _strategy(args)
    return pl.Trainer(
        accelerator="auto", devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
        plugins=[] if isinstance(strategy, DeepSpeedStrategy) else [AtomicCheckpointIO()],
        precision=args.precision, max_steps=args.max_steps, max_epochs=args.max_epochs,
        val_check_interval=args.val_check_interval,
        check_val_every_n_epoch=None if step_interval else 1,  # int intervals count batches across epochs
        accumulate_grad_batches=args.accumulate_grad_batches, gradient_clip_val=args.gradient_clip_val,
        log_every_n_steps=args.log_every_n_steps, logger=loggers,
        callbacks=[checkpoints, LastCheckpoint(checkpoints), LearningRateMonitor(logging_interval="step"),
                   RunOptions(vars(args)), progress_bar()])


def check_resume(path, module: pl.LightningModule) -> None:
    """--ckpt must exist and hold the same model (same model card) as the one this run builds."""
    path = recover(path)  # a checkpoint folder whose replacement was cut short between its two renames
    if not path.exists():
        raise UserError(f"--ckpt {path} not found")
    states = path / "checkpoint" / "mp_rank_00_model_states.pt"  # ZeRO folder: read the card, skip the merge
    card = read_checkpoint(states if states.is_file() else path).card
    ours = decode_model_card(module.model_card)
    if card != ours:
        keys = sorted(k for k in set(ours) | set(card or {}) if (card or {}).get(k) != ours.get(k))
        raise UserError(f"--ckpt {path} holds a different model than these options build "
                        f"(differs in: {', '.join(keys)})")


def fit(args, module: pl.LightningModule, data, experiment_name: str, monitor: str, filename: str) -> pl.Trainer:
    """Train `module` (resuming from --ckpt: global step, optimizer, scheduler and buffers continue)."""
    if args.ckpt:
        check_resume(args.ckpt, module)
    trainer = make_trainer(args, experiment_name, monitor, filename)
    trainer.fit(module, datamodule=data, ckpt_path=args.ckpt)
    return trainer
