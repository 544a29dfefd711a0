"""The README's main command on its small profile: the whole workflow runs and the model LEARNS lip sync.

One run of `python demo.py --profile ci` (~3-4 min on 2 cores) in a subprocess, as a user runs it. Its bounds
are loose enough for seed-to-seed noise and tight enough to fail when training or the train / inference
alignment breaks: an untrained or audio-blind generator gives sync_corr ~0 and audio_gain ~1, and an audio
window one frame off between training and inference (the reference's bug) moves sync_lag off 0.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lipsync.video_io import probe_video

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(r"^demo: sync_corr=(-?\d+\.\d\d) baseline_corr=(-?\d+\.\d\d) syncnet_acc=(\d\.\d\d) "
                       r"audio_gain=(\d+\.\d\d) seconds=(\d+)$")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("demo_cwd")
    proc = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--output_root", str(cwd / "out"),
                           "--profile", "ci"], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc.stdout.strip().splitlines()


def test_demo_prints_its_numbers_last_and_writes_the_results(demo_run):
    cwd, lines = demo_run
    match = LAST_LINE.match(lines[-1])
    assert match, lines[-1]
    metrics = json.loads((cwd / "out" / "results" / "metrics.json").read_text())
    assert float(match.group(1)) == pytest.approx(metrics["sync_corr"], abs=0.006)
    video = probe_video(cwd / "results" / "demo.mp4")  # copied next to where the user ran it
    assert video.num_frames >= 50 and video.width == 2 * 2 * 128  # input | output, each upscaled 2x
    assert (cwd / "out" / "results" / "mouth_opening.png").stat().st_size > 10_000
    for stage in ("data", "codec", "preprocess", "syncnet", "generator", "merge", "inference", "evaluate"):
        assert stage in metrics["stage_seconds"]


def test_demo_learned_lip_sync_on_held_out_faces_and_speech(demo_run):
    cwd, _ = demo_run
    m = json.loads((cwd / "out" / "results" / "metrics.json").read_text())
    assert m["sync_corr"] >= 0.6, m  # the output's mouth follows the driving speech (0.93 when set)
    assert abs(m["baseline_corr"]) <= 0.3, m  # the input's mouth does not
    assert m["sync_lag"] == 0, m  # and follows it in step, not one frame early or late
    assert m["syncnet_acc"] >= 0.6, m
    assert m["audio_gain"] >= 1.3, m  # 1.83 when set
    assert m["lse_c_output"] > m["lse_c_input"] and m["lse_d_output"] < m["lse_d_input"], m  # the expert agrees
    for region in ("face", "mouth"):  # against the rendered ground truth: measured, in range
        assert 0 < m[f"ssim_{region}_output"] < 1 and 10 < m[f"psnr_{region}_output"] < 100, m
    assert np.isfinite(m["seconds"])


def test_the_filelists_command_the_demo_records_makes_the_same_lists(demo_run, tmp_path):
    """filelists_synthetic/README.md says how the lists were made: that command, run as a user would (in another
    folder, with a dataset name that is none of the shipped ones), writes the same lists there."""
    cwd, _ = demo_run
    made = cwd / "out" / "filelists_synthetic"
    readme = (made / "README.md").read_text().splitlines()
    command = shlex.split(readme[readme.index("Command:") + 2].strip())
    assert command[:2] == ["python", "make_filelists.py"] and "synthetic" in command
    proc = subprocess.run([sys.executable, str(ROOT / "make_filelists.py"), *command[2:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "val", "test"):
        assert (tmp_path / "filelists_synthetic" / f"{split}.txt").read_text() == (made / f"{split}.txt").read_text()


def test_reruns_start_clean_but_never_delete_a_folder_the_demo_did_not_make(tmp_path):
    from lipsync.demo.pipeline import MARKER, _fresh_output_root
    from lipsync.errors import UserError

    users = tmp_path / "users_folder"
    (users / "data").mkdir(parents=True)
    (users / "data" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not made by the demo"):
        _fresh_output_root(users)
    assert (users / "data" / "thesis.tex").exists()

    demo = tmp_path / "demo_output"
    _fresh_output_root(demo)  # new folder: marked
    (demo / "data" / "raw").mkdir(parents=True)
    (demo / "data" / "raw" / "old.mp4").write_text("last run")
    (demo / "notes.txt").write_text("kept")
    _fresh_output_root(demo)
    assert (demo / MARKER).exists() and not (demo / "data").exists() and (demo / "notes.txt").exists()
