"""Raw talking-face videos -> latent dataset folders (latents.safetensors, audio.wav, meta.json per video).

    python video_preprocess.py --data_root RAW --output_root D [--image_size 768] [--codec stabilityai/sd-vae-ft-mse]
        [--pads 0 10 0 0] [--box T B L R] [--nosmooth] [--detect_size 480] [--batch_size 16] [--devices N]
        [--num_workers K] [--shard i/n] [--fps 25] [--no_scene_split] [--scene_threshold 27] [--min_shot_seconds 0.4]

Every video under RAW (any depth; mp4 mov mkv avi mpg mpeg webm) becomes D/<relative path without extension>/
(LRS2 `group/clip.mp4` -> `D/group/clip/`); a video with scene cuts becomes one folder per shot,
D/<...>/clip_shot000/, clip_shot001/, ... (shots under --min_shot_seconds or without a face are dropped and named in
the summary; --no_scene_split keeps every video whole). Re-running skips finished folders, so an interrupted run
resumes.
Exits non-zero if any video failed (each failure is one line of the final summary).
Then run audio_preprocess.py --data_root D. Layout and latent conventions: docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import argparse

from lipsync import timing
from lipsync.arguments import shard_spec
from lipsync.errors import UserError, cli_entry
from lipsync.latent_codec import DEFAULT_CODEC
from lipsync.preprocess.report import summarize
from lipsync.preprocess.video import VideoSettings, preprocess_videos, resolve_devices


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", required=True, help="folder of raw videos (searched recursively)")
    p.add_argument("--output_root", required=True, help="dataset folder to write")
    p.add_argument("--image_size", type=int, default=768, help="face crop side in pixels before encoding")
    p.add_argument("--codec", default=DEFAULT_CODEC, help="AutoencoderKL: hub id or local folder")
    p.add_argument("--pads", type=int, nargs=4, default=(0, 10, 0, 0), metavar=("T", "B", "L", "R"),
                   help="pixels added to the detected box (top bottom left right) before squaring")
    p.add_argument("--box", type=int, nargs=4, default=None, metavar=("T", "B", "L", "R"),
                   help="fixed face box for every frame instead of detection")
    p.add_argument("--nosmooth", action="store_true", help="no temporal smoothing of the boxes")
    p.add_argument("--detect_size", type=int, default=480, help="longer frame side for face detection")
    p.add_argument("--batch_size", type=int, default=16, help="frames per detection / encoding batch")
    p.add_argument("--devices", type=int, default=None, help="GPUs to use (default all visible; 0 = CPU)")
    p.add_argument("--num_workers", type=int, default=None,
                   help="worker processes, dealt videos round-robin (default one per GPU, 1 on CPU); on a GPU, 2-3 "
                        "per GPU overlap one's decoding and cropping with another's encoding (BENCHMARKS.md)")
    p.add_argument("--shard", type=shard_spec, default=(0, 1), metavar="i/n",
                   help="process every n-th video starting at i, to split the list over machines")
    p.add_argument("--fps", type=float, default=timing.VIDEO_FPS, help="frame rate the videos are resampled to")
    p.add_argument("--no_scene_split", action="store_true",
                   help="keep each video whole instead of one folder per shot (scene cuts: PySceneDetect)")
    p.add_argument("--scene_threshold", type=float, default=27.0,
                   help="ContentDetector threshold: a frame-to-frame change above it is a scene cut")
    p.add_argument("--min_shot_seconds", type=float, default=0.4,
                   help="shots of a cut video shorter than this are dropped (0.4 s = two 5-frame windows)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the codec (CUDA): faster encoding after ~40 s of compilation per worker")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if args.batch_size < 1 or (args.num_workers is not None and args.num_workers < 1):
        raise UserError("--batch_size and --num_workers must be at least 1")
    settings = VideoSettings(image_size=args.image_size, codec=args.codec, pads=tuple(args.pads),
                             box=tuple(args.box) if args.box else None, smooth=not args.nosmooth,
                             detect_size=args.detect_size, batch_size=args.batch_size, fps=args.fps,
                             scene_split=not args.no_scene_split, scene_threshold=args.scene_threshold,
                             min_shot_seconds=args.min_shot_seconds, compile=args.compile)
    devices = resolve_devices(args.devices)
    num_workers = args.num_workers or (len(devices) if devices[0] != "cpu" else 1)
    outcomes = preprocess_videos(args.data_root, args.output_root, settings, devices, num_workers, args.shard)
    print(summarize(outcomes, "videos"))
    failed = sum(o.status == "failed" for o in outcomes)
    if failed:  # a scripted pipeline must not go on as if every video were there
        raise UserError(f"{failed} of {len(outcomes)} videos failed (listed above; the others are done)")


if __name__ == "__main__":
    main()
