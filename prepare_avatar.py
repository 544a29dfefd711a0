"""Prepare a face video (or image) once for real-time lip sync: boxes, crops, masked and reference latents, the
paste mask and the ping-pong frame order are cached in AVATARS/NAME/ (lipsync.realtime.avatar).

    python prepare_avatar.py --checkpoint_path CKPT --face VIDEO_OR_IMAGE --name NAME [--avatars avatars] \
        [--pads 0 10 0 0] [--box T B L R] [--resize_factor 1] [--nosmooth] [--static] [--fps 25] \
        [--ref_frame K] [--batch_size 16] [--max_seconds S] [--device auto]

The crop size and codec come from the checkpoint's model card: an avatar serves every checkpoint with the same
codec and crop size. Then: python avatar_server.py --checkpoint_path CKPT --avatars avatars
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from lipsync.errors import UserError, cli_entry
from lipsync.inference import LipSyncOptions, load_models
from lipsync.inference.pipeline import open_face
from lipsync.realtime.avatar import prepare_avatar

DEFAULTS = LipSyncOptions()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint_path", required=True, help="generator checkpoint (any kind unet_inference.py reads)")
    p.add_argument("--face", required=True, help="video or image with a face")
    p.add_argument("--name", required=True, help="avatar name: letters, digits, '-', '_' (its folder's name)")
    p.add_argument("--avatars", default="avatars", help="folder of avatars")
    p.add_argument("--pads", type=int, nargs=4, default=DEFAULTS.pads, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="pixels added to each detected face box (more bottom = more chin)")
    p.add_argument("--box", type=int, nargs=4, default=None, metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                   help="fixed face box for every frame instead of detection")
    p.add_argument("--resize_factor", type=int, default=1, help="downscale the face frames by this integer factor")
    p.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over time")
    p.add_argument("--static", action="store_true", help="use only the first frame of the face video")
    p.add_argument("--fps", type=float, default=DEFAULTS.fps, help="frame rate of a still image's stream")
    p.add_argument("--ref_frame", type=int, default=None,
                   help="take the reference face from this frame (default: each frame's own face)")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size, help="frames per detector / codec batch")
    p.add_argument("--max_seconds", type=float, default=None, help="keep only the first seconds of a long video")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        raise UserError(f"--name {args.name!r}: use letters, digits, '-' and '_' only")
    if args.batch_size < 1 or args.resize_factor < 1:
        raise UserError("--batch_size and --resize_factor must be >= 1")
    open_face(args.face, args.static, args.fps, args.resize_factor)  # a bad face file fails before the models load
    models = load_models(args.checkpoint_path, device=args.device)
    summary = prepare_avatar(models, args.face, Path(args.avatars) / args.name, pads=tuple(args.pads),
                             box=args.box, resize_factor=args.resize_factor, nosmooth=args.nosmooth,
                             static=args.static, fps=args.fps, ref_frame=args.ref_frame,
                             batch_size=args.batch_size, max_seconds=args.max_seconds)
    print(f"prepared avatar {args.name!r} in {summary['folder']}: {summary['num_frames']} frames "
          f"{summary['width']}x{summary['height']} @ {summary['fps']:g} fps, faces in {summary['faces_found']}, "
          f"{summary['image_size']} px crops, {summary['seconds']:.1f} s")
    return summary


if __name__ == "__main__":
    main()
