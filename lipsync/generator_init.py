"""Generator initialisations: the pretrained SD-1.5 UNet with conv_in widened from 4 to 8 input channels.

The pretrained kernel is kept for the masked-face channels and the reference channels start at zero, so before
training the widened model's output on [masked, anything] equals the pretrained model's on [masked]. Every other
pretrained weight is kept.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from lipsync.errors import UserError
from lipsync.files import atomic_path

SD15_PIPELINE = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # official mirror of runwayml/stable-diffusion-v1-5


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """A copy of `unet` taking `in_channels` inputs; the extra input channels start with zero weights."""
    old = unet.conv_in.weight.shape[1]
    if in_channels < old:
        raise UserError(f"cannot narrow conv_in from {old} to {in_channels} channels")
    config = dict(unet.config)
    config["in_channels"] = in_channels
    widened = UNet2DConditionModel.from_config(config).to(unet.dtype)
    state = unet.state_dict()
    weight = state["conv_in.weight"]
    extra = weight.new_zeros(weight.shape[0], in_channels - old, *weight.shape[2:])
    state["conv_in.weight"] = torch.cat([weight, extra], dim=1)
    widened.load_state_dict(state, strict=True)
    return widened


def extract_sd_unet(pipeline: str, out: Path, in_channels: int, dtype: torch.dtype) -> UNet2DConditionModel:
    """The UNet of an SD pipeline (hub id or local folder, its `unet/` subfolder), widened, saved to `out` (a
    diffusers folder, written under a temp name and renamed)."""
    local = Path(pipeline)
    subfolder = "unet" if not local.is_dir() or (local / "unet").is_dir() else None
    try:
        unet = UNet2DConditionModel.from_pretrained(pipeline, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a UNet from {pipeline!r}: {str(err).splitlines()[0]}") from None
    widened = widen_conv_in(unet, in_channels)
    with atomic_path(out) as tmp:
        widened.save_pretrained(tmp, safe_serialization=True)
    return widened
