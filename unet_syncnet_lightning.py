"""Train the latent SyncNet expert (stage 1; the generator's sync loss uses it frozen).

    python unet_syncnet_lightning.py --data_root data/latents --dataset_name lrs2 [--xl | --variant s]

Runs go to experiments/syncnet/version_K/ (options.json, checkpoints/ ranked by val/loss,
TensorBoard logs); resume with --ckpt .../checkpoints/last.ckpt. Trainer options: lipsync/training/options.py.
"""
from __future__ import annotations

import argparse

from lipsync.errors import UserError, cli_entry
from lipsync.timing import syncnet_window_length
from lipsync.training.options import OptimConfig, add_data_args, add_trainer_args
from lipsync.training.run import data_card, fit, start_run
from lipsync.training.syncnet_module import SyncNetModule
from models.syncnet import FACE_STAGES, SyncNetConfig

EXPERIMENT = "syncnet"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--variant", choices=sorted(FACE_STAGES), default="u",
                         help="'u' (default), the wider 'xl', or the narrow 's' for small latents (models/syncnet.py)")
    variant.add_argument("--xl", action="store_const", const="xl", dest="variant", help="the same as --variant xl")
    p.add_argument("--face_region", choices=["lower", "full"], default="lower",
                   help="latent rows the expert sees: the lower half (mouth) or the whole face")
    p.add_argument("--batch_negatives", action=argparse.BooleanOptionalAction, default=True,
                   help="train on every face x audio pair of a batch, not only its B labelled pairs "
                        "(B^2 negatives instead of B/2 for the same encoder work)")
    add_trainer_args(p)
    # DDP with bf16 autocast: ZeRO buys nothing for ~15M parameters, and DeepSpeed's bf16 parameters break
    # BatchNorm (its running statistics stay fp32); --strategy deepspeed_stage_2 runs with --precision 32-true
    p.set_defaults(batch_size=64, strategy="ddp")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    data = start_run(args, task="syncnet")
    if args.strategy == "deepspeed_stage_2" and args.precision != "32-true":
        raise UserError(f"SyncNet's BatchNorm cannot train under DeepSpeed's {args.precision} parameters: "
                        f"use --strategy ddp (the default) or --precision 32-true")
    config = SyncNetConfig(variant=args.variant, T=args.T, latent_channels=data.latent_channels,
                           audio_dim=data.audio_dim, audio_frames=syncnet_window_length(args.T),
                           face_region=args.face_region)
    card = {"kind": "syncnet", "syncnet": config.to_dict(), **data_card(data)}
    module = SyncNetModule(config, card, OptimConfig.from_args(args), args.batch_negatives)
    return fit(args, module, data, EXPERIMENT, monitor="val/loss",
                        filename=f"syncnet-{config.variant}-{{step}}-{{val/loss:.3f}}")


if __name__ == "__main__":
    main()
