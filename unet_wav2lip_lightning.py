"""Train the generator (a UNet) against a frozen SyncNet expert (stage 2).

    python unet_wav2lip_lightning.py --data_root data/latents --dataset_name lrs2 \
        --syncnet experiments/syncnet/version_0/checkpoints/last.ckpt --unet_ckpt customized_unet/

Runs go to experiments/generator/version_K/ (options.json, checkpoints/ ranked by val/recon_loss,
samples/step_XXXXXXX.png, TensorBoard logs); resume with --ckpt .../checkpoints/last.ckpt.
Merge a DeepSpeed checkpoint for inference: `cd <ckpt folder> && python zero_to_fp32.py . merged`
(or pass the folder itself to inference). Trainer options: lipsync/training/options.py.
"""
from __future__ import annotations

import argparse

from lipsync.checkpoint import check_unet_config, load_generator, load_syncnet
from lipsync.compile_cache import use_persistent_compile_cache
from lipsync.errors import UserError, cli_entry
from lipsync.timing import VIDEO_FPS
from lipsync.training.generator_module import GeneratorModule
from lipsync.training.options import OptimConfig, add_data_args, add_trainer_args
from lipsync.training.run import check_card_matches_data, data_card, fit, start_run
from models.unet import AUDIO_POSITIONS

EXPERIMENT = "generator"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")  # torch.compile's inductor modes


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    expert = p.add_mutually_exclusive_group(required=True)
    expert.add_argument("--syncnet", help="checkpoint of the SyncNet expert (any kind lipsync.checkpoint reads; "
                                          "its variant, u, xl or s, comes from its model card)")
    expert.add_argument("--syncnet_xl", help="the same, for an expert that must be the 'xl' variant")
    p.add_argument("--unet_ckpt", required=True,
                   help="generator init: config-only folder (random), diffusers folder with weights (e.g. "
                        "stable-diffusion-v1-5/ from unet_loader.py --extract), or a generator checkpoint")
    p.add_argument("--lower_half_weight", type=float, default=2.0,
                   help="L1 weight of the latent rows h//2: (mouth) against 1 for the upper rows")
    p.add_argument("--sync_weight", type=float, default=0.1, help="total = recon + sync_weight * sync, once on")
    switch = p.add_mutually_exclusive_group()
    switch.add_argument("--sync_start_step", type=int, default=None, help="turn the sync loss on at this step")
    switch.add_argument("--sync_start_val_sync", type=float, default=0.75,
                        help="... or (default) at the first validation with val/sync_loss below this")
    p.add_argument("--codec", default=None,
                   help="latent codec decoding the sample images (default: the dataset's; skipped if it won't load)")
    p.add_argument("--gradient_checkpointing", action="store_true",
                   help="recompute UNet activations in backward: several times less memory per frame, slower; "
                        "for batches that do not fit otherwise (BENCHMARKS.md)")
    p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                   help="torch.compile the UNet and the frozen expert in place (CUDA; ~1 min of compilation, kept "
                        "on disk for later runs: lipsync/compile_cache.py), then fused norms and activations "
                        "(BENCHMARKS.md); checkpoints are the same. 'reduce-overhead': also replay each forward and "
                        "backward as CUDA graphs (a step then launches a few hundred kernels instead of thousands: "
                        "for small batches, where launching is the limit)")
    add_trainer_args(p)
    p.set_defaults(batch_size=2, accumulate_grad_batches=4)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    data = start_run(args, task="generator")
    init = load_generator(args.unet_ckpt)
    if args.gradient_checkpointing:
        init.unet.enable_gradient_checkpointing()
    mode = None if args.compile in (None, "default") else args.compile
    if args.compile:  # nn.Module.compile: compiles on the first call, keeps the state_dict keys
        use_persistent_compile_cache()
        init.unet.compile(mode=mode)
    check_unet_config(init.card["unet_config"], data.audio_dim, data.latent_channels)
    check_card_matches_data(init.card, data, args.unet_ckpt)
    path = args.syncnet_xl or args.syncnet
    expert = load_syncnet(path, expect_variant="xl" if args.syncnet_xl else None)
    if args.compile:  # the expert's forward and backward run in every step too
        expert.syncnet.compile(mode=mode)
    check_card_matches_data(expert.card, data, path)
    sync_config = expert.syncnet.config
    if (sync_config.T, sync_config.latent_channels) != (args.T, data.latent_channels):
        raise UserError(f"{path} is a SyncNet over T={sync_config.T} frames of {sync_config.latent_channels}-channel "
                        f"latents; this run has T={args.T} and {data.latent_channels} channels")
    card = {"kind": "generator", "unet_config": init.card["unet_config"], "latent_channels": data.latent_channels,
            "T": args.T, "fps": VIDEO_FPS, "audio_positions": AUDIO_POSITIONS, **data_card(data)}
    module = GeneratorModule(init.unet, expert.syncnet, card, OptimConfig.from_args(args),
                             sync_weight=args.sync_weight, sync_start_step=args.sync_start_step,
                             sync_start_val_sync=args.sync_start_val_sync,
                             lower_half_weight=args.lower_half_weight, codec_id=args.codec or data.codec_id)
    return fit(args, module, data, EXPERIMENT, monitor="val/recon_loss",
               filename="generator-{step}-{val/recon_loss:.3f}")


if __name__ == "__main__":
    main()
