"""Prepare generator UNets.

    python unet_loader.py --extract [--pipe stable-diffusion-v1-5/stable-diffusion-v1-5] [--ckpt stable-diffusion-v1-5]
    python unet_loader.py --load --ckpt customized_unet

--extract takes the pretrained SD-1.5 UNet (hub id or local pipeline folder, its `unet/` subfolder) and saves it
ready for `unet_wav2lip_lightning.py --unet_ckpt stable-diffusion-v1-5/`: conv_in widened from 4 to 8 input
channels, the pretrained kernel kept for the masked-face channels and the reference channels initialised to
zero, so before training the widened model's output on [masked, anything] equals the pretrained model's on
[masked]. Every other pretrained weight is kept.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from lipsync.checkpoint import load_generator
from lipsync.errors import UserError, cli_entry
from models.unet import count_parameters

DEFAULT_PIPE = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # official mirror of runwayml/stable-diffusion-v1-5


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


def extract(pipe: str, out: Path, in_channels: int, dtype: torch.dtype) -> UNet2DConditionModel:
    local = Path(pipe)
    subfolder = "unet" if not local.is_dir() or (local / "unet").is_dir() else None
    try:
        unet = UNet2DConditionModel.from_pretrained(pipe, subfolder=subfolder, torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a UNet from {pipe!r}: {str(err).splitlines()[0]}") from None
    widened = widen_conv_in(unet, in_channels)
    tmp = out.with_name(f".{out.name}.tmp")
    widened.save_pretrained(tmp, safe_serialization=True)
    if out.exists():
        import shutil
        shutil.rmtree(out)
    os.replace(tmp, out)
    return widened


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipe", default=DEFAULT_PIPE, help="SD-1.5 pipeline: hub id or local folder")
    p.add_argument("--ckpt", default="stable-diffusion-v1-5", help="output folder (--extract) or folder to --load")
    p.add_argument("--extract", action="store_true", help="save the widened pretrained UNet into --ckpt")
    p.add_argument("--load", action="store_true", help="build the UNet of --ckpt and print its parameter count")
    p.add_argument("--in_channels", type=int, default=8, help="masked face (4) + reference face (4)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float16",
                   help="dtype the weights are saved in (training keeps fp32 master weights anyway)")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if not (args.extract or args.load):
        raise UserError("nothing to do: pass --extract and/or --load")
    if args.extract:
        unet = extract(args.pipe, Path(args.ckpt), args.in_channels, getattr(torch, args.dtype))
        print(f"saved {args.ckpt}/ ({count_parameters(unet):,} parameters, in_channels {args.in_channels})")
    if args.load:
        loaded = load_generator(args.ckpt)
        has_weights = loaded.kind != "diffusers" or any(Path(args.ckpt).glob("diffusion_pytorch_model.*"))
        print(f"{args.ckpt}: {count_parameters(loaded.unet):,} parameters "
              f"({'weights' if has_weights else 'config only, random init'})")


if __name__ == "__main__":
    main()
