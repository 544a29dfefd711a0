"""Data curation (issue #24): shots split at scene cuts, sync scored per dataset folder, filelists that drop the
out-of-sync folders, datasets that shift the audio by the measured offset. Corrupted clips with a known truth come
from lipsync.demo.corrupt."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file
from test_preprocess import run, tone, video_args

import video_preprocess
from lipsync.demo.corrupt import make_corrupt_clip
from lipsync.demo.synthetic import random_identity, render_frame
from lipsync.video_writer import write_video


@pytest.fixture(scope="module")
def shots(tmp_path_factory, tiny_models):
    """A clip with a hard cut at frame 37 to another person, then a grey (faceless) shot and a 0.2 s shot."""
    root = tmp_path_factory.mktemp("shots")
    raw, out = root / "raw", root / "out"
    make_corrupt_clip(raw / "spk" / "cut.mp4", "cut", seed=3, index=0, seconds=3.0, cut=37)
    frames = [render_frame(random_identity(np.random.default_rng(1)), 0.3, t / 25, 128) for t in range(30)]
    grey = [np.full((128, 128, 3), 128, np.uint8)] * 20
    short = [render_frame(random_identity(np.random.default_rng(2)), 0.5, t / 25, 128) for t in range(5)]
    write_video(raw / "spk" / "mixed.mp4", frames + grey + short + frames, 25, audio=tone(3.4))
    summary = run(video_preprocess, video_args(raw, out, tiny_models, "--pads", -15, -4, -3, -3))
    return raw, out, summary


def test_a_hard_cut_splits_the_video_into_shot_folders(shots):
    _, out, summary = shots
    first, second = out / "spk" / "cut_shot000", out / "spk" / "cut_shot001"
    meta = json.loads((first / "meta.json").read_text())
    assert not (out / "spk" / "cut").exists()
    assert meta["shot"]["cuts"] == [37] and meta["shot"]["kept"] == [0, 1]  # the cut frame exactly
    assert (meta["num_frames"], meta["shot"]["start_frame"]) == (37, 0)
    second_meta = json.loads((second / "meta.json").read_text())
    assert second_meta["shot"]["start_frame"] == 37 and second_meta["num_frames"] == 75 - 37
    assert load_file(second / "latents.safetensors")["frame_index"].tolist() == list(range(38))  # shot-local
    assert meta["audio_samples"] == 37 * 640 and second_meta["audio_samples"] == 3 * 16000 - 37 * 640


def test_faceless_and_short_shots_are_dropped_and_reported(shots, tiny_models):
    raw, out, summary = shots
    kept = sorted(p.name for p in (out / "spk").iterdir() if p.name.startswith("mixed"))
    assert kept == ["mixed_shot000", "mixed_shot003"], summary
    assert "4 shots, 2 kept" in summary and "shot 1 (frames 30-49): no face" in summary
    assert "shot 2 (frames 50-54): 0.20 s < --min_shot_seconds" in summary
    again = run(video_preprocess, video_args(raw, out, tiny_models, "--pads", -15, -4, -3, -3))
    assert again.startswith("0 done, 2 skipped"), again  # resumable: every kept shot is there
