"""The generator: a diffusers UNet2DConditionModel used as a one-pass image-to-image network (no diffusion).

Input per frame: [masked-face latent, reference-face latent] stacked on channels -> [B, 2C, h, w]; the
timestep is always 0, so the time embedding acts as a learned bias; speech enters through cross-attention on
that frame's audio window [B, 10, D]. Output: the full face latent [B, C, h, w].
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from lipsync.errors import UserError


def build_unet(config: dict) -> UNet2DConditionModel:
    """A randomly initialised UNet from a diffusers config dict (weights are loaded by lipsync.checkpoint)."""
    return UNet2DConditionModel.from_config(config)


def check_unet_config(config: dict, audio_hidden_size: int, latent_channels: int) -> None:
    """Fail early, in one line, where the reference failed deep inside cross-attention (its §9.6)."""
    if config.get("cross_attention_dim") != audio_hidden_size:
        raise UserError(f"UNet cross_attention_dim {config.get('cross_attention_dim')} != audio encoder hidden "
                        f"size {audio_hidden_size}: pick a UNet config or audio encoder that match")
    if config.get("in_channels") != 2 * latent_channels or config.get("out_channels") != latent_channels:
        raise UserError(f"UNet in/out channels {config.get('in_channels')}/{config.get('out_channels')} do not "
                        f"fit {latent_channels}-channel latents (need {2 * latent_channels}/{latent_channels})")


def generate(unet: UNet2DConditionModel, masked: torch.Tensor, reference: torch.Tensor,
             audio: torch.Tensor) -> torch.Tensor:
    """masked, reference [B, C, h, w] (scaled latents), audio [B, 10, D] -> generated latents [B, C, h, w]."""
    dtype = unet.conv_in.weight.dtype  # under DeepSpeed bf16 the parameters themselves are bf16
    x = torch.cat([masked, reference], dim=1).to(dtype)
    timestep = torch.zeros(x.shape[0], device=x.device, dtype=torch.long)
    return unet(x, timestep, encoder_hidden_states=audio.to(dtype)).sample


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
