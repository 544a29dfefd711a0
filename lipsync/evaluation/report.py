"""The results of evaluate.py as JSON, CSV and a Markdown table, each written atomically (temp name, rename).

Markdown: first one row per system (mean +- std over its videos, FID of its whole set), then one row per video.
CSV: one row per (system, video), then per system a "mean" and a "std" row (FID in those rows only).
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from lipsync.files import atomic_path

# (key, column title, format): the order of the tables; columns nobody has are left out
COLUMNS = (
    ("lse_d", "LSE-D ↓", ".3f"), ("lse_c", "LSE-C ↑", ".3f"), ("av_offset", "offset", ".2f"),
    ("expert_d", "expert D ↓", ".3f"), ("expert_c", "expert C ↑", ".3f"), ("expert_offset", "expert offset", ".2f"),
    ("fid_face", "FID face ↓", ".2f"), ("fid_frame", "FID frame ↓", ".2f"),
    ("ssim_face", "SSIM face ↑", ".4f"), ("psnr_face", "PSNR face ↑", ".2f"),
    ("ssim_mouth", "SSIM mouth ↑", ".4f"), ("psnr_mouth", "PSNR mouth ↑", ".2f"), ("csim", "CSIM ↑", ".4f"),
)
SET_METRICS = ("fid_face", "fid_frame")  # one number per system, not per video


def _present(results: dict) -> list[tuple[str, str, str]]:
    keys = set()
    for system in results["systems"].values():
        keys |= set(system["mean"]) | {k for k in SET_METRICS if k in system}
    return [c for c in COLUMNS if c[0] in keys]


def _number(value, fmt: str) -> str:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def markdown(results: dict) -> str:
    columns = _present(results)
    lines = ["| system | videos | " + " | ".join(title for _, title, _ in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name, system in results["systems"].items():
        cells = []
        for key, _, fmt in columns:
            if key in SET_METRICS:
                cells.append(_number(system.get(key), fmt))
            else:
                mean, std = system["mean"].get(key), system["std"].get(key)
                cells.append("-" if _number(mean, fmt) == "-" else f"{_number(mean, fmt)} ± {_number(std, fmt)}")
        lines.append(f"| {name} | {len(system['videos'])} | " + " | ".join(cells) + " |")
    per_video = [c for c in columns if c[0] not in SET_METRICS]
    lines += ["", "| system | video | " + " | ".join(title for _, title, _ in per_video) + " | note |",
              "|---|---|" + "---:|" * len(per_video) + "---|"]
    for name, system in results["systems"].items():
        for video, row in system["videos"].items():
            note = "; ".join(str(v) for k, v in row.items() if k.endswith("_note"))
            lines.append(f"| {name} | {video} | " + " | ".join(_number(row.get(k), f) for k, _, f in per_video)
                         + f" | {note} |")
    return "\n".join(lines) + "\n"


def csv_text(results: dict) -> str:
    columns = [key for key, _, _ in _present(results)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["system", "video", *columns, "note"])
    for name, system in results["systems"].items():
        for video, row in system["videos"].items():
            note = "; ".join(str(v) for k, v in row.items() if k.endswith("_note"))
            writer.writerow([name, video, *[_csv(row.get(k)) for k in columns], note])
        for stat in ("mean", "std"):
            values = [_csv(system.get(k) if k in SET_METRICS and stat == "mean" else system[stat].get(k))
                      for k in columns]
            writer.writerow([name, stat, *values, ""])
    return out.getvalue()


def _csv(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def write_reports(results: dict, out_dir) -> dict[str, Path]:
    """results.json, results.csv, results.md in out_dir (each under a temp name, then renamed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = {"json": json.dumps(results, indent=1, default=str) + "\n", "csv": csv_text(results),
             "md": markdown(results)}
    paths = {}
    for suffix, text in texts.items():
        paths[suffix] = out_dir / f"results.{suffix}"
        with atomic_path(paths[suffix]) as tmp:
            tmp.write_text(text)
    return paths
