"""The curation experiment on the demo's synthetic data, where the truth is known (issue #24; BENCHMARKS.md).

    python bench/bench_curation.py --work /tmp/curation [--profile ci|full] [--seed 0] [--min_sync_conf C]

Three demo runs (lipsync.demo.pipeline.run_demo, the real scripts) with the same seed, so the same val / test
people and the same held-out speech:
  clean      the demo as it is; its expert is the scorer below
  corrupted  30 % of the training people's clips with audio shifted by -6..6 frames (0 left out), 15 % with
             another person's audio track, 15 % with a hard cut to another person mid-clip (lipsync.demo.corrupt)
  curated    the same corrupted clips, scored by the clean run's expert (score_sync.py's work), filtered
             (make_filelists --min_sync_conf C --max_offset 6) and trained with the offsets corrected
Then the corrupted run's training folders are scored by the clean expert and compared with the truth: offsets found
exactly (|k| <= 6), mismatched audio flagged (confidence < C: precision, recall), cut frames found (within 1).
C defaults to half the median confidence of the scored folders (no truth used); --min_sync_conf sets it.
Prints one table and writes <work>/curation.json. A finished run is kept (resume); --runs clean and --runs
corrupted in two processes make the first two side by side, then a plain run does the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _expert(run: Path) -> Path:
    return sorted((run / "experiments" / "syncnet").glob("version_*/checkpoints/last.ckpt"))[-1]


def measure_scoring(run: Path, expert: Path, min_sync_conf: float | None) -> dict:
    """Score the run's training folders with `expert` and compare with data/corruption.json."""
    from lipsync.data.curation import LatentScorer, score_dataset
    from lipsync.data.filelists import read_entries
    from lipsync.data.folder import read_meta, read_sync

    latents = run / "data" / "latents"
    outcomes = score_dataset(latents, LatentScorer.load(expert), progress=False)
    failed = [o for o in outcomes if o.status == "failed"]
    if len(failed) == len(outcomes):  # nothing to measure, and a threshold of NaN would filter nothing
        raise SystemExit(f"error: no folder of {latents} could be scored, e.g. {failed[0].name}: {failed[0].message}"
                         if failed else f"error: no dataset folder under {latents}")
    truths = json.loads((run / "data" / "corruption.json").read_text())
    # every training folder, including the ones a filter would drop (the corrupted run did not filter)
    folders = read_entries(run / "filelists_synthetic" / "train.txt")
    rows = []
    for entry in folders:
        clip = entry.split("_shot")[0]
        truth = truths.get(clip, {"kind": "clean", "offset": 0, "cut": None})
        rows.append(dict(entry=entry, kind=truth["kind"], offset=truth["offset"], cut=truth["cut"],
                         record=read_sync(latents / entry), meta=read_meta(latents / entry)))
    scored = [r for r in rows if r["record"]]
    confidences = np.array([r["record"]["confidence"] for r in scored])
    threshold = float(min_sync_conf if min_sync_conf is not None else 0.5 * np.median(confidences))
    in_sync = [r for r in scored if r["kind"] in ("clean", "shifted")]
    shifted = [r for r in scored if r["kind"] == "shifted"]
    exact = [r["record"]["offset"] == r["offset"] for r in in_sync]
    flagged = {r["entry"] for r in scored if r["record"]["confidence"] < threshold}
    mismatched = {r["entry"] for r in scored if r["kind"] == "swapped"}
    cut_clips = sorted({r["entry"].split("_shot")[0] for r in rows if r["kind"] == "cut"})
    cut_errors = []
    for clip in cut_clips:
        truth = truths[clip]["cut"]
        shots = [r for r in rows if r["entry"].startswith(clip + "_shot")]
        cuts = shots[0]["meta"].get("shot", {}).get("cuts", []) if shots else []
        cut_errors.append(min((abs(c - truth) for c in cuts), default=None) if len(cuts) == 1 else None)
    split_clean = sum(1 for r in rows if r["kind"] != "cut" and "_shot" in r["entry"])
    by_kind = {kind: [r["record"]["confidence"] for r in scored if r["kind"] == kind]
               for kind in ("clean", "shifted", "swapped", "cut")}
    return {
        "folders": len(rows), "scored": len(scored), "threshold": threshold,
        "offset_exact": float(np.mean(exact)), "offset_exact_n": len(exact),
        "shifted_exact": float(np.mean([r["record"]["offset"] == r["offset"] for r in shifted])),
        "shifted_within_1": float(np.mean([abs(r["record"]["offset"] - r["offset"]) <= 1 for r in shifted])),
        "shifted_n": len(shifted),
        "mismatch_precision": len(flagged & mismatched) / max(1, len(flagged)),
        "mismatch_recall": len(flagged & mismatched) / max(1, len(mismatched)), "mismatched_n": len(mismatched),
        "flagged_n": len(flagged),
        "cut_clips": len(cut_clips), "cuts_within_1": sum(e is not None and e <= 1 for e in cut_errors),
        "cut_errors": cut_errors, "false_splits": split_clean,
        "median_confidence": {kind: float(np.median(v)) if v else None for kind, v in by_kind.items()},
        "misses": [(r["entry"], r["offset"], r["record"]["offset"], r["record"]["confidence"])
                   for r in in_sync if r["record"]["offset"] != r["offset"]],
    }


RUNS = ("clean", "corrupted", "curated")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the three runs (clean/, corrupted/, curated/)")
    p.add_argument("--profile", choices=["ci", "full"], default="ci")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_sync_conf", type=float, default=None)
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                   help="the runs to make (a run whose results/metrics.json has this profile and seed is kept, so "
                        "an interrupted experiment resumes); scoring needs clean and corrupted, curated needs both")
    args = p.parse_args(argv)

    import audio_preprocess
    import unet_syncnet_lightning
    import unet_wav2lip_lightning
    import video_preprocess
    from lipsync.demo.pipeline import Curation, format_metrics, run_demo
    from lipsync.files import atomic_path

    scripts = {s.__name__: s.main for s in (video_preprocess, audio_preprocess, unet_syncnet_lightning,
                                            unet_wav2lip_lightning)}
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    log = (lambda line: None) if os.environ.get("QUIET") else print

    def run(name: str, curation=None) -> dict:
        done = work / name / "results" / "metrics.json"
        if done.is_file():
            metrics = json.loads(done.read_text())
            if (metrics.get("profile"), metrics.get("seed")) == (args.profile, args.seed):
                print(f"{name}: kept from {done}", flush=True)
                return metrics
        metrics = run_demo(work / name, scripts, args.profile, args.seed, log=log, curation=curation)
        print(f"{name}: {format_metrics(metrics)}", flush=True)
        return metrics

    results = {}
    for name in ("clean", "corrupted"):
        if name in args.runs or "curated" in args.runs:
            results[name] = run(name, Curation() if name == "corrupted" else None)
    if "clean" not in results or "corrupted" not in results:
        return
    expert = _expert(work / "clean")
    scoring = measure_scoring(work / "corrupted", expert, args.min_sync_conf)
    results["scoring"] = scoring
    print(json.dumps({k: v for k, v in scoring.items() if k != "misses"}), flush=True)
    if "curated" in args.runs:
        results["curated"] = run("curated", Curation(score_with=str(expert), min_sync_conf=scoring["threshold"],
                                                     max_offset=6))
    with atomic_path(work / "curation.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")

    print(f"\nscoring ({scoring['folders']} training folders of the corrupted run, clean expert):")
    print(f"  offsets exact (clean + shifted, |k| <= 6): {scoring['offset_exact']:.2f} of {scoring['offset_exact_n']}; "
          f"shifted only: {scoring['shifted_exact']:.2f} exact, {scoring['shifted_within_1']:.2f} within 1 "
          f"(of {scoring['shifted_n']})")
    print(f"  mismatched audio flagged at confidence < {scoring['threshold']:.3f}: precision "
          f"{scoring['mismatch_precision']:.2f}, recall {scoring['mismatch_recall']:.2f} "
          f"({scoring['flagged_n']} flagged, {scoring['mismatched_n']} mismatched)")
    print(f"  cuts found within 1 frame: {scoring['cuts_within_1']} of {scoring['cut_clips']}; "
          f"clips without a cut split anyway: {scoring['false_splits']}")
    print("\n| run | sync_corr | audio_gain | sync_lag | syncnet_acc |\n|---|---|---|---|---|")
    for name in ("clean", "corrupted", "curated"):
        if name in results:
            m = results[name]
            print(f"| {name} | {m['sync_corr']:.3f} | {m['audio_gain']:.2f} | {m['sync_lag']} | "
                  f"{m['syncnet_acc']:.2f} |")


if __name__ == "__main__":
    main()
