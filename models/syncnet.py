"""Latent SyncNet expert: does this window of face latents move in time with this window of speech?

Face encoder over T stacked latents [B, T*C, h, w] (frame-major), audio encoder over the 2T Wav2Vec2 frames of
the same window [B, 2T, D]; both end in ReLU and are L2-normalised, so cos(face, audio) is in [0, 1] and is
read as the probability of being in sync (BCE loss, Wav2Lip's recipe). The spatial size is free: strides
halve it and a global average pool ends the face encoder, so 96x96 (768 px crops) and 32x32 (256 px) both work.

Variants (same depth): "u" about 14.8M parameters at T=5, D=768; "xl" wider in the middle stages, 21.9M; "s" half
as wide as "u", 5.3M, for small latents (the demo's 8x8, where "u" trained slower and no better: BENCHMARKS.md, CPU).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (width, residual blocks after the stride-2 conv) per stage
FACE_STAGES = {
    "u": [(128, 2), (128, 3), (256, 2), (512, 2), (512, 0)],
    "xl": [(128, 2), (256, 3), (512, 2), (512, 2), (512, 0)],
    "s": [(64, 2), (64, 3), (128, 2), (256, 2), (256, 0)],
}


@dataclass
class SyncNetConfig:
    variant: str = "u"  # "u", "xl" or "s"
    T: int = 5  # video frames per window
    latent_channels: int = 4
    audio_dim: int = 768  # audio encoder hidden size
    audio_frames: int = 10  # feature frames per window (2T at 25 fps)
    face_region: str = "lower"  # "lower": rows h//2: of each latent (Wav2Lip); "full": whole face
    embed_dim: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class ConvBlock(nn.Module):
    """conv -> BatchNorm -> ReLU, with the input added before the ReLU when residual."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, residual=False, dims=2):
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.conv = conv(cin, cout, kernel, stride, padding)
        self.norm = norm(cout)
        self.residual = residual

    def forward(self, x):
        y = self.norm(conv_over_live_taps(self.conv, x))
        return F.relu(y + x if self.residual else y)


def conv_over_live_taps(conv: nn.Conv1d | nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), computed with only the kernel taps that meet data. Exact (up to summation order).

    On an axis of length 1 with "same" padding (odd kernel k, padding k // 2) only the middle tap meets data; the
    others meet zero padding. Where the kernel then covers the whole input with no padding, the conv is a matrix
    product over the flattened input. The expert's deep layers reach 1x1 on small latents (8x8 in the demo:
    lower half 4x8 -> 2x4 -> 1x2 -> 1x1), and the window conv of the audio encoder covers its whole input; there
    the full kernel's CPU backward costs several times its forward (BENCHMARKS.md, CPU)."""
    weight, padding = conv.weight, list(conv.padding)
    if (conv.groups != 1 or any(d != 1 for d in conv.dilation) or isinstance(padding[0], str)
            or conv.padding_mode != "zeros" or x.ndim != weight.ndim):
        return conv(x)
    size = x.shape[2:]
    for axis, (n, k, p) in enumerate(zip(size, conv.kernel_size, padding)):
        if n == 1 and k % 2 == 1 and p == k // 2 and k > 1:
            weight = weight.narrow(2 + axis, p, 1)
            padding[axis] = 0
    if all(p == 0 for p in padding) and tuple(weight.shape[2:]) == tuple(size):  # one output position
        y = F.linear(x.flatten(1), weight.flatten(1), conv.bias)
        return y.view(*y.shape, *(1,) * len(size))
    if weight is conv.weight:
        return conv(x)
    conv_fn = F.conv2d if x.ndim == 4 else F.conv1d
    return conv_fn(x, weight, conv.bias, conv.stride, padding)


class SyncNet(nn.Module):
    def __init__(self, config: SyncNetConfig):
        super().__init__()
        if config.variant not in FACE_STAGES:
            raise ValueError(f"unknown SyncNet variant {config.variant!r} (use one of {sorted(FACE_STAGES)})")
        self.config = config
        width = FACE_STAGES[config.variant][0][0]
        layers = [ConvBlock(config.T * config.latent_channels, width, 7, 1, 3)]
        for i, (out, residual) in enumerate(FACE_STAGES[config.variant]):
            layers.append(ConvBlock(width, out, 5 if i == 0 else 3, 2, 2 if i == 0 else 1))
            layers += [ConvBlock(out, out, 3, 1, 1, residual=True) for _ in range(residual)]
            width = out
        layers += [ConvBlock(width, config.embed_dim, 3, 1, 1), nn.AdaptiveAvgPool2d(1),
                   ConvBlock(config.embed_dim, config.embed_dim, 1)]
        self.face_encoder = nn.Sequential(*layers)
        self.audio_encoder = nn.Sequential(
            ConvBlock(config.audio_dim, 256, 1, dims=1),
            ConvBlock(256, 256, config.audio_frames, dims=1),  # collapses the window's time axis to 1
            ConvBlock(256, config.embed_dim, 1, dims=1),
        )

    def face_input(self, faces: torch.Tensor) -> torch.Tensor:
        """faces [B, T, C, h, w] -> [B, T*C, h', w'] (frame-major), cropped to the configured region."""
        if self.config.face_region == "lower":
            faces = faces[..., faces.shape[-2] // 2:, :]
        return faces.flatten(1, 2)

    def forward(self, faces: torch.Tensor, audio: torch.Tensor):
        """faces [B, T, C, h, w], audio [B, 2T, D] -> (face_emb, audio_emb), each [B, E], unit norm, >= 0."""
        face = self.face_encoder(self.face_input(faces)).flatten(1)
        audio = self.audio_encoder(audio.transpose(1, 2)).flatten(1)
        return F.normalize(face, dim=1), F.normalize(audio, dim=1)

    def sync_probability(self, faces: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """[B] cosine similarity in [0, 1], read as P(in sync)."""
        return pair_probability(*self(faces, audio))


def pair_probability(face: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Embeddings face, audio [B, E] (SyncNet.forward) -> [B] cosine of each row's pair, read as P(in sync)."""
    return (face * audio).sum(1)


def sync_loss(probability: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE of the cosine 'probability' [B] against labels [B] (1 = in sync), in fp32.

    Written out rather than F.binary_cross_entropy, which refuses to run under autocast (bf16-mixed training).
    """
    p = probability.float().clamp(1e-6, 1 - 1e-6)
    y = label.float()
    return -(y * p.log() + (1 - y) * (1 - p).log()).mean()


def all_pairs_sync_loss(face: torch.Tensor, audio: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE over EVERY face x audio pair of the batch, in-sync and off-sync pairs weighted equally, in fp32.

    face, audio [B, E] (SyncNet.forward), label [B]. Row i's own pair (face i, audio i) is in sync iff label i;
    every other pair (face i, audio j != i) is off sync: audio of another window, mostly of another video. So a
    batch of B items gives ~B/2 positives and ~B^2 negatives instead of B/2 of each, for the same encoder work.
    (A pair of two distinct windows of one video that overlap, or are both silent, is labelled off sync though
    it is not: rare at dataset scale, and noise of the same kind the same-video negatives already carry.)
    """
    p = (face.float() @ audio.float().T).clamp(1e-6, 1 - 1e-6)  # [B faces, B audios] cosines
    positive = torch.diag(label.float() > 0.5)  # [B, B] bool
    bce = -torch.where(positive, p.log(), (1 - p).log())
    # mean over the in-sync pairs and mean over the off-sync pairs, averaged: the same 50/50 weighting as
    # sync_loss on balanced labels, so cos 0.5 stays the decision threshold
    # (as masked sums: selecting the rows, or asking whether any exist, would read the mask on the host, a wait
    # for the GPU at every step)
    means, present = [], []
    for rows in (positive.float(), (~positive).float()):
        count = rows.sum()
        means.append((bce * rows).sum() / count.clamp(min=1))
        present.append((count > 0).float())
    return (means[0] * present[0] + means[1] * present[1]) / (present[0] + present[1])


def sync_correct(probability: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """[B] bool: the window is classified right, in sync meaning P(in sync) = cosine > 0.5 (Wav2Lip's rule)."""
    return (probability > 0.5) == (label > 0.5)
