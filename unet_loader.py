"""Prepare generator UNets.

    python unet_loader.py --extract [--pipe stable-diffusion-v1-5/stable-diffusion-v1-5] [--ckpt stable-diffusion-v1-5]
    python unet_loader.py --load --ckpt customized_unet

--extract takes the pretrained SD-1.5 UNet (hub id or local pipeline folder, its `unet/` subfolder) and saves it
ready for `unet_wav2lip_lightning.py --unet_ckpt stable-diffusion-v1-5/`: conv_in widened from 4 to 8 input
channels, all pretrained weights kept (lipsync/generator_init.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lipsync.checkpoint import load_generator
from lipsync.errors import UserError, cli_entry
from lipsync.generator_init import SD15_PIPELINE, extract_sd_unet
from models.unet import count_parameters


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipe", default=SD15_PIPELINE, help="SD-1.5 pipeline: hub id or local folder")
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
        unet = extract_sd_unet(args.pipe, Path(args.ckpt), args.in_channels, getattr(torch, args.dtype))
        print(f"saved {args.ckpt}/ ({count_parameters(unet):,} parameters, in_channels {args.in_channels})")
    if args.load:
        loaded = load_generator(args.ckpt)
        has_weights = loaded.kind != "diffusers" or any(Path(args.ckpt).glob("diffusion_pytorch_model.*"))
        print(f"{args.ckpt}: {count_parameters(loaded.unet):,} parameters "
              f"({'weights' if has_weights else 'config only, random init'})")


if __name__ == "__main__":
    main()
