"""AdamW (no decay on norms and biases) with linear warm-up, then cosine decay or a constant rate."""
from __future__ import annotations

import functools
import math
from typing import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy

from lipsync.errors import UserError
from lipsync.training.options import COSINE_FLOOR, OptimConfig

COSINE_NEEDS_FINITE_RUN = ("--lr_schedule cosine needs a finite run: set --max_steps or --max_epochs "
                           "(or use --lr_schedule constant)")


def lr_factor(step: int, config: OptimConfig, total_steps: Callable[[], float]) -> float:
    """LR multiplier at optimizer step `step`: linear warm-up to 1, then cosine to COSINE_FLOOR or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant" or step == config.warmup_steps:  # (the cosine starts at 1)
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / max(1.0, total_steps() - config.warmup_steps))
    return COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))


def fused_adamw_pays(trainer: pl.Trainer | None, params) -> bool:
    """Fused AdamW (one kernel over all parameters) where it pays and Lightning takes it:
    - under DeepSpeed (any device): ZeRO then decides on the GPU whether a step is skipped
      (`zero.decide_overflow_on_device` hands the verdict to the fused kernel), and clips the gradients itself;
    - on the CPU in full precision, whose per-tensor AdamW is several times slower (BENCHMARKS.md, demo).
    Not with Lightning's own mixed-precision plugin, which refuses to clip the gradients of a fused optimizer."""
    if trainer is not None and isinstance(trainer.strategy, DeepSpeedStrategy):
        return True
    precision = str(trainer.precision) if trainer is not None else "32-true"
    return precision in ("32-true", "64-true") and all(p.device.type == "cpu" for p in params)


def configure_adamw(network: torch.nn.Module, config: OptimConfig, total_steps: float | Callable[[], float],
                    trainer: pl.Trainer | None = None) -> dict:
    """AdamW over the trainable parameters of `network` (weight decay only on >= 2-D weights, never on norms and
    biases) with a per-step LambdaLR; returns what LightningModule.configure_optimizers returns. `trainer`: the
    one that will run it (decides whether the fused kernel is used).

    total_steps: the run's optimizer steps, or a function giving them, called at the first step past the warm-up.
    The training modules pass `trainer.estimated_stepping_batches` that way: read in configure_optimizers with
    --max_epochs set, it makes Lightning build the training loader before a resumed run's checkpoint is loaded,
    and Lightning then never restores the loader's position (the resumed epoch would start from its first batch)."""
    if not callable(total_steps):
        steps = total_steps
        if config.schedule == "cosine" and not math.isfinite(steps):
            raise UserError(COSINE_NEEDS_FINITE_RUN)
        total_steps = lambda: steps  # noqa: E731
    total_steps = functools.cache(total_steps)
    params = [p for p in network.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused_adamw_pays(trainer, params))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
