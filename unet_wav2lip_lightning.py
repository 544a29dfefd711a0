"""Train the generator UNet against a frozen SyncNet expert (stage 2).

    python unet_wav2lip_lightning.py --data_root data/latents --dataset_name lrs2 \
        --syncnet experiments/latent_syncnet_experiment/version_0/checkpoints/last.ckpt \
        --unet_ckpt customized_unet/

Runs go to experiments/latent_wav2lip_experiment/version_K/ (options.json, checkpoints/ ranked by
val/recon_loss, samples/step_XXXXXXX.png, TensorBoard logs); resume with --ckpt .../checkpoints/last.ckpt.
Merge a DeepSpeed checkpoint for inference: `cd <ckpt folder> && python zero_to_fp32.py . merged`
(or pass the folder itself to inference). Trainer options: lipsync/training.py.
"""
from __future__ import annotations

import argparse

from lipsync import training
from lipsync.checkpoint import load_generator, load_syncnet
from lipsync.errors import UserError, cli_entry
from lipsync.timing import VIDEO_FPS
from models.unet import AUDIO_POSITIONS, check_unet_config
from models.wav2lip_module import Wav2LipModule

EXPERIMENT = "latent_wav2lip_experiment"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    training.add_data_args(p)
    expert = p.add_mutually_exclusive_group(required=True)
    expert.add_argument("--syncnet", help="checkpoint of a 'u' SyncNet expert (any kind lipsync.checkpoint reads)")
    expert.add_argument("--syncnet_xl", help="checkpoint of an 'xl' SyncNet expert")
    p.add_argument("--unet_ckpt", required=True,
                   help="UNet init: config-only folder (random), diffusers folder with weights (e.g. "
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
                   help="recompute UNet activations in backward: ~3x less memory per frame, ~25%% slower; for "
                        "batches that do not fit otherwise (96x96 latents: batch 32 windows of the 80M UNet in 32 GB)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet in place (CUDA; ~1 min of compilation, then fused norms and "
                        "activations: BENCHMARKS.md 1a/1e); checkpoints are the same")
    training.add_trainer_args(p)
    p.set_defaults(batch_size=2, accumulate_grad_batches=4)
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    data = training.start_run(args, task="generator")
    init = load_generator(args.unet_ckpt)
    if args.gradient_checkpointing:
        init.unet.enable_gradient_checkpointing()
    if args.compile:  # nn.Module.compile: compiles on the first call, keeps the state_dict keys
        init.unet.compile()
    check_unet_config(init.card["unet_config"], data.audio_dim, data.latent_channels)
    training.check_card_matches_data(init.card, data, args.unet_ckpt)
    variant, path = ("xl", args.syncnet_xl) if args.syncnet_xl else ("u", args.syncnet)
    expert = load_syncnet(path, expect_variant=variant)
    training.check_card_matches_data(expert.card, data, path)
    sync_config = expert.syncnet.config
    if (sync_config.T, sync_config.latent_channels) != (args.T, data.latent_channels):
        raise UserError(f"{path} is a SyncNet over T={sync_config.T} frames of {sync_config.latent_channels}-channel "
                        f"latents; this run has T={args.T} and {data.latent_channels} channels")
    card = {"kind": "generator", "unet_config": init.card["unet_config"], "latent_channels": data.latent_channels,
            "T": args.T, "fps": VIDEO_FPS, "audio_positions": AUDIO_POSITIONS, **training.data_card(data)}
    module = Wav2LipModule(init.unet, expert.syncnet, card, training.OptimConfig.from_args(args),
                           sync_weight=args.sync_weight, sync_start_step=args.sync_start_step,
                           sync_start_val_sync=args.sync_start_val_sync,
                           lower_half_weight=args.lower_half_weight, codec_id=args.codec or data.codec_id)
    return training.fit(args, module, data, EXPERIMENT, monitor="val/recon_loss",
                        filename="wav2lip-{step}-{val/recon_loss:.3f}")


if __name__ == "__main__":
    main()
