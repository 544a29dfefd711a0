"""The training progress bar: Lightning's own (rich where installed, else tqdm), showing the training losses
without making the host wait for the GPU."""
from __future__ import annotations

import importlib.util

import torch
from pytorch_lightning.callbacks import Callback, RichProgressBar, TQDMProgressBar


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


