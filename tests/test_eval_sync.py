"""LSE-C / LSE-D / AV offset: this project's SyncNet v2 path against the reference implementation (the
`syncnet-python` package, joonson/syncnet_python's code) on identical inputs: the real GRID clips cropped by the
reference's tracking arithmetic, written as the JPEG frames + audio.wav its evaluate() reads, and the same random
weights saved in the `syncnet_v2.model` format (a flat state dict)."""
import types

import cv2
import numpy as np
import pytest
import torch
from scipy.io import wavfile

from lipsync.audio import load_audio
from lipsync.errors import UserError
from lipsync.evaluation import sync, tracks
from lipsync.evaluation.weights import load_syncnet_v2
from lipsync.video_io import iter_frames
from models.syncnet_v2 import SyncNetV2

OPTIONS = tracks.TrackOptions(min_face_size=60)  # GRID faces are ~100 px wide: below the reference's 100 px filter


def reference_model():
    from syncnet_python.SyncNetModel import S

    return S()


@pytest.fixture(scope="module")
def grid_inputs(clips):
    """Per GRID clip: (BGR crops [N, 224, 224, 3] from the reference crop arithmetic on RetinaFace tracks,
    int16 audio of the track's frames)."""
    detector = tracks.RetinaFaceDetector()
    out = {}
    for name in ("grid", "grid2"):
        frames = np.stack(list(iter_frames(clips[name].path, target_fps=25)))
        track = tracks.face_track(detector(frames), OPTIONS)
        assert track is not None and len(track["frame"]) == len(frames)
        crops = tracks.track_crops(frames, track)[..., ::-1]  # RGB -> BGR, as cv2.imread gives the reference
        out[name] = (np.ascontiguousarray(crops), sync.to_pcm16(load_audio(clips[name].path)))
    return out


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory, grid_inputs):
    """Random SyncNet v2 weights in the syncnet_v2.model format. Random convolutions on 0..255 inputs give huge
    activations, so BatchNorm statistics are first measured on the GRID windows (train-mode forward, cumulative
    average): LSE values then land in the published range instead of ~1e5."""
    torch.manual_seed(0)
    model = reference_model()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    crops, audio = grid_inputs["grid"]
    lips = torch.from_numpy(np.stack([crops[v:v + 5] for v in range(0, 60, 3)])).permute(0, 4, 1, 2, 3).float()
    cepstra = torch.from_numpy(sync.mfcc(audio)).float()
    sound = torch.stack([cepstra[:, v * 4:v * 4 + 20] for v in range(0, 60, 3)])[:, None]
    model.train()
    with torch.no_grad():
        model.forward_lip(lips)
        model.forward_aud(sound)
    path = tmp_path_factory.mktemp("weights") / "syncnet_v2.model"
    torch.save(model.state_dict(), path)
    return path


def test_syncnet_v2_has_the_reference_layers():
    ours, theirs = SyncNetV2().state_dict(), reference_model().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def reference_scores(weights, crops_bgr, audio, folder):
    """syncnet_python's SyncNetInstance.evaluate on JPEG frames + audio.wav written into `folder`."""
    from syncnet_python.SyncNetInstance import SyncNetInstance

    folder.mkdir()
    for i, crop in enumerate(crops_bgr):
        cv2.imwrite(str(folder / f"{i + 1:06d}.jpg"), crop)
    wavfile.write(folder / "audio.wav", 16000, audio)
    model = reference_model()
    model.load_state_dict(torch.load(weights))
    opt = types.SimpleNamespace(tmp_dir=str(folder), batch_size=20, vshift=15)
    offset, conf, dist = SyncNetInstance(net=model, device="cpu").evaluate(opt)
    jpegs = np.stack([cv2.imread(str(folder / f"{i + 1:06d}.jpg")) for i in range(len(crops_bgr))])
    return (offset, conf, dist), jpegs


@pytest.mark.parametrize("name", ["grid", "grid2"])
def test_lse_equals_syncnet_python_on_real_clips(name, grid_inputs, random_weights, tmp_path):
    crops, audio = grid_inputs[name]
    (offset, conf, dist), jpegs = reference_scores(random_weights, crops, audio, tmp_path / "ref")
    model = load_syncnet_v2(random_weights.parent, check="architecture")
    ours = sync.syncnet_v2_scores(model, jpegs, audio)  # the very pixels the reference read
    assert ours.offset == offset
    assert ours.confidence == pytest.approx(conf, abs=1e-4)
    assert ours.distance == pytest.approx(dist, abs=1e-4)
    assert 0.1 < ours.distance < 1000 and ours.confidence > 0  # a calibrated random net, not a degenerate one
    assert ours.windows == min(len(crops), len(audio) // 640) - 5


def test_random_syncnet_v2_on_shifted_audio_runs_and_is_deterministic(grid_inputs, random_weights):
    """Random weights carry no sync: only that every planted shift runs and gives the same numbers twice."""
    model = load_syncnet_v2(random_weights.parent, check="architecture")
    crops, audio = grid_inputs["grid"]
    crops, audio = crops[:40], audio[:40 * 640]  # 35 windows are enough to show it
    for k in (-3, 3):
        shifted = sync.shift_audio(audio, k)
        first, second = (sync.syncnet_v2_scores(model, crops, shifted) for _ in range(2))
        assert first == second
        assert len(first.mean_distances) == 31 and -15 <= first.offset <= 15


def test_sync_scores_offset_sign_and_confidence():
    """Embeddings where video window i matches audio window i + 2: the sound is late, offset -2; the reference's
    arithmetic: LSE-D = min of the per-shift means, LSE-C = median - min."""
    rng = np.random.default_rng(0)
    audio = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    video = torch.zeros_like(audio)
    video[:-2] = audio[2:]
    scores = sync.sync_scores(video, audio, vshift=5)
    assert scores.offset == -2
    means = np.array(scores.mean_distances)
    assert scores.distance == pytest.approx(means.min())
    assert scores.confidence == pytest.approx(np.median(means) - means.min())


def test_shift_audio_moves_the_sound_earlier():
    audio = np.arange(3200, dtype=np.float32)
    early = sync.shift_audio(audio, 2)  # 2 frames = 1280 samples
    assert early[0] == 1280 and early[-1280:].max() == 0 and len(early) == len(audio)
    late = sync.shift_audio(audio, -1)
    assert late[640] == 0 and late[:640].max() == 0 and late[-1] == 3200 - 641


def test_tracking_equals_the_reference_tracker():
    """link_tracks against syncnet_python's SyncNetPipeline._track on the same detections: two faces, a gap the
    reference bridges, one it does not, a small face it drops."""
    from syncnet_python.syncnet_pipeline import PipelineConfig, SyncNetPipeline

    rng = np.random.default_rng(1)
    detections = []
    for f in range(160):
        boxes = []
        if f % 37 not in (5, 6, 7) and not 90 <= f < 120:  # short misses and a 30-frame gap
            boxes.append(np.array([100, 80, 230, 220]) + rng.normal(0, 2, 4))
        if f >= 20:
            boxes.append(np.array([300, 90, 360, 150]) + rng.normal(0, 1, 4))  # a second, small face
        detections.append(boxes)
    options = tracks.TrackOptions(min_track=30, min_face_size=50)
    ours = tracks.link_tracks(detections, options)
    reference = types.SimpleNamespace(cfg=PipelineConfig(min_track=30, min_face_size=50), _iou=SyncNetPipeline._iou)
    dets = [[{"frame": i, "bbox": b.tolist()} for b in boxes] for i, boxes in enumerate(detections)]
    theirs = SyncNetPipeline._track(reference, dets)
    assert len(ours) == len(theirs) >= 2
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["frame"], b["frame"])
        np.testing.assert_allclose(a["bbox"], b["bbox"])


def test_wrong_syncnet_weights_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="syncnet_v2.model not found in --weights_dir .*robots.ox.ac.uk"):
        load_syncnet_v2(tmp_path)
    torch.save({"netcnnaud.0.weight": torch.zeros(3)}, tmp_path / "syncnet_v2.model")
    with pytest.raises(UserError, match="not the published syncnet_v2.model .* --weights_check architecture"):
        load_syncnet_v2(tmp_path)
    with pytest.raises(UserError, match="does not hold SyncNet v2 weights: .* missing"):
        load_syncnet_v2(tmp_path, check="architecture")
