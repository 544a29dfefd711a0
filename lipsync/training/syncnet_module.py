"""LightningModule of the latent SyncNet expert: the network, its BCE loss, AdamW, one step for train and val.

Training scores every face x audio pair of a batch (all_pairs_sync_loss; --no-batch_negatives: only the B
labelled pairs, Wav2Lip's recipe). Validation always scores the fixed labelled pairs (sync_loss, accuracy at cos
0.5), so val/loss and val/acc mean the same with either training loss.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from lipsync.checkpoint import encode_model_card
from lipsync.training.optim import configure_adamw
from lipsync.training.options import OptimConfig
from models.syncnet import SyncNet, SyncNetConfig, all_pairs_sync_loss, pair_probability, sync_correct, sync_loss


class SyncNetModule(pl.LightningModule):
    def __init__(self, config: SyncNetConfig, card: dict, optim: OptimConfig, batch_negatives: bool = True):
        """card: the model card (kind "syncnet", config, audio encoder, codec, sizes), stored in every checkpoint.
        batch_negatives: train on all B x B face x audio pairs of a batch (all_pairs_sync_loss)."""
        super().__init__()
        self.syncnet = SyncNet(config)
        self.register_buffer("model_card", encode_model_card(card))
        self.optim = optim
        self.batch_negatives = batch_negatives
        self.losses_to_show: dict[str, torch.Tensor] = {}  # the last training step's, for the progress bar

    def _step(self, batch, stage: str) -> torch.Tensor:
        # faces [B, T, C, h, w], audio [B, 2T, D], label [B] (1 = in sync)
        label = batch["label"].float()
        batch_size = label.shape[0]
        face, audio = self.syncnet(batch["faces"], batch["audio"])  # [B, E] each
        p = pair_probability(face, audio).float()  # [B] cosine in [0, 1], read as P(in sync)
        if stage == "train":
            loss = all_pairs_sync_loss(face, audio, label) if self.batch_negatives else sync_loss(p, label)
            self.log("train/loss", loss, batch_size=batch_size)
            self.losses_to_show = {"train/loss": loss.detach()}
            return loss
        loss = sync_loss(p, label)
        positive = label > 0.5
        self.log_dict({"val/loss": loss, "val/acc": sync_correct(p, label).float().mean()},
                      prog_bar=True, sync_dist=True, batch_size=batch_size)
        # mean cosine of in-sync and off-sync pairs, weighted by how many of each the batch holds
        for name, rows in (("val/pos_cos", positive), ("val/neg_cos", ~positive)):
            if rows.any():
                self.log(name, p[rows].mean(), sync_dist=True, batch_size=int(rows.sum()))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return configure_adamw(self.syncnet, self.optim, lambda: self.trainer.estimated_stepping_batches,
                               self.trainer)
