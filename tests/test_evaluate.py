"""evaluate.py end to end on tiny real models: both modes (this project's checkpoint: lip-sync then score, both
protocols; any system's folders side by side), JSON / CSV / Markdown written, a rerun served from the per-video
cache, and bad inputs as one line and exit code 1. All weights are random, saved in the published formats."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch

import evaluate
from lipsync import model_zoo
from lipsync.checkpoint import encode_model_card
from models.unet import AUDIO_POSITIONS, build_unet

from eval_media import (
    random_arcface_onnx,
    random_inception_weights,
    random_syncnet_v2_weights,
    talking_clip,
    write_clip,
)

SECONDS = 1.6  # 40 frames: 35 SyncNet windows
FAST = ["--weights_check", "architecture", "--min_track", "10", "--min_face_size", "20", "--fid_stride", "4",
        "--device", "cpu", "--no_progress"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    random_syncnet_v2_weights(folder / "syncnet_v2.model")
    random_inception_weights(folder / "pt_inception-2015-12-05-6726825d.pth", talking_clip(50, 0.4)[0])
    random_arcface_onnx(folder / "w600k_r50.onnx")
    return folder


@pytest.fixture(scope="module")
def test_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("test_videos")
    for seed in (31, 32):
        write_clip(folder / f"person{seed}.mp4", seed, SECONDS)
    return folder


@pytest.fixture(scope="module")
def generator(tiny_models):
    """A tiny generator checkpoint (64 px crops) whose card names the tiny codec and audio encoder."""
    config = model_zoo.tiny_unet_config()
    torch.manual_seed(0)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": tiny_models["wav2vec2"],
            "audio_hidden_size": 32, "codec": tiny_models["vae"], "image_size": 64,
            "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    path = tiny_models["root"] / "eval_generator.ckpt"
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def reconstruction(generator, test_videos, weights_dir, trained_expert, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_reconstruction")
    args = ["--checkpoint_path", generator, "--videos", test_videos, "--weights_dir", weights_dir, "--output_dir",
            out, "--expert", trained_expert.checkpoint, "--expert_pads", *trained_expert.pads, *FAST]
    return out, [str(a) for a in args], evaluate.main([str(a) for a in args])


def test_reconstruction_scores_every_metric_and_writes_three_tables(reconstruction, capsys):
    out, _, results = reconstruction
    system = results["systems"]["ours"]
    assert sorted(system["videos"]) == ["person31", "person32"]
    for row in system["videos"].values():
        for key in ("lse_d", "lse_c", "av_offset", "expert_d", "expert_c", "expert_offset", "ssim_face",
                    "psnr_face", "ssim_mouth", "psnr_mouth", "csim"):
            assert np.isfinite(row[key]), (key, row)
        assert 0 < row["ssim_face"] < 1 and -1 <= row["csim"] <= 1
        assert row["ssim_mouth"] < row["ssim_face"] or row["psnr_mouth"] < row["psnr_face"]  # the mouth is redrawn
    assert np.isfinite(system["fid_face"]) and np.isfinite(system["fid_frame"])
    assert set(system["mean"]) >= {"lse_d", "csim"} and set(system["std"]) >= {"lse_d", "csim"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["systems"]["ours"]["mean"]["lse_d"] == pytest.approx(system["mean"]["lse_d"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["video"] for r in rows] == ["person31", "person32", "mean", "std"]
    assert rows[2]["fid_face"] and not rows[0]["fid_face"]  # FID: one number per system
    markdown = (out / "results.md").read_text()
    assert "| ours | 2 |" in markdown and "LSE-D" in markdown and "CSIM" in markdown and "±" in markdown
    assert not list(out.rglob(".*.tmp"))  # nothing half-written left behind
    assert sorted(p.name for p in (out / "generated" / "reconstruction").glob("*.mp4")) == ["person31.mp4",
                                                                                            "person32.mp4"]


def test_a_rerun_is_served_from_the_cache(reconstruction):
    out, args, first = reconstruction
    cached = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.json")}
    assert len(cached) == 2
    again = evaluate.main(args)
    assert again["systems"] == json.loads(json.dumps(first["systems"]))
    assert {p: p.stat().st_mtime_ns for p in cached} == cached  # nothing recomputed


def test_cross_protocol_scores_sync_only(generator, test_videos, weights_dir, tmp_path, capsys):
    args = ["--videos", test_videos, "--weights_dir", weights_dir, "--output_dir", tmp_path, "--protocol", "cross",
            "--seed", 3, *FAST]
    results = evaluate.main([str(a) for a in ["--checkpoint_path", generator, *args]])
    rows = results["systems"]["ours"]["videos"]
    assert sorted(rows) == ["person31__person32", "person32__person31"]  # video__driving speech
    assert all("lse_c" in row and "ssim_face" not in row and "csim" not in row for row in rows.values())
    assert "fid_face" not in results["systems"]["ours"]
    other = tmp_path / "other.ckpt"
    shutil.copy(generator, other)
    capsys.readouterr()  # the first run's messages (model loading) are not the error's
    line = _error(["--checkpoint_path", other, *args], capsys)  # kept outputs are another checkpoint's
    assert "holds outputs of another checkpoint" in line


def test_generated_folders_of_two_systems_side_by_side(reconstruction, test_videos, weights_dir, tmp_path, capsys):
    out, _, _ = reconstruction
    copies = tmp_path / "copies"
    shutil.copytree(test_videos, copies)  # a "system" that returns its input: perfect reconstruction
    results = evaluate.main([str(a) for a in [
        "--generated", out / "generated" / "reconstruction", copies, "--names", "ours", "identity",
        "--reference", test_videos, "--weights_dir", weights_dir, "--output_dir", tmp_path / "out",
        "--metrics", "lse", "quality", "fid", *FAST]])
    ours, identity = results["systems"]["ours"], results["systems"]["identity"]
    assert identity["mean"]["ssim_face"] == pytest.approx(1.0, abs=1e-5) and identity["mean"]["psnr_face"] == 100.0
    # identical sets: 0 up to the eigenvalue solver's noise on a rank-deficient covariance (-0.01 seen)
    assert abs(identity["fid_face"]) < 0.1 < ours["fid_face"] and abs(identity["fid_frame"]) < 0.1
    assert ours["mean"]["ssim_face"] < 1.0
    printed = capsys.readouterr().out
    assert "| ours | 2 |" in printed and "| identity | 2 |" in printed


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main([str(a) for a in argv])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_inputs_are_one_line_errors(test_videos, weights_dir, tmp_path, capsys):
    base = ["--output_dir", tmp_path / "out", "--device", "cpu", "--no_progress"]
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error(["--generated", test_videos, "--reference", test_videos, "--weights_dir", empty, *base], capsys)
    assert "syncnet_v2.model not found in --weights_dir" in line and "robots.ox.ac.uk" in line
    line = _error(["--generated", test_videos, "--reference", test_videos, "--weights_dir", weights_dir, *base],
                  capsys)
    assert "is not the published syncnet_v2.model" in line and "--weights_check architecture" in line
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(test_videos / "person31.mp4", partial)
    line = _error(["--generated", partial, "--reference", test_videos, "--weights_dir", weights_dir,
                   "--weights_check", "architecture", *base], capsys)
    assert "no generated video for 1 of the 2 reference videos" in line and "person32" in line
    assert "no such folder" in _error(["--generated", tmp_path / "nope", *base], capsys)
    listing = tmp_path / "list.txt"
    listing.write_text("person31\nnobody\n")
    line = _error(["--generated", test_videos, "--reference", listing, "--video_root", test_videos, *base], capsys)
    assert "list.txt:2: no video 'nobody'" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_one_pass_detects_each_video_once_for_every_metric(test_videos, weights_dir, trained_expert):
    """LSE (RetinaFace recipe), the expert, FID / SSIM crops and CSIM landmarks share one detector pass per video."""
    from lipsync.evaluation import runner
    from lipsync.faces import FaceDetector

    class CountingDetector(FaceDetector):  # the real detector, counting the frames it is given
        frames = 0

        def detect_with_landmarks(self, frames):
            CountingDetector.frames += len(frames)
            return super().detect_with_landmarks(frames)

    options = runner.EvalOptions(weights_dir=str(weights_dir), weights_check="architecture",
                                 expert=str(trained_expert.checkpoint), expert_pads=tuple(trained_expert.pads),
                                 min_track=10, min_face_size=20.0, fid_stride=4, device="cpu", cache=False,
                                 metrics=runner.METRICS)
    scorers = runner.Scorers.load(options, references=True)
    scorers.face_detector = CountingDetector()
    row = runner.score_video(scorers, test_videos / "person31.mp4", test_videos / "person32.mp4", None)
    assert {"lse_c", "expert_c", "ssim_mouth", "csim", "_features"} <= set(row)
    assert CountingDetector.frames == 2 * row["frames"] == 80  # the generated video once, the reference once
