"""Lip-sync a face video (or still image) to a speech file with a trained generator checkpoint.

    python unet_inference.py --checkpoint_path CKPT --face VIDEO_OR_IMAGE --audio AUDIO \
        [--outfile results/result_voice.mp4] [--static] [--fps 25] [--pads 0 10 0 0] [--box T B L R] \
        [--resize_factor 1] [--nosmooth] [--batch_size 16] [--ref_frame K] [--color_match] [--crf 18] \
        [--preset superfast] [--unet_config FOLDER] [--audio_encoder ID] [--codec ID] [--image_size N] \
        [--device auto] [--compile [on|off|auto]] [--no_cuda_graph]

The UNet config, audio encoder, codec and crop size come from the checkpoint's model card; the flags override
them only when given. The work is lipsync.inference.lip_sync; this prints its summary.
"""
from __future__ import annotations

import argparse

import diffusers
import transformers

from lipsync.errors import cli_entry
from lipsync.inference import DEFAULT_OUTFILE, LipSyncOptions, format_summary, lip_sync
from lipsync.video_writer import X264_PRESETS

DEFAULTS = LipSyncOptions()
COMPILE_CHOICES = {"on": True, "off": False, "auto": None}  # -> LipSyncOptions.compile


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint_path", required=True,
                   help="generator checkpoint: Lightning .ckpt, ZeRO folder, zero_to_fp32 output, safetensors")
    p.add_argument("--face", required=True, help="video or image with a face")
    p.add_argument("--audio", required=True, help="driving speech: any audio file, or a video's audio track")
    p.add_argument("--outfile", default=DEFAULT_OUTFILE, help="output mp4 (folder created)")
    p.add_argument("--static", action="store_true", default=DEFAULTS.static,
                   help="use only the first frame of the face video")
    p.add_argument("--fps", type=float, default=DEFAULTS.fps, help="frame rate for a still image")
    p.add_argument("--pads", type=int, nargs=4, default=DEFAULTS.pads, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="pixels added to each detected face box (more bottom = more chin)")
    p.add_argument("--box", type=int, nargs=4, default=DEFAULTS.box, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box for every frame instead of detection")
    p.add_argument("--resize_factor", type=int, default=DEFAULTS.resize_factor,
                   help="downscale the face frames (and the output) by this integer factor")
    p.add_argument("--nosmooth", action="store_true", default=DEFAULTS.nosmooth,
                   help="do not smooth face boxes over time")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size,
                   help="frames per face detector / codec / UNet batch")
    p.add_argument("--ref_frame", type=int, default=DEFAULTS.ref_frame,
                   help="take the reference face from this source frame (default: each frame's own face)")
    p.add_argument("--color_match", action="store_true", default=DEFAULTS.color_match,
                   help="match the generated lower face's colours to the input's")
    p.add_argument("--crf", type=int, default=DEFAULTS.crf,
                   help="x264 constant rate factor, 0 (best) .. 51; 18 looks lossless")
    p.add_argument("--preset", default=DEFAULTS.preset, choices=X264_PRESETS,
                   help="x264 preset: encoding speed vs file size at the same CRF")
    p.add_argument("--unet_config", default=DEFAULTS.unet_config,
                   help="UNet config folder, for checkpoints without a model card")
    p.add_argument("--audio_encoder", default=DEFAULTS.audio_encoder,
                   help="override the checkpoint's audio encoder (hub id or folder)")
    p.add_argument("--codec", default=DEFAULTS.codec,
                   help="override the checkpoint's latent codec (VAE: hub id or folder)")
    p.add_argument("--image_size", type=int, default=DEFAULTS.image_size, help="override the face crop size")
    p.add_argument("--device", default=DEFAULTS.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=COMPILE_CHOICES,
                   help="torch.compile UNet and codec (CUDA): 'auto' (default) where it pays: on long clips, and on "
                        "short ones once this machine has compiled the same models (kernels kept on disk: "
                        "lipsync/compile_cache.py); '--compile' alone = on")
    p.add_argument("--no_cuda_graph", dest="cuda_graph", action="store_false", default=DEFAULTS.cuda_graph,
                   help="launch every kernel from Python instead of replaying one recorded CUDA graph per batch")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = vars(parse_args(argv))
    args["compile"] = COMPILE_CHOICES[args["compile"]]
    for library in (transformers, diffusers):  # our own bars and one-line errors only, no loading chatter
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    summary = lip_sync(args.pop("checkpoint_path"), args.pop("face"), args.pop("audio"), args.pop("outfile"),
                       **args)
    print(format_summary(summary))
    return summary


if __name__ == "__main__":
    main()
