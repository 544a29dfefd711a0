"""Adapter: diffusers' VAE decoder upsamplers (`diffusers.models.upsampling.Upsample2D`: nearest 2x, then a 3x3
conv) replaced by models.subpixel.SubpixelUpsample, the same images with fewer FLOPs (BENCHMARKS.md, inference).
The ONE place that reads Upsample2D's attributes: where a diffusers version changes them, nothing is replaced
and a warning says so (the decoder then runs diffusers' own upsampler: same images, slower)."""
from __future__ import annotations

import warnings

import torch

from models.subpixel import SubpixelUpsample

_UPSAMPLE2D_ATTRIBUTES = ("use_conv", "interpolate", "norm", "use_conv_transpose", "conv")


def use_subpixel_upsampling(decoder: torch.nn.Module) -> int:
    """Replace every nearest-2x + 3x3-conv Upsample2D of a diffusers decoder by SubpixelUpsample; returns how
    many were replaced (3 in the SD VAE)."""
    try:
        from diffusers.models.upsampling import Upsample2D
    except ImportError:
        warnings.warn("diffusers has no diffusers.models.upsampling.Upsample2D: the VAE decoder keeps its own "
                      "upsamplers (lipsync/codec_upsample.py)")
        return 0
    replaced = 0
    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            conv = getattr(child, "conv", None)
            if not isinstance(child, Upsample2D):
                continue
            if not all(hasattr(child, name) for name in _UPSAMPLE2D_ATTRIBUTES):
                warnings.warn("diffusers' Upsample2D changed (lipsync/codec_upsample.py expects "
                              f"{', '.join(_UPSAMPLE2D_ATTRIBUTES)}): the VAE decoder keeps its own upsamplers")
                return replaced
            if (child.use_conv and child.interpolate and child.norm is None
                    and not child.use_conv_transpose and isinstance(conv, torch.nn.Conv2d)
                    and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
                    and conv.dilation == (1, 1) and conv.groups == 1):
                setattr(module, name, SubpixelUpsample(conv).to(conv.weight.device, conv.weight.dtype))
                replaced += 1
    return replaced
