"""Preprocessing throughput on the GPU: decode + face detection + full and masked latent encoding, frames/s.

    python bench/bench_preprocess.py --clips CLIPS_DIR --work /tmp/bench_pre [--copies 3] [--sizes 768 256]
        [--workers 1 2 3]

Uses the real-size SD VAE architecture (sd-vae-ft-mse's config, random weights) and the real clips (each copied
`copies` times). Runs lipsync.preprocess.preprocess_videos exactly as video_preprocess.py does, for each crop
size and worker count on one GPU (several workers per GPU overlap CPU detection/decoding with GPU encoding).
Prints a table last.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo  # noqa: E402
from lipsync.preprocess import VideoSettings, preprocess_videos  # noqa: E402

VIDEO_SUFFIXES = (".mp4", ".mpg")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--sizes", nargs="*", type=int, default=[768, 256])
    p.add_argument("--workers", nargs="*", type=int, default=[1, 2, 3])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="cuda:0", help="cpu only for a smoke run of this script")
    p.add_argument("--compile", action="store_true", help="torch.compile the codec (video_preprocess.py --compile)")
    args = p.parse_args(argv)
    work = Path(args.work)
    raw = work / "raw"
    for copy in range(args.copies):
        for clip in sorted(Path(args.clips).iterdir()):
            if clip.suffix in VIDEO_SUFFIXES:
                target = raw / f"copy{copy}" / clip.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(clip, target)
    vae = model_zoo.save_vae(work / "sd_vae", model_zoo.vae_config())
    rows = []
    for size in args.sizes:
        for workers in args.workers:
            out = work / f"out_{size}_{workers}"
            shutil.rmtree(out, ignore_errors=True)
            settings = VideoSettings(image_size=size, codec=str(vae), batch_size=args.batch_size,
                                     compile=args.compile)
            start = time.perf_counter()
            outcomes = preprocess_videos(raw, out, settings, [args.device], workers)
            seconds = time.perf_counter() - start
            done = [o for o in outcomes if o.status == "done"]
            for o in outcomes:
                if o.status == "failed":
                    print(f"FAILED {o.name}: {o.message}", flush=True)
            frames = sum(o.frames for o in done)
            detect_wait = sum(o.detect_s for o in done) / max(sum(o.total_s for o in done), 1e-9)
            # after warm-up: outcomes arrive in completion order; the first `workers` carry each worker's model
            # load and (--compile) compilation. Each worker handles one video at a time, so the workers together
            # turn out workers x frames / worker-seconds.
            later = done[workers:]
            steady = workers * sum(o.frames for o in later) / max(sum(o.total_s for o in later), 1e-9)
            rows.append((size, workers, len(done), frames, seconds, frames / seconds, steady, detect_wait))
            print(f"size={size} workers={workers}: {frames} frames in {seconds:.1f} s = {frames / seconds:.1f} "
                  f"frames/s; {steady:.1f} frames/s after each worker's first video (waiting for detection "
                  f"{detect_wait:.0%} of worker time)", flush=True)
    print("\ncrop px  workers  videos  frames  seconds  frames/s  after warm-up  detect wait")
    for size, workers, videos, frames, seconds, fps, steady, share in rows:
        print(f"{size:>7} {workers:>8} {videos:>7} {frames:>7} {seconds:>8.1f} {fps:>9.1f} {steady:>14.1f} "
              f"{share:>13.0%}")


if __name__ == "__main__":
    main()
