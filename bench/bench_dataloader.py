"""Data loader throughput from a packed latent dataset on local disk, against what the GPU consumes.

    python bench/bench_dataloader.py --root /tmp/bench_data [--videos 64 --frames 250 --latent 96]
        [--workers 0 2 4 8] [--gpu_windows_per_s 30]

Writes `videos` folders in the dataset format (lipsync.data.folder.write_video_folder: fp16 latents, one safetensors
file per video, wav2vec2 features), a filelist, then iterates LatentDataModule's generator loader (batch 16
windows of T=5) for each worker count and prints generator samples (windows) per second. Reads go through the
page cache after the first pass, as they do in a real multi-epoch run on a machine with RAM to spare.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import timing  # noqa: E402
from lipsync.data.filelists import make_filelists  # noqa: E402
from lipsync.data.folder import META_FILE, write_video_folder  # noqa: E402
from lipsync.data.module import LatentDataModule  # noqa: E402


def build_dataset(root: Path, videos: int, frames: int, latent: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for v in range(videos):
        folder = root / f"spk{v % 16:02d}" / f"clip{v:04d}"
        if (folder / META_FILE).is_file():
            continue
        full = torch.from_numpy(rng.standard_normal((frames, 4, latent, latent), dtype=np.float32))
        features = torch.randn(timing.num_feature_frames(frames * 640), 768)
        write_video_folder(folder, full, full * 0.5, np.arange(frames), {"image_size": latent * 8,
                           "codec": "bench/random"}, features=features, model_id="bench/random")
    make_filelists(root, root / "filelists_bench", val_groups=1, test_groups=1, seed=0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--videos", type=int, default=64)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--latent", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--workers", nargs="*", type=int, default=[0, 2, 4, 8])
    p.add_argument("--gpu_windows_per_s", type=float, default=None,
                   help="what the training step consumes (from bench_train.py), to print the headroom")
    args = p.parse_args(argv)
    root = Path(args.root)
    start = time.perf_counter()
    build_dataset(root, args.videos, args.frames, args.latent)
    print(f"dataset: {args.videos} videos x {args.frames} frames, latent {args.latent}, "
          f"built in {time.perf_counter() - start:.1f} s", flush=True)
    import os
    os.chdir(root)  # filelists_bench/ is found in the current directory
    rows = []
    for workers in args.workers:
        dm = LatentDataModule(root, "bench", task="generator", batch_size=args.batch_size,
                                   num_workers=workers, train_samples_per_epoch=args.batch_size * (args.batches + 5))
        dm.setup()
        loader = iter(dm.train_dataloader())
        for _ in range(5):  # worker start-up and first reads
            next(loader)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(loader)
        dt = time.perf_counter() - t0
        windows_s = args.batches * args.batch_size / dt
        rows.append((workers, windows_s, windows_s * timing.SYNCNET_T))
        print(f"workers={workers}: {windows_s:.0f} windows/s ({batch['masked'].shape})", flush=True)
        del loader, dm
    print("\nworkers  windows/s  frames/s  vs GPU")
    for workers, windows_s, frames_s in rows:
        headroom = f"{windows_s / args.gpu_windows_per_s:.1f}x" if args.gpu_windows_per_s else "-"
        print(f"{workers:>7} {windows_s:>10.0f} {frames_s:>9.0f}  {headroom}")


if __name__ == "__main__":
    main()
