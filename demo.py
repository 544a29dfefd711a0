"""The whole workflow on built-in synthetic talking faces, on a CPU, in minutes (what `make demo` runs).

    python demo.py --output_root demo_output [--profile full|ci] [--seed 0]

Renders talking faces, fits a tiny codec, preprocesses, trains the SyncNet expert and the generator with the
real training scripts, merges the ZeRO checkpoint, lip-syncs held-out faces to held-out speech and evaluates
(lipsync/demo/pipeline.py says how). Everything goes to --output_root; results/demo.mp4 (input | output, with
the driving speech) is also copied to results/ of the current directory. The last line printed is, e.g. (full
profile, seed 0, 2 CPU cores)

    demo: sync_corr=0.95 baseline_corr=0.07 syncnet_acc=0.92 audio_gain=1.71 seconds=445
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; nothing may reach the hub
# OpenMP threads that find no work sleep after a short spin (libgomp's default spin is long): as fast on an idle
# machine, and several times faster when another process wants the cores too (BENCHMARKS.md, CPU). Read by
# libgomp when torch loads it, so it is set before any import of torch.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from lipsync.errors import cli_entry  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_root", required=True, help="folder for every stage's output (created)")
    p.add_argument("--profile", choices=["full", "ci"], default="full",
                   help="full: the README's numbers (~10 min on 2 CPU cores); ci: smaller and faster (the test)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> dict:
    args = parse_args(argv)
    import audio_preprocess
    import unet_syncnet_lightning
    import unet_wav2lip_lightning
    import video_preprocess
    from lipsync.demo.pipeline import format_metrics, run_demo

    scripts = {script.__name__: script.main for script in (video_preprocess, audio_preprocess,
                                                               unet_syncnet_lightning, unet_wav2lip_lightning)}
    metrics = run_demo(args.output_root, scripts, args.profile, args.seed)
    video = Path(args.output_root) / "results" / "demo.mp4"
    local = Path("results") / "demo.mp4"
    if local.resolve() != video.resolve():
        from lipsync.files import atomic_path

        local.parent.mkdir(exist_ok=True)
        with atomic_path(local) as tmp:  # never a half-copied demo.mp4
            shutil.copyfile(video, tmp)
    print("demo: stage seconds " + ", ".join(f"{k} {v:.0f}" for k, v in metrics["stage_seconds"].items()))
    print(f"demo: wrote {video}, {local}, {video.parent / 'mouth_opening.png'}")
    print(format_metrics(metrics))
    return metrics


if __name__ == "__main__":
    main()
