"""The generator: a diffusers UNet2DConditionModel used as a one-pass image-to-image network (no diffusion).

Input per frame: [masked-face latent, reference-face latent] stacked on channels -> [B, 2C, h, w]; the
timestep is always 0, so the time embedding acts as a learned bias; speech enters through cross-attention on
that frame's audio window [B, 10, D], each feature frame plus a fixed code of its place in the window
(`audio_positions`). Output: the full face latent [B, C, h, w].
"""
from __future__ import annotations

import math

import torch
from diffusers import UNet2DConditionModel


def build_unet(config: dict) -> UNet2DConditionModel:
    """A randomly initialised UNet from a diffusers config dict (weights are loaded by lipsync.checkpoint)."""
    return UNet2DConditionModel.from_config(config)


# What generator model cards record: checkpoints trained before the codes existed are refused by the loader.
AUDIO_POSITIONS = "sinusoidal-100"
AUDIO_POSITION_BASE = 100.0  # wavelengths 2 pi ... 2 pi x 100 positions: the window is 10 feature frames long


def audio_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Fixed codes [length, dim] of the places in an audio window, added to its feature frames (the
    Transformer's sinusoids: pairs sin(p w_k), cos(p w_k), w_k = AUDIO_POSITION_BASE^(-2k / dim)).

    Cross-attention treats its tokens as an unordered set, so without them the UNet cannot tell the frame's own
    feature frames from those 100 ms away and only sees a blur of the window (what the codes bought on the demo:
    docs/log.md). Built from torch ops on `device` (no host copy), so it runs inside a captured CUDA graph."""
    place = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    pair = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    rate = torch.exp(pair * (-math.log(AUDIO_POSITION_BASE) / dim))
    angles = place * rate  # [length, ceil(dim / 2)]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)[:, :dim]


def generate(unet: UNet2DConditionModel, masked: torch.Tensor, reference: torch.Tensor,
             audio: torch.Tensor) -> torch.Tensor:
    """masked, reference [B, C, h, w] (scaled latents), audio [B, 10, D] -> generated latents [B, C, h, w]."""
    dtype = unet.conv_in.weight.dtype  # under DeepSpeed bf16 the parameters themselves are bf16
    x = torch.cat([masked, reference], dim=1).to(dtype)
    timestep = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)
    audio = audio.float() + audio_positions(audio.shape[-2], audio.shape[-1], audio.device)
    return unet(x, timestep, encoder_hidden_states=audio.to(dtype)).sample


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
