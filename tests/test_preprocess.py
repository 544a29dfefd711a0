"""video_preprocess.py + audio_preprocess.py end to end with the tiny VAE / Wav2Vec2 at 64 px (16x16 latents).

The raw tree mixes a real GRID clip (mpeg1 + mp2 44.1 kHz stereo), a synthetic talking face (h264 + aac 44.1 kHz
stereo), a clip with a faceless gap, a text file named .mp4 and a faceless video (tests/media.py). The scripts run
in-process (main(argv)); one subprocess checks the one-line error and exit code of a real command line.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

import audio_preprocess
import video_preprocess
from lipsync.audio import load_audio
from lipsync.faces import crop_faces
from lipsync.files import temp_path
from lipsync.latent_codec import LatentCodec, mask_lower_half, uint8_to_model
from lipsync.timing import AUDIO_SAMPLE_RATE, num_feature_frames
from lipsync.video_io import iter_frames, probe_video
from lipsync.video_writer import write_video

from media import write_media

ROOT = Path(__file__).resolve().parents[1]
CLIPS = {"grid/lwbsza": "grid", "synthetic/face5": "talking_h264"}  # dataset folder: clip (conftest `clips`)
GAP = range(20, 30)  # grey frames of gap.mp4: no face


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * AUDIO_SAMPLE_RATE)) / AUDIO_SAMPLE_RATE
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def run(script, argv, exit_code: int = 0) -> str:
    """Call script.main(argv) in-process; its stdout (the summary). exit_code: what it must exit with (1: some
    item failed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            script.main([str(a) for a in argv])
            code = 0
        except SystemExit as stop:
            code = stop.code
    assert code == exit_code, out.getvalue()
    return out.getvalue()


def video_args(raw, out, tiny_models, *extra):
    return ["--data_root", raw, "--output_root", out, "--codec", tiny_models["vae"], "--image_size", 64, *extra]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_models, clips):
    """(raw root, output root, summary of the first run)."""
    root = tmp_path_factory.mktemp("preprocess")
    raw, out = root / "raw", root / "out"
    for folder, name in CLIPS.items():
        (raw / folder).parent.mkdir(parents=True, exist_ok=True)
        (raw / folder).with_suffix(clips[name].path.suffix).symlink_to(clips[name].path)
    grid = list(iter_frames(clips["grid"].path))
    grey = np.full_like(grid[0], 128)
    write_video(raw / "grid" / "gap.mp4", grid[:GAP.start] + [grey] * len(GAP) + grid[GAP.stop:50], 25,
                audio=tone(2.0))
    (raw / "broken.mp4").write_text("not a video")
    write_video(raw / "faceless.mp4", [np.full((64, 64, 3), 90, np.uint8)] * 50, 25, audio=tone(2.0))
    # --no_scene_split: the grey gap would be a shot of its own (tests/test_curation.py covers shots)
    summary = run(video_preprocess, video_args(raw, out, tiny_models, "--no_scene_split"), exit_code=1)
    return raw, out, summary


def test_clips_become_dataset_folders(dataset, tiny_models, clips):
    _, out, _ = dataset
    codec = LatentCodec.from_pretrained(tiny_models["vae"])
    for folder, name in CLIPS.items():
        info = probe_video(clips[name].path)
        latents = load_file(out / folder / "latents.safetensors")
        meta = json.loads((out / folder / "meta.json").read_text())
        n = info.num_frames  # a face in every frame
        assert latents["full"].shape == latents["masked"].shape == (n, 4, 16, 16)
        assert latents["full"].dtype == latents["masked"].dtype == torch.float16
        assert torch.equal(latents["frame_index"], torch.arange(n))

        wav = sf.info(str(out / folder / "audio.wav"))
        assert (wav.samplerate, wav.channels, wav.subtype) == (16000, 1, "PCM_16")
        assert wav.frames == len(load_audio(clips[name].path))  # the source's whole audio track, at 16 kHz

        assert meta["source_fps"] == 25 and meta["num_frames"] == n and meta["dropped_frames"] == []
        assert (meta["image_size"], meta["codec"], meta["latent_shape"]) == (64, tiny_models["vae"], [4, 16, 16])
        assert meta["scaling_factor"] == codec.scaling_factor and meta["audio_samples"] == wav.frames
        assert len(meta["boxes"]) == n and meta["face_recipe"]["pads"] == [0, 10, 0, 0] and meta["code_version"]

        # row 0 is the encoding of frame 0 cropped with the recorded box: latents, boxes and indices agree
        frame = next(iter_frames(clips[name].path))
        images = uint8_to_model(crop_faces(frame[None], np.array(meta["boxes"][:1]), 64), "cpu", torch.float32)
        torch.testing.assert_close(latents["full"][0].float(), codec.encode(images)[0], atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(latents["masked"][0].float(), codec.encode(mask_lower_half(images))[0],
                                   atol=2e-2, rtol=1e-2)


def test_faceless_frames_are_dropped_not_shifted(dataset):
    _, out, _ = dataset
    latents = load_file(out / "grid" / "gap" / "latents.safetensors")
    meta = json.loads((out / "grid" / "gap" / "meta.json").read_text())
    kept = [k for k in range(50) if k not in GAP]
    assert latents["frame_index"].tolist() == kept and len(latents["full"]) == len(kept) == len(meta["boxes"])
    assert meta["dropped_frames"] == list(GAP) and meta["num_frames"] == 50


def test_bad_videos_are_reported_and_skipped(dataset):
    _, out, summary = dataset
    lines = summary.strip().splitlines()
    assert lines[0].startswith("3 done, 0 skipped, 2 failed (of 5 videos)")
    failures = sorted(line.split(":")[0].split()[-1] for line in lines[1:])
    assert failures == ["broken.mp4", "faceless.mp4"] and len(lines) == 3
    assert "no face" in summary and not (out / "faceless").exists() and not (out / "broken").exists()


def test_next_videos_first_pass_overlaps_yet_outcomes_stay_in_order(dataset, tiny_models, tmp_path):
    """VideoPreprocessor.run detects the next video in a background thread while it encodes this one: outcomes
    still come in job order, a failing first pass becomes that video's outcome, and the worker's time adds up."""
    from lipsync.preprocess.video import VideoPreprocessor, VideoSettings, video_jobs

    raw, _, _ = dataset
    videos = [raw / "broken.mp4", raw / "grid" / "gap.mp4", raw / "faceless.mp4", raw / "synthetic" / "face5.mp4"]
    start = time.perf_counter()
    # scene_split off, as in the dataset fixture: gap.mp4's grey stretch would be a shot of its own
    settings = VideoSettings(image_size=64, codec=tiny_models["vae"], scene_split=False)
    outcomes = list(VideoPreprocessor(settings).run(video_jobs(videos, raw, tmp_path)))
    wall = time.perf_counter() - start
    assert [(o.name, o.status) for o in outcomes] == [("broken.mp4", "failed"), ("grid/gap.mp4", "done"),
                                                      ("faceless.mp4", "failed"), ("synthetic/face5.mp4", "done")]
    assert "no face" in outcomes[2].message and (tmp_path / "grid" / "gap" / "meta.json").is_file()
    assert all(0 <= o.detect_s <= o.total_s for o in outcomes) and sum(o.total_s for o in outcomes) <= wall


def test_stopping_early_abandons_the_next_videos_detection(dataset, tiny_models, tmp_path):
    """Ctrl-C (the consumer closing run()) must not wait for the background pass 1 of a long next video."""
    from lipsync.preprocess.video import VideoPreprocessor, VideoSettings, video_jobs

    raw = tmp_path / "raw"
    long_video = raw / "long.mp4"
    write_video(long_video, [np.full((64, 64, 3), 90, np.uint8)] * 800, 25, audio=tone(32.0))
    (raw / "gap.mp4").symlink_to(dataset[0] / "grid" / "gap.mp4")
    preprocessor = VideoPreprocessor(VideoSettings(image_size=64, codec=tiny_models["vae"]))
    detect, batches = preprocessor.detector.detect, []

    def slow_detect(frames):  # the real detector, slowed down: 50 batches x 50 ms for the long video
        if len(frames) and frames[0].mean() == 90:
            batches.append(len(frames))
            time.sleep(0.05)
        return detect(frames)

    preprocessor.detector.detect = slow_detect
    outcomes = preprocessor.run(video_jobs([raw / "gap.mp4", long_video], raw, tmp_path / "out"))
    assert next(outcomes).status == "done"
    outcomes.close()
    stopped_at = len(batches)
    time.sleep(0.2)
    assert stopped_at < 50 and len(batches) == stopped_at  # abandoned, and nothing runs on after close()


def test_rerun_skips_finished_and_completes_interrupted(dataset, tiny_models):
    raw, out, _ = dataset
    finished, interrupted = out / "synthetic" / "face5", out / "grid" / "lwbsza"
    mtimes = {p: p.stat().st_mtime_ns for p in finished.iterdir()}
    (interrupted / "meta.json").unlink()  # killed before the last write ...
    temp_path(interrupted / "latents.safetensors").write_bytes(b"half a file")  # ... or during the first one
    summary = run(video_preprocess, video_args(raw, out, tiny_models, "--no_scene_split"), exit_code=1)
    assert summary.startswith("1 done, 2 skipped, 2 failed (of 5 videos)")
    assert {p: p.stat().st_mtime_ns for p in finished.iterdir()} == mtimes
    assert sorted(p.name for p in interrupted.iterdir()) == ["audio.wav", "latents.safetensors", "meta.json"]


def test_30fps_sharded_two_workers(tmp_path, tiny_models):
    """30 fps sources come out at 25 fps; --shard 0/2 takes a and c; two spawned CPU workers; --box, no detector."""
    raw = tmp_path / "raw"
    for name in ("a", "b", "c"):
        write_video(raw / f"{name}.mp4", [np.full((48, 64, 3), 100, np.uint8)] * 90, 30, audio=tone(3.0))
    summary = run(video_preprocess, video_args(raw, tmp_path / "out", tiny_models, "--box", 4, 44, 10, 50,
                                               "--shard", "0/2", "--devices", 0, "--num_workers", 2))
    assert summary.startswith("2 done, 0 skipped, 0 failed (of 2 videos)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "c"]
    meta = json.loads((tmp_path / "out" / "a" / "meta.json").read_text())
    assert (meta["source_fps"], meta["num_frames"]) == (30, 75)
    assert load_file(tmp_path / "out" / "a" / "latents.safetensors")["frame_index"].tolist() == list(range(75))
    # the fixed box (top 4, bottom 44, left 10, right 50) + default pads (10 px more chin), squared with margin
    assert meta["boxes"][0] == meta["boxes"][-1] and meta["boxes"][0][0] < 10 and meta["boxes"][0][3] > 54


def test_audio_features(dataset, tiny_models, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset[1], data)
    assert run(audio_preprocess, ["--data_root", data, "--audio_encoder", tiny_models["wav2vec2"]]).startswith(
        "3 done, 0 skipped, 0 failed (of 3 folders)")
    for folder in ("grid/lwbsza", "synthetic/face5", "grid/gap"):
        stored = torch.load(data / folder / "wav2vec2.pt", weights_only=True)
        num_samples = sf.info(str(data / folder / "audio.wav")).frames
        assert stored["features"].shape == (num_feature_frames(num_samples), 32)
        assert stored["features"].dtype == torch.float16
        assert (stored["model_id"], stored["hidden_size"], stored["num_samples"]) == \
               (tiny_models["wav2vec2"], 32, num_samples)

    mtime = (data / "grid/lwbsza/wav2vec2.pt").stat().st_mtime_ns
    assert run(audio_preprocess, ["--data_root", data, "--audio_encoder", tiny_models["wav2vec2"]]).startswith(
        "0 done, 3 skipped")
    assert (data / "grid/lwbsza/wav2vec2.pt").stat().st_mtime_ns == mtime

    other = tmp_path / "other_encoder"  # same weights under another id: must not mix silently
    other.symlink_to(tiny_models["wav2vec2"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        audio_preprocess.main(["--data_root", str(data), "--audio_encoder", str(other)])
    assert exit_info.value.code == 1 and out.getvalue().count("--overwrite") == 3
    assert run(audio_preprocess, ["--data_root", data, "--audio_encoder", other, "--overwrite"]).startswith(
        "3 done")
    assert torch.load(data / "grid/lwbsza/wav2vec2.pt", weights_only=True)["model_id"] == str(other)


def test_audio_preprocess_missing_wav_command_line(dataset, tiny_models, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset[1] / "grid" / "lwbsza", data / "lwbsza")
    (data / "lwbsza" / "audio.wav").unlink()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "audio_preprocess.py", "--data_root", str(data), "--audio_encoder",
                             tiny_models["wav2vec2"], "--device", "cpu"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: 1 of 1 folders failed"
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("  failed")]
    assert len(failed) == 1 and "lwbsza" in failed[0] and "no audio.wav" in failed[0]


@pytest.fixture(scope="module")
def command_lines(dataset, clips, tiny_models, tmp_path_factory):
    """The preprocessing scripts as real processes, all started at once (each pays seconds of imports):
    - "mixed": video_preprocess.py over a good clip, a text file named .mp4, a 1-frame clip and a clip cut short
      (its MP4 header promises 75 frames; half of its bytes are there);
    - "output_root_is_a_file": video_preprocess.py writing into a file;
    - "missing_encoder": audio_preprocess.py with a local encoder folder that does not exist.
    -> {name: (returncode, stdout, stderr, root)}."""
    root = tmp_path_factory.mktemp("command_lines")
    raw = root / "raw"
    raw.mkdir()
    (raw / "good.mpg").symlink_to(clips["grid"].path)
    (raw / "broken.mp4").write_text("not a video")
    frames, speech = list(iter_frames(clips["grid"].path)), load_audio(clips["grid"].path)
    write_media(raw / "one_frame.mp4", frames[:1], 25, speech[:640])
    whole = write_media(root / "whole.mp4", frames, 25, speech, faststart=True)
    (raw / "cut_short.mp4").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    (root / "a_file").write_text("")
    commands = {
        "mixed": ["video_preprocess.py", *video_args(raw, root / "out", tiny_models)],
        "output_root_is_a_file": ["video_preprocess.py", *video_args(raw, root / "a_file", tiny_models)],
        "missing_encoder": ["audio_preprocess.py", "--data_root", dataset[1], "--audio_encoder", "./no_such_encoder",
                            "--device", "cpu"],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, str(ROOT / command[0]), *map(str, command[1:])], cwd=root,
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, command in commands.items()}
    outputs = {name: proc.communicate(timeout=300) for name, proc in procs.items()}
    return {name: (proc.returncode, *outputs[name], root) for name, proc in procs.items()}


def test_video_preprocess_exits_1_when_any_video_failed_and_says_why(command_lines):
    """A scripted pipeline must stop when videos failed, while the good ones are kept; a clip too short to train
    on fails with that reason; a clip cut short is kept with a warning (its decodable start is good data)."""
    code, stdout, stderr, root = command_lines["mixed"]
    assert code == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "error: 2 of 4 videos failed (listed above; the others are done)"
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("2 done, 0 skipped, 2 failed (of 4 videos)")
    assert lines[1].startswith("  warning  cut_short.mp4: truncated or damaged: its header promises 75 frames")
    assert lines[2].startswith("  failed  broken.mp4: cannot read video")
    assert lines[3] == ("  failed  one_frame.mp4: too short to train on: a face in 1 of its 1 frames at 25 fps, "
                        "and a training window is 5 frames")
    assert len(lines) == 4
    meta = json.loads((root / "out" / "cut_short" / "meta.json").read_text())
    assert meta["header_frames"] == 75 and 20 < meta["num_frames"] < 60
    assert (root / "out" / "good" / "meta.json").is_file() and not (root / "out" / "one_frame").exists()


def test_unusable_output_root_and_missing_encoder_folder_fail_at_once_in_one_line(command_lines):
    """Nothing is decoded before the output root is known to be usable: no summary, one line."""
    for case, message in (("output_root_is_a_file", "error: --output_root: {root}/a_file is a file, not a folder"),
                          ("missing_encoder", "error: audio encoder folder ./no_such_encoder not found (a hub id is "
                                              "'name' or 'org/name')")):
        code, stdout, stderr, root = command_lines[case]
        assert code == 1 and stdout == "", (case, stdout)
        assert stderr.strip().splitlines() == [message.format(root=root)], (case, stderr)


KILLED_WHILE_WRITING = """
import os, signal, sys
from lipsync.data import folder
from lipsync.files import temp_path
import video_preprocess

def killed_while_writing_the_audio(path, samples, *args, **kwargs):  # latents.safetensors is written by now
    temp_path(path).write_bytes(b"RIFF" + bytes(100))  # part of audio.wav, under its temp name
    os.kill(os.getpid(), signal.SIGKILL)

folder.write_wav = killed_while_writing_the_audio
video_preprocess.main(sys.argv[1:])
"""


def test_a_kill_while_a_folder_is_written_leaves_nothing_later_steps_read(tiny_models, clips, tmp_path, monkeypatch):
    """video_preprocess.py killed (SIGKILL) between the files of a dataset folder: no later step lists it (the
    audio stage, make_filelists, a filelist naming it), and a rerun completes it."""
    from lipsync.data import filelists
    from lipsync.data.folder import find_video_folders
    from lipsync.errors import UserError
    from lipsync.preprocess.audio import encode_dataset_audio

    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    (raw / "clip.mpg").symlink_to(clips["grid"].path)
    args = video_args(raw, out, tiny_models, "--box", 60, 200, 120, 240)
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, *map(str, args)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(p.name for p in (out / "clip").iterdir()) == [".audio.tmp.wav", "latents.safetensors"]

    assert find_video_folders(out) == []
    with pytest.raises(UserError, match="no finished dataset folders"):
        encode_dataset_audio(out, tiny_models["wav2vec2"])
    with pytest.raises(UserError, match="no finished video folder"):
        filelists.make_filelists(out, tmp_path / "filelists_x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "filelists_x").mkdir()
    (tmp_path / "filelists_x" / "train.txt").write_text("clip\n")
    with pytest.warns(UserWarning, match="not finished"), pytest.raises(UserError, match="lists no video folder"):
        filelists.read_filelist("x", "train", out)

    assert run(video_preprocess, args).startswith("1 done, 0 skipped, 0 failed")
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["audio.wav", "latents.safetensors", "meta.json"]
    assert find_video_folders(out) == ["clip"]
