"""Score lip-synced videos the way lip-sync papers report them (LSE-C / LSE-D / AV offset, FID, SSIM / PSNR, CSIM,
and this project's own expert), for this project's checkpoints or for videos made by any system.

    # this project: lip-sync each test video (reconstruction: with its own audio; cross: another clip's), then score
    python evaluate.py --checkpoint_path CKPT --videos test_videos/ --weights_dir weights/ --output_dir eval_out \
        [--protocol reconstruction|cross] [--pairs pairs.txt] [--seed 0] [--expert SYNCNET_CKPT]
    # any system(s): generated videos named like the reference videos they reconstruct
    python evaluate.py --generated results/ musetalk/ --names ours musetalk --reference test_videos/ \
        --weights_dir weights/ --output_dir eval_out

--videos / --reference: a folder of videos or a list file (one path or name per line). Writes
output_dir/results.{json,csv,md} (the Markdown is printed too); per-video results are cached in output_dir/cache,
this project's outputs in output_dir/generated, so a rerun resumes. See README "Evaluation" for the weight files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lipsync.errors import UserError, cli_entry
from lipsync.evaluation import report, runner
from lipsync.evaluation.weights import CHECKS


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mode = p.add_argument_group("what to score (one of)")
    mode.add_argument("--checkpoint_path", help="a generator checkpoint of this project: lip-sync --videos, score them")
    mode.add_argument("--generated", nargs="+", metavar="DIR", help="folders of generated videos, one per system")
    p.add_argument("--videos", help="test videos (folder or list file) for --checkpoint_path")
    p.add_argument("--video_root", help="folder the names of a list file resolve against (default: the list's)")
    p.add_argument("--reference", help="reference videos (folder or list file) for --generated; without it only "
                                       "sync metrics are computed")
    p.add_argument("--names", nargs="+", help="a name per --generated folder (default: the folder names)")
    p.add_argument("--protocol", choices=("reconstruction", "cross"), default="reconstruction",
                   help="reconstruction: each video driven by its own audio (all metrics); cross: by another clip's "
                        "speech (sync metrics only)")
    p.add_argument("--pairs", help="cross protocol: a file of 'VIDEO AUDIO' name pairs (default: a seeded pairing)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross pairing")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--weights_dir", help="folder with syncnet_v2.model, sfd_face.pth, "
                                         "pt_inception-2015-12-05-6726825d.pth, w600k_r50.onnx (README table)")
    p.add_argument("--weights_check", choices=CHECKS, default="sha256",
                   help="sha256: the published files only; architecture: any file that loads into the network")
    p.add_argument("--metrics", nargs="+", choices=runner.METRICS,
                   help="default: lse fid quality csim (+ expert with --expert); cross: lse (+ expert)")
    p.add_argument("--pads", type=int, nargs=4, default=(0, 10, 0, 0), metavar=("T", "B", "L", "R"),
                   help="--checkpoint_path: the crop pads lip_sync uses (the recipe the generator was trained with)")
    p.add_argument("--expert", help="a latent SyncNet checkpoint of this project: its offset / confidence / distance")
    p.add_argument("--expert_pads", type=int, nargs=4, default=(0, 10, 0, 0), metavar=("T", "B", "L", "R"),
                   help="the crop pads the expert's data was preprocessed with")
    p.add_argument("--face_detector", choices=("retinaface", "s3fd"), default="retinaface",
                   help="face tracks for LSE: s3fd = the reference pipeline's (needs sfd_face.pth); retinaface = "
                        "this project's detector (not identical for published comparisons)")
    p.add_argument("--min_track", type=int, default=50, help="LSE: a face track must have more frames than this")
    p.add_argument("--min_face_size", type=float, default=100.0, help="LSE: mean face box side (px) to exceed")
    p.add_argument("--fid_stride", type=int, default=1, help="FID on every k-th frame (1: all frames)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no_cache", action="store_true", help="recompute every video (nothing read or written)")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if bool(args.checkpoint_path) == bool(args.generated):
        p.error("give either --checkpoint_path (with --videos) or --generated (with --reference)")
    if args.checkpoint_path and not args.videos:
        p.error("--checkpoint_path needs --videos")
    if args.names and (not args.generated or len(args.names) != len(args.generated)):
        p.error("--names needs one name per --generated folder")
    return args


def options_from(args, cross: bool) -> runner.EvalOptions:
    metrics = args.metrics or ["lse", "fid", "quality", "csim"] + (["expert"] if args.expert else [])
    if cross:
        metrics = [m for m in metrics if m in runner.SYNC_METRICS]
    return runner.EvalOptions(weights_dir=args.weights_dir, weights_check=args.weights_check, metrics=tuple(metrics),
                              face_detector=args.face_detector, expert=args.expert,
                              expert_pads=tuple(args.expert_pads), min_track=args.min_track,
                              min_face_size=args.min_face_size, device=args.device, cache=not args.no_cache,
                              fid_stride=args.fid_stride)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    progress = not args.no_progress
    if args.checkpoint_path:
        videos = runner.list_videos(args.videos, args.video_root)
        cross = args.protocol == "cross"
        drivers = runner.cross_pairs(list(videos), args.pairs, args.seed) if cross else {n: n for n in videos}
        # cross: named video__speech, so another pairing never reuses an output
        jobs = {(f"{name}__{drivers[name]}" if cross else name): (videos[name], videos[drivers[name]])
                for name in drivers}
        generated = runner.generate(args.checkpoint_path, jobs, out / "generated" / args.protocol,
                                    device=args.device, progress=progress, pads=tuple(args.pads))
        systems = {(args.names or ["ours"])[0]: generated}
        references = None if cross else {name: videos[name] for name in generated}
    else:
        cross = args.protocol == "cross"
        if cross and args.reference:
            raise UserError("--protocol cross scores sync only: leave out --reference")
        names = args.names or [Path(folder).name for folder in args.generated]
        if len(set(names)) != len(names):
            raise UserError(f"two systems share a name ({' '.join(names)}): pass --names")
        systems = {name: runner.list_videos(folder) for name, folder in zip(names, args.generated)}
        references = runner.list_videos(args.reference, args.video_root) if args.reference and not cross else None
    options = options_from(args, cross)
    results = runner.score_systems(systems, references, options, cache_root=out / "cache", progress=progress)
    results["protocol"] = args.protocol
    paths = report.write_reports(results, out)
    print(paths["md"].read_text(), end="")
    print(f"wrote {paths['json']}, {paths['csv']}, {paths['md']}")
    return results


if __name__ == "__main__":
    main()
