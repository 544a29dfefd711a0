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


# ------------------------------------------------------------------------------------------------ shifted windows

def test_a_clip_with_late_audio_trains_like_the_in_sync_clip_after_the_shift(tmp_path):
    """Audio k frames late (offset -k) + its sync.json: the same expert and generator audio windows as in sync."""
    import torch

    from lipsync import timing
    from lipsync.data.datasets import GeneratorDataset
    from lipsync.data.folder import VideoLatents, write_sync, write_video_folder

    n, k = 40, 3
    latents = torch.randn(n, 4, 8, 8)
    features = torch.randn(2 * n + 1, 16)
    late = torch.cat([torch.zeros(2 * k, 16), features])[:len(features)]  # feature i of `late` = features[i - 2k]
    for name, feats in (("sync", features), ("late", late)):
        write_video_folder(tmp_path / name, latents, latents, torch.arange(n), {"name": name}, features=feats,
                           model_id="m")
    write_sync(tmp_path / "late", {"offset": -k, "confidence": 5.0})
    in_sync, shifted = VideoLatents(tmp_path / "sync"), VideoLatents(tmp_path / "late")
    assert shifted.offset == -k and in_sync.offset == 0
    assert set(shifted.starts) <= set(in_sync.starts) and len(shifted.starts) >= n - 2 * timing.SYNCNET_T - k
    compared = 0
    for s in shifted.starts:
        f = int(shifted.frame_index[s])
        if 2 * (f + k) + 2 * timing.SYNCNET_T > len(late):  # the late track ends first: its last windows clamp
            continue
        compared += 1
        torch.testing.assert_close(timing.syncnet_audio_window(late, shifted.audio_frame(f)),
                                   timing.syncnet_audio_window(features, f))
        if 2 <= f and f + timing.SYNCNET_T + k + 3 <= n:  # generator windows reach 2 frames before, 3 after
            torch.testing.assert_close(timing.generator_audio_windows(late, shifted.audio_frames_of(s)),
                                       timing.generator_audio_windows(features, in_sync.frames(s)))
    assert compared >= n - 2 * timing.SYNCNET_T - 2 * k
    item = GeneratorDataset([tmp_path / "late"], samples_per_epoch=4)[0]  # the dataset reads it the same way
    assert item["audio"].shape == (timing.SYNCNET_T, 10, 16)


def test_the_offset_sign_is_the_evaluators():
    """evaluation.sync.shift_audio(audio, k) makes offset k (sound early); its frame f's audio is at f - k."""
    from lipsync import timing
    from lipsync.evaluation.sync import shift_audio

    audio = np.arange(25 * 640, dtype=np.float32)
    early = shift_audio(audio, 2)
    frame = 10
    at = timing.audio_frame(frame, 2) * 640
    assert early[at] == audio[frame * 640]


# ------------------------------------------------------------------------------------------------ scoring

@pytest.fixture(scope="module")
def scored(tmp_path_factory, trained_expert):
    """Held-out people (never in the expert's training): clean, audio shifted 3 early / 2 late, another person's
    audio; and two bad folders: no audio features, too short. Scored by score_sync.py with the trained expert."""
    import shutil

    import audio_preprocess
    import score_sync

    root = tmp_path_factory.mktemp("scored")
    raw, out = root / "raw", root / "out"
    specs = {"p0/clean": ("clean", 0), "p1/early3": ("shifted", 3), "p2/late2": ("shifted", -2),
             "p3/swapped": ("swapped", 0)}
    for i, (name, (kind, offset)) in enumerate(specs.items()):
        make_corrupt_clip(raw / f"{name}.mp4", kind, seed=77, index=i, seconds=4.0, offset=offset)
    make_corrupt_clip(raw / "p4" / "short.mp4", "clean", seed=77, index=4, seconds=0.2)
    pads = [str(v) for v in trained_expert.pads]
    run(video_preprocess, ["--data_root", raw, "--output_root", out, "--codec", trained_expert.codec,
                           "--image_size", 32, "--pads", *pads, "--no_scene_split"])
    run(audio_preprocess, ["--data_root", out, "--audio_encoder", trained_expert.wav2vec2, "--device", "cpu"])
    shutil.copytree(out / "p0" / "clean", out / "p5" / "noaudio")
    (out / "p5" / "noaudio" / "wav2vec2.pt").unlink()
    summary = run(score_sync, ["--data_root", out, "--syncnet", trained_expert.checkpoint, "--max_offset", 8])
    return out, summary


def test_planted_shifts_are_measured_and_bad_folders_reported(scored):
    from lipsync.data.folder import read_sync

    out, summary = scored
    print(summary)
    records = {name: read_sync(out / name) for name in ("p0/clean", "p1/early3", "p2/late2", "p3/swapped")}
    print({name: (r["offset"], r["confidence"]) for name, r in records.items()})
    assert summary.startswith("4 done, 0 skipped, 2 failed (of 6 folders)")
    assert "p4/short: shorter than the scoring window" in summary and "p5/noaudio: no audio features" in summary
    assert abs(records["p0/clean"]["offset"]) <= 1
    assert abs(records["p1/early3"]["offset"] - 3) <= 1 and abs(records["p2/late2"]["offset"] + 2) <= 1
    # (whether mismatched audio gets a lower confidence is measured over many clips in bench/bench_curation.py:
    # the tests' small expert is too noisy for one clip each)
    assert records["p1/early3"]["fingerprint"] == records["p0/clean"]["fingerprint"]


def test_rescoring_skips_what_the_same_expert_scored(scored, trained_expert):
    import score_sync

    out, _ = scored
    again = run(score_sync, ["--data_root", out, "--syncnet", trained_expert.checkpoint, "--max_offset", 8])
    assert again.startswith("0 done, 4 skipped, 2 failed")


def test_score_sync_exits_1_when_nothing_could_be_scored(scored, trained_expert, capsys):
    import score_sync

    out, _ = scored
    summary = run(score_sync, ["--data_root", out / "p5", "--syncnet", trained_expert.checkpoint], exit_code=1)
    assert "0 done, 0 skipped, 1 failed" in summary
    assert "none of the 1 folders could be scored" in capsys.readouterr().err


def test_filelists_drop_out_of_sync_folders_with_reasons(scored, tmp_path, monkeypatch):
    """make_filelists.py --min_sync_conf --max_offset: low confidence, large offsets and unscored folders go to
    dropped.txt with the reason, never into a split."""
    import shutil

    import make_filelists
    from lipsync.data.folder import read_sync, write_sync

    out = shutil.copytree(scored[0], tmp_path / "data", symlinks=True)
    monkeypatch.chdir(tmp_path)
    record = read_sync(out / "p3" / "swapped")
    write_sync(out / "p3" / "swapped", {**record, "confidence": 0.0})  # as a good expert scores it
    conf = min(read_sync(out / name)["confidence"] for name in ("p0/clean", "p1/early3", "p2/late2")) - 1e-3
    run(make_filelists, ["--data_root", out, "--name", "cur", "--val", 0, "--test", 0, "--min_sync_conf", conf,
                         "--max_offset", 2])
    dropped = dict(line.split("\t") for line in (tmp_path / "filelists_cur" / "dropped.txt").read_text().splitlines())
    train = (tmp_path / "filelists_cur" / "train.txt").read_text().split()
    assert set(dropped) >= {"p3/swapped", "p4/short", "p5/noaudio", "p1/early3"}, dropped
    assert dropped["p3/swapped"].startswith("confidence") and dropped["p4/short"].startswith("not scored")
    assert "beyond +-2" in dropped["p1/early3"]
    assert "p0/clean" in train and not set(train) & set(dropped)
    assert "sync filter" in (tmp_path / "filelists_cur" / "README.md").read_text()


def test_syncnet_v2_scores_shot_folders_from_their_source_frames(shots, tmp_path):
    """--syncnet_v2: crops of the source video at the shot's own frames (a shot folder counts from its start)."""
    import score_sync
    from lipsync.data.folder import read_sync

    from eval_media import random_syncnet_v2_weights

    weights = random_syncnet_v2_weights(tmp_path / "syncnet_v2.model")
    _, out, _ = shots
    summary = run(score_sync, ["--data_root", out / "spk", "--syncnet_v2", weights, "--max_offset", 3])
    assert summary.startswith("4 done, 0 skipped, 0 failed"), summary
    record = read_sync(out / "spk" / "cut_shot001")
    assert record["scorer"] == "syncnet_v2" and record["frames"] == [0, 38] and record["windows"] == 38 - 5
    assert len(record) and -3 <= record["offset"] <= 3


def test_a_codec_saved_twice_is_the_same_model_and_a_changed_one_is_not(tiny_models, tmp_path):
    """Folders made with one codec saved at two paths (the curation experiment fits it twice from one seed) are
    scored; a codec whose weights differ is still refused."""
    import shutil

    from lipsync.data.curation import _same_model

    codec = tiny_models["vae"]
    copy = shutil.copytree(codec, tmp_path / "copy")
    assert _same_model(str(codec), str(copy)) and _same_model("stabilityai/sd-vae-ft-mse", "stabilityai/sd-vae-ft-mse")
    changed = shutil.copytree(codec, tmp_path / "changed")
    weights = next(p for p in changed.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert not _same_model(str(codec), str(changed))
    assert not _same_model(str(codec), "stabilityai/sd-vae-ft-mse")
