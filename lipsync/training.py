"""Shared trainer setup of unet_syncnet_lightning.py and unet_wav2lip_lightning.py.

One place for: the common options, seeding and the data module, AdamW + warm-up/cosine schedule, strategies
(DeepSpeed ZeRO-2 on GPUs through `ZeroStage2Strategy`, the same ZeRO-2 code path on a CPU-only machine through
`CPUDeepSpeedStrategy`),
the run folder and checkpoints, and resuming.

Run folder: `<output_dir>/<experiment>/version_K/` with `options.json` (the resolved options, also stored in
every checkpoint under "options"), `checkpoints/` (top-k by a validation metric + `last.ckpt`; under DeepSpeed
each is a ZeRO folder holding DeepSpeed's `zero_to_fp32.py`), TensorBoard events and `samples/`.

Frozen networks (the SyncNet expert, the sample-image codec) are held with `hold_frozen`, outside the module's
registered children: ZeRO never shards or stores them, Lightning's `.train()` never reaches them, and
checkpoints hold only trainable weights, buffers and the `model_card`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar,
                                         TQDMProgressBar)
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy

from lipsync.checkpoint import decode_model_card, read_checkpoint
from lipsync.data import LatentDataModule
from lipsync.errors import UserError

COSINE_FLOOR = 0.1  # the cosine schedule ends at this fraction of --lr


class ZeroStage2Strategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed ZeRO-2, made cheaper on the host (where a training step's idle GPU time comes from):
    - DeepSpeed's throughput timer off: it calls torch.cuda.synchronize() at every forward and every optimizer
      step (only to print samples/s, which the logs already give), and each synchronisation lets the GPU run dry
      while the host refills its queue;
    - the optimizer step's per-tensor gradient checks fused (`fuse_zero_gradient_checks`);
    - in bf16, the skip-this-step decision left on the GPU (`decide_overflow_on_device`);
    - with one process, no overlap of gradient reduction and backward: there is nothing to overlap, and ZeRO's
      overlap mode calls torch.cuda.synchronize() at every gradient bucket and at the end of each backward."""

    def __init__(self, **kw):
        super().__init__(stage=2, **kw)

    def _format_config(self):
        super()._format_config()
        self.config.setdefault("timers", {"throughput": {"enabled": False}})
        if self.world_size == 1:
            self.config["zero_optimization"]["overlap_comm"] = False

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        engine, zero_optimizer = super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        fuse_zero_gradient_checks(zero_optimizer)
        decide_overflow_on_device(zero_optimizer)
        return engine, zero_optimizer


def _plain_zero_optimizer(zero_optimizer) -> bool:
    """DeepSpeed's ZeRO-1/2 optimizer in the plain single-model case this project runs (no CPU offload, model
    parallelism or MoE): the only case whose step this module's replacements are written for."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    return (isinstance(zero_optimizer, DeepSpeedZeroOptimizer) and not zero_optimizer.cpu_offload
            and zero_optimizer.mpu is None and not zero_optimizer.has_moe_layers)


def fuse_zero_gradient_checks(zero_optimizer) -> bool:
    """Make DeepSpeed ZeRO-1/2's optimizer step launch a few GPU kernels instead of ~16 per gradient tensor.

    Its step checks every gradient tensor for inf / NaN (`has_inf_or_nan`: ~6 kernels each), then computes the
    clipping norm tensor by tensor (an fp64 copy and a norm each): ~5,200 launches per step for the 80M UNet's
    326 tensors, ~90 ms of host time during which the GPU idles (BENCHMARKS.md 1f). Both become multi-tensor
    `torch._foreach_norm` calls accumulating in DeepSpeed's norm dtype: the same norm, and the same overflow
    verdict (a tensor holding inf / NaN has an inf / NaN norm; in fp64 no finite bf16 / fp32 gradient reaches
    inf), so a step with inf / NaN gradients is skipped exactly as before. DeepSpeed's own step logic is kept;
    only these two per-tensor helpers of the optimizer instance are replaced, and only in the plain
    single-model case this project runs (no CPU offload, model parallelism or MoE). Returns whether it applied."""
    from deepspeed.runtime.zero import stage_1_and_2 as zero

    if not _plain_zero_optimizer(zero_optimizer):
        return False
    norm_dtype = zero.get_norm_dtype() if hasattr(zero, "get_norm_dtype") else torch.float64  # (0.17-0.18: fp64)
    own_norm = zero_optimizer.get_grad_norm_direct

    def norms(grads: list) -> torch.Tensor:
        """[G] L2 norm of each gradient tensor, in one multi-tensor launch (a few on long lists)."""
        return torch.stack(torch._foreach_norm(grads, 2, dtype=norm_dtype))

    def grad_norm(gradients, params, norm_type=2):
        if float(norm_type) != 2.0:
            return own_norm(gradients, params, norm_type)
        grads = [g for g in gradients if not getattr(g, "_zero_padding", False)]
        if grads:  # squared sum of the per-tensor norms, as DeepSpeed's loop does
            total = norms(grads).square().sum().float()
        else:
            total = torch.zeros((), dtype=torch.float32, device=zero_optimizer.device)
        zero.dist.all_reduce(total, op=zero.dist.ReduceOp.SUM, group=zero_optimizer.dp_process_group)
        total = total.sqrt()
        # inf / NaN -> -1, DeepSpeed's "overflow" sentinel (its own helper makes the -1 with torch.tensor(): on a
        # GPU a blocking copy from the host, which waits for all the queued work)
        total.masked_fill_(~total.isfinite(), -1.0)
        return total

    def any_inf_or_nan():
        """[1] bool on the device, as DeepSpeed's loop returns it (has_overflow then all-reduces it)."""
        grads = [g for i in range(len(zero_optimizer.bit16_groups))
                 for g in (zero_optimizer.averaged_gradients[i] or ()) if g is not None]
        if not grads:
            return torch.zeros(1, dtype=torch.bool, device=zero_optimizer.device)
        return norms(grads).sum().isfinite().logical_not().reshape(1)

    zero_optimizer.get_grad_norm_direct = grad_norm
    zero_optimizer.has_overflow_partitioned_grads_serial = any_inf_or_nan
    return True


def decide_overflow_on_device(zero_optimizer) -> bool:
    """Keep DeepSpeed ZeRO-1/2's bf16 optimizer step free of host reads of GPU values.

    DeepSpeed's step reads its overflow verdict (`.item()`) and tests the global gradient norm (`bool(tensor)`)
    on the host to decide whether to skip the step. Each read waits for the whole backward to finish; then the
    GPU idles while the host launches the update: 11-19 ms of a 435 ms step (BENCHMARKS.md 1h). Here the verdict
    stays a device tensor: an inf / NaN global norm (DeepSpeed's -1 sentinel included) becomes the fused torch
    optimizer's `found_inf` (the contract of PyTorch's GradScaler: with found_inf = 1 the fused kernel leaves
    weights, moments and step counts untouched), so a step with inf / NaN gradients still changes nothing. What
    differs: DeepSpeed no longer learns that a step was skipped (its skipped_steps stays 0, and the learning-rate
    schedule advances on that step). Only in bf16 with a static loss scale of 1 (fp16's dynamic loss scaling
    needs the verdict on the host), with the gradient norm computed, and for a fused optimizer that takes
    found_inf (`configure_adamw` makes AdamW fused under DeepSpeed). Returns whether it applied."""
    inner = getattr(zero_optimizer, "optimizer", None)
    if (not _plain_zero_optimizer(zero_optimizer)
            or zero_optimizer.dtype != torch.bfloat16 or zero_optimizer.dynamic_loss_scale
            or zero_optimizer.loss_scale != 1.0 or not zero_optimizer.compute_grad_norm
            or zero_optimizer.torch_autocast_gradscaler is not None
            or not getattr(inner, "_step_supports_amp_scaling", False)):
        return False
    zero_optimizer.check_grad_overflow = False  # step() no longer reads the verdict nor tests the norm on the host
    clip = float(zero_optimizer.clip_grad)

    def unscale_and_clip_grads(grad_groups_flat, total_norm):
        """[] total norm -> found_inf for the optimizer; gradients divided by max(1, norm / clip), on the device."""
        if not all(group.get("fused") for group in inner.param_groups):
            _make_fused(inner)  # resumed from a checkpoint whose AdamW was not fused
        invalid = ~torch.isfinite(total_norm) | (total_norm < 0)
        inner.found_inf = invalid.float()  # read by the fused kernel: 1 -> this step changes nothing
        if clip > 0.0:
            factor = torch.clamp((total_norm + 1e-6) / clip, min=1.0)  # DeepSpeed's clip factor (loss scale 1)
            scale = torch.where(invalid, torch.ones_like(factor), factor).reciprocal()
            for grad in grad_groups_flat:
                grad.mul_(scale)

    zero_optimizer.unscale_and_clip_grads = unscale_and_clip_grads
    return True


def _make_fused(optimizer: torch.optim.Optimizer) -> None:
    """Switch a torch Adam / AdamW to its fused kernel (the same update rule), state included: the fused kernel
    wants each parameter's step count as a float32 tensor on the parameter's device. Resuming restores the
    checkpoint's param-group flags, and runs saved before AdamW was fused under DeepSpeed hold fused=False."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)


class CPUDeepSpeedStrategy(ZeroStage2Strategy):
    """ZeroStage2Strategy without Lightning's CUDA-only guard: ZeRO on one CPU process (gloo), so CI runs the
    exact DeepSpeed code path (sharded checkpoint folders, zero_to_fp32.py) that GPU training uses."""

    def __init__(self, **kw):
        kw.setdefault("process_group_backend", "gloo")
        kw.setdefault("parallel_devices", [torch.device("cpu", 0)])  # an index is required by DeepSpeed
        super().__init__(**kw)

    def setup_environment(self):
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDAAccelerator check


def hold_frozen(module: torch.nn.Module, name: str, value) -> None:
    """Attach a frozen network (or None) to `module` WITHOUT registering it as a child (see module docstring)."""
    object.__setattr__(module, name, value)


# ----------------------------------------------------------------------------------------------- options

def _int_or_float(text: str):
    """--val_check_interval: an int counts training batches, a float is a fraction of an epoch."""
    return float(text) if "." in text else int(text)


def _devices(text: str):
    return text if text == "auto" else int(text)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_root", required=True, help="folder holding the preprocessed video folders")
    g.add_argument("--dataset_name", required=True, help="reads filelists_<name>/{train,val}.txt")
    g.add_argument("--T", type=int, default=5, help="video frames per window")
    g.add_argument("--train_samples_per_epoch", type=int, default=100_000)
    g.add_argument("--val_samples", type=int, default=1024, help="fixed, seeded validation windows")
    g.add_argument("--overfit", action="store_true",
                   help="validate on (a fixed sample of) the training videos: can it fit?")
    g.add_argument("--num_workers", type=int, default=4)


def add_trainer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=8, help="per device")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW decay (never on norms and biases)")
    g.add_argument("--warmup_steps", type=int, default=1000, help="linear warm-up, in optimizer steps")
    g.add_argument("--lr_schedule", choices=["cosine", "constant"], default="cosine",
                   help=f"after warm-up: cosine down to {COSINE_FLOOR} x lr at the last step, or constant")
    g.add_argument("--max_steps", type=int, default=200_000, help="optimizer steps (-1: use --max_epochs)")
    g.add_argument("--max_epochs", type=int, default=-1, help="-1: unlimited")
    g.add_argument("--val_check_interval", type=_int_or_float, default=1000,
                   help="int: validate every N training batches; float: fraction of an epoch")
    g.add_argument("--accumulate_grad_batches", type=int, default=1)
    g.add_argument("--gradient_clip_val", type=float, default=1.0)
    g.add_argument("--devices", type=_devices, default="auto")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--precision", choices=["32-true", "bf16-mixed", "bf16-true", "16-mixed"], default=None,
                   help="default: bf16-mixed on CUDA, 32-true on CPU")
    g.add_argument("--strategy", choices=["deepspeed_stage_2", "ddp", "auto"], default="deepspeed_stage_2",
                   help="deepspeed_stage_2 runs ZeRO-2 on GPUs and on a CPU-only machine (one process); ddp on "
                        "one device runs Lightning's single-device strategy; default: %(default)s")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--output_dir", default="experiments", help="run folders go to <output_dir>/<experiment>/")
    g.add_argument("--ckpt", default=None, help="resume: a .ckpt file or a DeepSpeed checkpoint folder")
    g.add_argument("--save_top_k", type=int, default=3)
    g.add_argument("--log_every_n_steps", type=int, default=50)
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")


@dataclass
class OptimConfig:
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str  # "cosine" | "constant"

    @classmethod
    def from_args(cls, args) -> "OptimConfig":
        return cls(args.lr, args.weight_decay, args.warmup_steps, args.lr_schedule)


def lr_factor(step: int, config: OptimConfig, total_steps: float) -> float:
    """LR multiplier at optimizer step `step`: linear warm-up to 1, then cosine to COSINE_FLOOR or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1.0, total_steps - config.warmup_steps))
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def _fused_adamw_pays(module: torch.nn.Module, params) -> bool:
    """Fused AdamW (one kernel over all parameters) where it pays and Lightning takes it:
    - under DeepSpeed (any device): ZeRO then decides on the GPU whether a step is skipped
      (`decide_overflow_on_device` hands the verdict to the fused kernel), and clips the gradients itself;
    - on the CPU in full precision, whose per-tensor AdamW is ~4x slower (the demo's 14.6M-parameter SyncNet: 36
      vs 8.5 ms of a ~110 ms step).
    Not with Lightning's own mixed-precision plugin, which refuses to clip the gradients of a fused optimizer."""
    trainer = getattr(module, "_trainer", None)
    if trainer is not None and isinstance(trainer.strategy, DeepSpeedStrategy):
        return True
    precision = str(trainer.precision) if trainer is not None else "32-true"
    return precision in ("32-true", "64-true") and all(p.device.type == "cpu" for p in params)


def configure_adamw(module: torch.nn.Module, config: OptimConfig, total_steps: float) -> dict:
    """AdamW over the trainable parameters of `module` (weight decay only on >= 2-D weights, never on norms and
    biases) with a per-step LambdaLR; returns what LightningModule.configure_optimizers returns."""
    if config.schedule == "cosine" and not math.isfinite(total_steps):
        raise UserError("--lr_schedule cosine needs a finite run: set --max_steps or --max_epochs "
                        "(or use --lr_schedule constant)")
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=_fused_adamw_pays(module, params))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# -------------------------------------------------------------------------------------------- data + card

def start_run(args, task: str):
    """Resolve hardware defaults, seed everything, and build the data module of `task` ("syncnet" | "generator")."""
    _resolve_args(args)
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
    Lightning's cast runs on the host's main thread before the batch moves to the GPU: at batch 16 of 96x96
    latents the GPU sat idle ~38 ms per step waiting for it (BENCHMARKS.md 1g). float32 otherwise (autocast
    casts on the GPU). The values are the same either way: the stored latents and features are fp16."""
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


# ------------------------------------------------------------------------------------------ trainer + run

def _resolve_args(args) -> None:
    """Fill hardware-dependent defaults in place, so options.json records what actually ran."""
    cuda = torch.cuda.is_available()
    if args.precision is None:
        args.precision = "bf16-mixed" if cuda else "32-true"
    if args.strategy == "ddp" and _one_process(args):
        # Lightning's single-device strategy: DDP with one process would only copy every gradient into its
        # all-reduce buckets (the demo's SyncNet on a 2-core CPU: 89 -> 77 ms per step)
        args.strategy = "auto"
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
    if args.devices not in ("auto", 1) or args.num_nodes != 1:
        raise UserError("DeepSpeed on a CPU-only machine runs one process: use --devices 1 --num_nodes 1")
    return CPUDeepSpeedStrategy()


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


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose last.ckpt always holds the final state: Lightning 2.6 skips its end-of-fit save of
    last.ckpt once one was written during the fit, so a run ending between validations kept a stale one."""

    def on_train_end(self, trainer, pl_module):
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class _LossesShownWithoutWaiting:
    """Progress-bar mixin: shows the training module's latest losses (`losses_to_show`, a dict of detached
    tensors that each training step sets) without making the host wait for the GPU.

    Lightning turns every progress-bar value into a Python number at every step (`.item()`). On a GPU that waits
    for all the work queued so far, and the GPU then idles while the host fetches and launches the next step.
    Here the losses of every `log_every_n_steps`-th step start an asynchronous copy to (pinned) host memory,
    shown once the copy has landed, a step or two later; nothing ever waits for it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown: dict[str, float] = {}
        self._in_flight = None  # (host copies, CUDA event recorded after them)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._in_flight is not None and self._in_flight[1].query():
            self._shown = {name: value.item() for name, value in self._in_flight[0].items()}  # host memory
            self._in_flight = None
        losses = getattr(pl_module, "losses_to_show", None)
        if losses and self._in_flight is None and (trainer.global_step - 1) % max(1, trainer.log_every_n_steps) == 0:
            if any(value.is_cuda for value in losses.values()):
                copies = {name: value.to("cpu", non_blocking=True) for name, value in losses.items()}
                event = torch.cuda.Event()
                event.record()
                self._in_flight = (copies, event)
            else:  # nothing to wait for
                self._shown = {name: value.item() for name, value in losses.items()}
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module):
        return {**super().get_metrics(trainer, pl_module), **self._shown}


class RichLossProgressBar(_LossesShownWithoutWaiting, RichProgressBar):
    """Lightning's rich progress bar (its default where `rich` is installed), losses shown without waiting."""


class TQDMLossProgressBar(_LossesShownWithoutWaiting, TQDMProgressBar):
    """Lightning's tqdm progress bar, losses shown without waiting."""


def progress_bar() -> Callback:
    """The progress bar Lightning would pick (rich where installed), showing the losses without waiting."""
    return RichLossProgressBar() if importlib.util.find_spec("rich") else TQDMLossProgressBar()


def make_trainer(args, experiment_name: str, monitor: str, filename: str, mode: str = "min") -> pl.Trainer:
    """Trainer writing to <output_dir>/<experiment_name>/version_K/, keeping the top-k checkpoints by `monitor`
    (`filename` is a ModelCheckpoint pattern, e.g. "syncnet-u-{step}-{val/loss:.3f}") and last.ckpt."""
    loggers = [TensorBoardLogger(save_dir=args.output_dir, name=experiment_name, default_hp_metric=False)]
    if args.wandb:
        from pytorch_lightning.loggers import WandbLogger
        loggers.append(WandbLogger(project=experiment_name, save_dir=args.output_dir))
    checkpoints = RunCheckpoint(monitor=monitor, mode=mode, save_top_k=args.save_top_k, save_last=True,
                                filename=filename, auto_insert_metric_name=False)
    step_interval = isinstance(args.val_check_interval, int)
    return pl.Trainer(
        accelerator="auto", devices=args.devices, num_nodes=args.num_nodes, strategy=_strategy(args),
        precision=args.precision, max_steps=args.max_steps, max_epochs=args.max_epochs,
        val_check_interval=args.val_check_interval,
        check_val_every_n_epoch=None if step_interval else 1,  # int intervals count batches across epochs
        accumulate_grad_batches=args.accumulate_grad_batches, gradient_clip_val=args.gradient_clip_val,
        log_every_n_steps=args.log_every_n_steps, logger=loggers,
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), RunOptions(vars(args)), progress_bar()])


def check_resume(path, module: pl.LightningModule) -> None:
    """--ckpt must exist and hold the same model (same model card) as the one this run builds."""
    path = Path(path)
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
