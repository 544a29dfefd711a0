"""LightningModule of the generator: trainable UNet, frozen SyncNet expert, latent L1 + gated sync loss.

Frames are independent: a window [B, T, ...] is folded to B*T frames for the UNet and unfolded for the expert.
The expert and the sample-image codec are held outside the registered children (`hold_frozen`):
never trained, never stored, never switched to train mode; the expert runs in fp32 with autocast off.

Sync gating: `sync_on` is a registered bool buffer, so checkpoints (and resumed runs) keep it. It switches on
at `sync_start_step`, or else at the first validation whose val/sync_loss < `sync_start_val_sync`, and
never off. Steps read a host copy of it (`sync_active`): reading the GPU buffer every step would make the
host wait for the GPU's queue to drain. Checkpoints are ranked by val/recon_loss, whose meaning does not
change when it switches.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from lipsync.checkpoint import encode_model_card
from lipsync.errors import UserError
from lipsync.latent_codec import LatentCodec, model_to_uint8
from lipsync.training.optim import configure_adamw
from lipsync.training.options import OptimConfig
from lipsync.training.run import run_dir
from models.syncnet import SyncNet, sync_loss
from models.unet import generate


def weighted_l1(generated: torch.Tensor, target: torch.Tensor, lower_half_weight: float) -> torch.Tensor:
    """Mean |generated - target| over [..., h, w] latents, rows h//2: (mouth) weighted `lower_half_weight`
    against 1 for the upper rows; a weighted mean, so 1.0 gives the plain L1."""
    h = target.shape[-2]
    rows = torch.ones(h, 1, device=target.device)
    rows[h // 2:] = lower_half_weight
    return ((generated - target).abs() * rows).mean() / rows.mean()


def hold_frozen(module: torch.nn.Module, name: str, value) -> None:
    """Attach a frozen network (or None) to `module` WITHOUT registering it as a child: ZeRO never shards or
    stores it, Lightning's `.train()` never reaches it, and checkpoints hold only trainable weights, buffers and
    the `model_card`."""
    object.__setattr__(module, name, value)


class GeneratorModule(pl.LightningModule):
    def __init__(self, unet: torch.nn.Module, expert: SyncNet, card: dict, optim: OptimConfig, *,
                 sync_weight: float, sync_start_step: int | None, sync_start_val_sync: float,
                 lower_half_weight: float, codec_id: str | None):
        super().__init__()
        self.unet = unet
        hold_frozen(self, "expert", expert.eval().requires_grad_(False))
        hold_frozen(self, "codec", None)  # loaded at the first validation, if codec_id loads
        self.register_buffer("model_card", encode_model_card(card))
        self.register_buffer("sync_on", torch.tensor(False))
        self._sync_on_host: bool | None = None  # sync_on read once; None again after load_state_dict
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, "_sync_on_host", None))
        self.optim = optim
        self.sync_weight = sync_weight
        self.sync_start_step = sync_start_step
        self.sync_start_val_sync = sync_start_val_sync
        self.lower_half_weight = lower_half_weight
        self.codec_id = codec_id
        self.losses_to_show: dict[str, torch.Tensor] = {}  # the last training step's, for the progress bar

    def on_fit_start(self):
        self.expert.to(self.device)

    def on_train_batch_start(self, batch, batch_idx):
        if self.sync_start_step is not None and self.global_step >= self.sync_start_step and not self.sync_active():
            self._switch_sync_on(f"step {self.global_step} >= --sync_start_step {self.sync_start_step}")

    def on_validation_epoch_end(self):
        val_sync = self.trainer.callback_metrics.get("val/sync_loss")  # averaged over all ranks
        if (self.sync_start_step is None and not self.sync_active() and not self.trainer.sanity_checking
                and val_sync is not None and val_sync < self.sync_start_val_sync):
            self._switch_sync_on(f"val/sync_loss {val_sync:.4f} < --sync_start_val_sync {self.sync_start_val_sync}")

    def sync_active(self) -> bool:
        if self._sync_on_host is None:
            self._sync_on_host = bool(self.sync_on)
        return self._sync_on_host

    def _switch_sync_on(self, reason: str):
        self.sync_on.fill_(True)
        self._sync_on_host = True
        rank_zero_info(f"sync loss on (weight {self.sync_weight}): {reason}")

    def expert_sync_loss(self, generated: torch.Tensor, sync_audio: torch.Tensor) -> torch.Tensor:
        """generated [B, T, C, h, w], sync_audio [B, 2T, D] -> BCE(P(in sync), 1), fp32, expert in eval mode."""
        if self.expert.training:
            raise RuntimeError("the frozen SyncNet expert must stay in eval mode (its BatchNorm stats are fixed)")
        with torch.autocast(self.device.type, enabled=False):
            p = self.expert.sync_probability(generated.float(), sync_audio.float())  # [B]
        return sync_loss(p, torch.ones_like(p))

    def losses(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch's (recon, sync, total) losses [] and generated latents [B, T, C, h, w] (fp32); no logging."""
        # masked, reference, gt [B, T, C, h, w]; audio [B, T, 10, D]; sync_audio [B, 2T, D]
        gt = batch["gt"].float()
        generated = generate(self.unet, batch["masked"].flatten(0, 1), batch["reference"].flatten(0, 1),
                             batch["audio"].flatten(0, 1))  # [B*T, C, h, w], in the UNet's dtype
        generated = generated.float().view_as(gt)  # [B, T, C, h, w]
        recon = weighted_l1(generated, gt, self.lower_half_weight)
        sync = self.expert_sync_loss(generated, batch["sync_audio"])
        weight = self.sync_weight if self.sync_active() else 0.0
        total = recon + weight * sync if weight else recon  # no backward through the expert while off
        return recon, sync, total, generated

    def _step(self, batch, stage: str):
        recon, sync, total, generated = self.losses(batch)
        batch_size = generated.shape[0]
        train = stage == "train"
        losses = {f"{stage}/recon_loss": recon, f"{stage}/sync_loss": sync, f"{stage}/total": total}
        # training losses reach the progress bar through losses_to_show (progress.progress_bar() never waits for
        # the GPU); Lightning's prog_bar=True would read them on the host at every step
        self.log_dict(losses, prog_bar=not train, on_step=train, on_epoch=not train, sync_dist=not train,
                      batch_size=batch_size)
        if train:
            self.losses_to_show = {name: value.detach() for name, value in losses.items()}
            # from the buffer, on the device: a Python float would be copied to the GPU (a synchronisation)
            self.log("train/sync_weight", self.sync_on * self.sync_weight, batch_size=batch_size)
        return total, generated

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        _, generated = self._step(batch, "val")
        if batch_idx == 0 and self.trainer.is_global_zero:  # the same fixed clip at every validation
            self.write_samples(batch["gt"][0], generated[0])

    @torch.no_grad()
    def write_samples(self, gt: torch.Tensor, generated: torch.Tensor) -> None:
        """gt, generated [T, C, h, w] -> run folder samples/step_XXXXXXX.png (row 1 gt, row 2 generated)."""
        codec = self._sample_codec()
        if codec is None:
            return
        with torch.autocast(self.device.type, enabled=False):
            images = model_to_uint8(codec.decode(torch.cat([gt, generated]).float()))  # [2T, H, W, 3]
        rows = images.reshape(2, -1, *images.shape[1:])  # [2, T, H, W, 3]
        grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)  # [2H, T*W, 3]
        folder = run_dir(self.trainer) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"step_{self.global_step:07d}.png"), grid[..., ::-1])  # cv2 wants BGR
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/samples", grid, self.global_step, dataformats="HWC")

    def _sample_codec(self) -> LatentCodec | None:
        if self.codec is None and self.codec_id:
            try:
                hold_frozen(self, "codec", LatentCodec.from_pretrained(self.codec_id, device=self.device))
            except UserError as err:
                rank_zero_warn(f"no sample images: {err}")
                self.codec_id = None  # do not retry at every validation
        return self.codec

    def configure_optimizers(self):
        return configure_adamw(self.unet, self.optim, lambda: self.trainer.estimated_stepping_batches,
                               self.trainer)
