"""Real-time avatars with a tiny generator on the GRID clip and real speech: preparation and its cache, the
streaming features against the offline encoder, streamed frames against lip_sync's (compared before encoding,
through its on_frame hook), silence, and bad chunks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lipsync import timing
from lipsync.audio import load_audio, write_wav
from lipsync.errors import UserError
from lipsync.faces import FaceDetector, face_boxes, paste_faces
from lipsync.inference import LipSyncOptions, lip_sync, load_models
from lipsync.realtime.avatar import Avatar, prepare_avatar
from lipsync.realtime.streaming import AvatarStream, FrameGenerator, StreamOptions
from lipsync.video_io import iter_frames, pingpong_indices

import media
from tiny_generator import write_tiny_generator

GRID = media.GRID.path  # 360x288, 25 fps, 75 frames
BOX = (60, 200, 120, 240)  # a fixed face box (top bottom left right): no detector batches to differ
FULL = dict(left_context_s=None, right_context_s=None, silence_db=None)  # the offline path's context


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_models):
    return load_models(write_tiny_generator(tiny_models, tiny_models["root"] / "realtime_generator.ckpt"),
                       device="cpu")


@pytest.fixture(scope="module")
def avatar_dir(models, tmp_path_factory):
    """GRID prepared with a fixed box, in batches of 8 (lip_sync's batch in the comparisons below)."""
    folder = tmp_path_factory.mktemp("avatars") / "grid"
    prepare_avatar(models, GRID, folder, box=BOX, batch_size=8)
    return folder


@pytest.fixture(scope="module")
def avatar(avatar_dir, models):
    return Avatar.load(avatar_dir, models)


@pytest.fixture(scope="module")
def pcm(speech):
    """1.92 s of real speech as 16-bit PCM (48 frames: whole batches of 8), and the same audio as a wav."""
    return np.round(speech[8000:8000 + 30720] * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def offline(models, pcm, tmp_path_factory):
    """lip_sync's frames (before H.264) for the same speech, face and box, and its features."""
    folder = tmp_path_factory.mktemp("offline")
    write_wav(folder / "speech.wav", pcm.astype(np.float32) / 32768)
    frames = []
    lip_sync(models, GRID, folder / "speech.wav", folder / "out.mp4", box=BOX, batch_size=8, progress=False,
             on_frame=lambda index, source, box, before, after: frames.append(after))
    audio = load_audio(folder / "speech.wav")
    np.testing.assert_array_equal(audio, pcm.astype(np.float32) / 32768)  # the wav holds exactly these samples
    return np.stack(frames), models.audio_encoder.encode(audio)


def chunked(pcm, ms):
    step = 16 * ms
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


def streamed_features(avatar, pcm, ms, **options):
    stream, generator = AvatarStream(avatar, StreamOptions(**options)), FrameGenerator(avatar.models)
    for chunk in chunked(pcm, ms) + [None]:
        stream.push(chunk) if chunk is not None else stream.end()
        generator.features(stream.feature_requests(limit=1000))
    return stream.features.features[:stream.features.total]


def test_preparation_caches_lip_syncs_recipe_and_loads_memory_mapped(avatar_dir, avatar, models):
    meta = json.loads((avatar_dir / "avatar.json").read_text())
    assert (meta["num_frames"], meta["width"], meta["height"], meta["fps"]) == (75, 360, 288, 25.0)
    assert sorted(p.name for p in avatar_dir.iterdir()) == ["avatar.json", "avatar.safetensors", "frames.u8"]
    assert not list(avatar_dir.parent.glob(".*"))  # no temp folder left
    assert isinstance(avatar.frames, np.memmap)
    np.testing.assert_array_equal(avatar.frames, np.stack(list(iter_frames(GRID))))
    assert avatar.found.all() and len({tuple(b) for b in avatar.boxes}) == 1  # the one fixed box
    assert avatar.order.tolist() == pingpong_indices(75, 148).tolist()  # one period: 0..74, 73..1
    assert [avatar.source_frame(k) for k in (74, 75, 147, 148)] == [74, 73, 1, 0]
    latent = 64 // models.codec.downsample_factor
    assert avatar.masked.shape == avatar.reference.shape == (75, 4, latent, latent)
    assert not torch.equal(avatar.masked, avatar.reference)  # the masked face differs from the face


def test_detected_boxes_are_lip_syncs_boxes_of_the_whole_clip(models, tmp_path):
    summary = prepare_avatar(models, GRID, tmp_path / "detected", batch_size=16)
    avatar = Avatar.load(tmp_path / "detected", models)
    assert summary["num_frames"] == 75 and summary["faces_found"] == 75
    boxes, found = face_boxes(iter_frames(GRID), FaceDetector(), batch_size=16, pads=LipSyncOptions().pads)
    np.testing.assert_array_equal(avatar.boxes, boxes)
    cut = prepare_avatar(models, GRID, tmp_path / "cut", box=BOX, max_seconds=1.2)
    assert cut["num_frames"] == len(Avatar.load(tmp_path / "cut", models).frames) == 30


def test_full_context_features_are_the_offline_encoders_bit_for_bit(avatar, pcm, offline):
    _, features = offline
    for ms in (20, 40, 100):
        assert torch.equal(streamed_features(avatar, pcm, ms, **FULL), features)


def test_default_context_features_do_not_depend_on_the_chunking_and_move_by_a_bounded_amount(avatar, pcm, offline):
    """At the default context (1 s left, 100 ms right) the features differ from the whole clip's; each 40 ms
    window depends only on the audio, so the chunk size changes them only by float rounding (the windows of one
    tick are encoded as one batch)."""
    _, features = offline
    runs = {ms: streamed_features(avatar, pcm, ms) for ms in (20, 40, 100)}
    for ms in (40, 100):
        torch.testing.assert_close(runs[ms], runs[20], atol=1e-5, rtol=0)
    error = ((runs[20] - features).norm(dim=1) / features.norm(dim=1))
    # measured with this tiny random encoder: mean 0.27 (the first 0.2 s ~1: statistics of the first samples only)
    assert 1e-3 < error.mean() < 0.5, error.mean()


def test_full_context_stream_gives_lip_syncs_frames(avatar, pcm, offline):
    """The same batches as lip_sync's (8 rows, prepared in 8s, 48 frames) give the same bytes; any other batching
    rounds differently, within one grey level."""
    frames, _ = offline
    for ms in (20, 40, 100):
        pairs = list(avatar.stream(chunked(pcm, ms), max_batch=8, **FULL))
        assert [t for t, _ in pairs] == [k / 25 for k in range(len(frames))]
        np.testing.assert_array_equal(np.stack([f for _, f in pairs]), frames)
    other = np.stack([f for _, f in avatar.stream(chunked(pcm, 40), max_batch=5, **FULL)])
    assert np.abs(other.astype(int) - frames).max() <= 1


def test_default_context_frames_follow_the_audio_and_differ_from_offline_by_a_bounded_amount(avatar, pcm, offline):
    frames, _ = offline
    white = np.full((1, 64, 64, 3), 255, np.uint8)  # where the paste lands (one fixed box): the lower face
    region = paste_faces(np.zeros_like(frames[:1]), avatar.boxes[:1], white, avatar.mask)[0].any(axis=2)
    runs = {}
    for ms in (20, 100):
        pairs = list(avatar.stream(chunked(pcm, ms), silence_db=None))
        assert len(pairs) == len(frames) == timing.num_video_frames(len(pcm))
        assert [t for t, _ in pairs] == [k / 25 for k in range(len(frames))]
        runs[ms] = np.stack([f for _, f in pairs])
    assert np.abs(runs[100].astype(int) - runs[20]).max() <= 1
    moved = np.abs(runs[20].astype(int) - frames)
    assert not moved[:, ~region].any()  # only the lower face moves
    # measured with the tiny random models: 1.4 grey levels on average over the lower face (max 72)
    assert 0.1 < moved[:, region].mean() < 10


def test_frames_leave_as_soon_as_their_window_and_right_context_have_arrived(avatar, pcm):
    """Frame k needs features up to 2k + 6 (120 ms past its start), each with 100 ms of right context."""
    stream, generator = AvatarStream(avatar, StreamOptions(silence_db=None)), FrameGenerator(avatar.models)
    emitted = []
    for received in range(320, len(pcm) + 1, 320):  # 20 ms chunks
        stream.push(pcm[received - 320:received])
        generator.features(stream.feature_requests(limit=100))
        emitted += [(received, job.index) for job in stream.due_jobs(limit=100)]
    first_seen = {index: received for received, index in emitted}
    for k in (0, 1, 10, 40):
        needed = timing.num_samples_for_features(timing.generator_window_end(k) + 5)  # + 100 ms right context
        assert first_seen[k] == -(-needed // 320) * 320  # the first 20 ms chunk boundary that holds it


@pytest.mark.parametrize("left, right", [(1.0, 0.1), (0.5, 0.0), (2.0, 0.24)])
def test_window_samples_is_the_length_of_every_window_once_the_left_context_is_full(avatar, pcm, left, right):
    """On CUDA the encoder replays graphs recorded for windows of StreamOptions.window_samples only: a wrong length
    would leave every window eager (slow, not wrong)."""
    options = StreamOptions(left_context_s=left, right_context_s=right)
    stream = AvatarStream(avatar, options)
    lengths = []
    for chunk in chunked(np.tile(pcm, 2), 20):
        stream.push(chunk)
        lengths += [(r.start, len(r.window)) for r in stream.feature_requests(limit=100)]
    full = [length for start, length in lengths if start > 0]  # the window's left edge has left sample 0
    assert len(full) > 10 and set(full) == {options.window_samples}
    assert {length for start, length in lengths if start == 0} <= set(range(options.window_samples + 1))
    assert StreamOptions(right_context_s=None).window_samples is None
    assert StreamOptions(left_context_s=None).window_samples is None


def test_silence_shows_the_idle_face_generated_once_per_source_frame(avatar, pcm):
    quiet = np.zeros(16000, np.int16)  # 1 s of digital silence, then speech, then silence
    audio = np.concatenate([quiet, pcm, quiet])
    generator = FrameGenerator(avatar.models, max_batch=8)
    stream = AvatarStream(avatar, StreamOptions())
    avatar.idle_faces.clear()
    jobs = []
    for chunk in chunked(audio, 40) + [None]:
        stream.push(chunk) if chunk is not None else stream.end()
        generator.features(stream.feature_requests(limit=100))
        new = stream.due_jobs(limit=100)
        faces = generator.faces(new)
        jobs += list(zip(new, faces))
    assert len(jobs) == timing.num_video_frames(len(audio))
    idle = [(job, face) for job, face in jobs if job.audio is None]
    assert {job.index for job, _ in idle} >= set(range(20)) | set(range(len(jobs) - 20, len(jobs)))
    assert all(job.index < 25 + 2 or job.index >= 25 + 48 - 4 for job, _ in idle)  # speech frames are generated
    for job, face in idle:
        assert face is avatar.idle_faces[job.source]  # one face per source frame, reused
    silence = generator.silence[None]
    expected = generator._generate([(avatar, idle[0][0].source, silence[0])])[0]
    np.testing.assert_array_equal(idle[0][1], expected)  # the generator's face for the features of zeros


@pytest.mark.parametrize("chunk, message", [
    (np.zeros((320, 2), np.int16), "mono"),
    (np.zeros(320, np.int32), "int16 or float32"),
    (np.full(320, 1000.0, np.float32), "int16 samples sent as float"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
])
def test_bad_chunks_are_one_line_errors(avatar, chunk, message):
    with pytest.raises(UserError, match=message):
        list(avatar.stream([np.zeros(320, np.int16), chunk]))


def test_loading_checks_the_folder_and_the_models(avatar_dir, models, tiny_models, tmp_path):
    with pytest.raises(UserError, match="no avatar in"):
        Avatar.load(tmp_path / "nothing", models)
    other = load_models(write_tiny_generator(tiny_models, tmp_path / "g.ckpt"), image_size=32, device="cpu")
    with pytest.raises(UserError, match="prepared for 64 px crops"):
        Avatar.load(avatar_dir, other)
    with pytest.raises(UserError, match="no face found"):
        faceless = tmp_path / "grey.png"
        import cv2
        cv2.imwrite(str(faceless), np.full((96, 128, 3), 128, np.uint8))
        prepare_avatar(models, faceless, tmp_path / "grey")
    assert not (tmp_path / "grey").exists() and not list(tmp_path.glob(".grey*"))


def test_prepare_avatar_script_writes_the_folder_and_fails_in_one_line(models, tiny_models, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    checkpoint = write_tiny_generator(tiny_models, tmp_path / "g.ckpt")

    def run(*args):
        return subprocess.Popen([sys.executable, str(root / "prepare_avatar.py"), "--checkpoint_path", str(checkpoint),
                                 "--avatars", str(tmp_path / "avatars"), *map(str, args)], cwd=tmp_path,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    runs = {"good": run("--face", GRID, "--name", "grid", "--box", *BOX, "--max_seconds", 0.4),
            "bad_name": run("--face", GRID, "--name", "../x"),
            "missing_face": run("--face", tmp_path / "nope.mp4", "--name", "x")}
    out = {name: (proc.communicate(timeout=300), proc.returncode) for name, proc in runs.items()}
    (stdout, stderr), code = out["good"]
    assert code == 0, stderr
    assert "prepared avatar 'grid'" in stdout and "10 frames" in stdout
    assert len(Avatar.load(tmp_path / "avatars" / "grid", models).frames) == 10
    for name, says in (("bad_name", "--name '../x'"), ("missing_face", "face file not found")):
        (_, stderr), code = out[name]
        lines = stderr.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], stderr


def test_compiled_models_pad_each_batch_to_a_power_of_two_and_give_the_same_frames(avatar, pcm):
    """Compiled models (and CUDA graphs) see one shape per power-of-two batch: zero rows pad each call. Here on
    the CPU with uncompiled modules flagged as compiled, so the padding itself is what is compared."""
    import dataclasses

    twin = dataclasses.replace(avatar, models=dataclasses.replace(avatar.models, compiled=True), idle_faces={})
    calls = []
    generate = twin.models.unet.forward
    twin.models.unet.forward = lambda sample, *a, **k: calls.append(len(sample)) or generate(sample, *a, **k)
    try:
        FrameGenerator(twin.models, max_batch=6).warm_up(twin)
        assert calls == [1, 2, 4, 6]
        padded = np.stack([f for _, f in twin.stream(chunked(pcm, 100), silence_db=None, max_batch=6)])
    finally:
        del twin.models.unet.forward
    assert set(calls) <= {1, 2, 4, 6} and 3 not in calls
    plain = np.stack([f for _, f in avatar.stream(chunked(pcm, 100), silence_db=None, max_batch=6)])
    assert np.abs(padded.astype(int) - plain).max() <= 1
