"""SSIM / PSNR regions and values, ArcFace alignment and CSIM, on real GRID frames and real (random) ONNX models."""
import numpy as np
import pytest
import torch

from lipsync.errors import UserError
from lipsync.evaluation import identity
from lipsync.evaluation.quality import mouth_slice, ssim_psnr
from lipsync.faces import FaceDetector
from lipsync.video_io import iter_frames

from eval_media import random_arcface_onnx


@pytest.fixture(scope="module")
def grid_frames(clips):
    return np.stack(list(iter_frames(clips["grid"].path)))[:16]


def test_psnr_of_a_known_error_and_ssim_of_identical_crops():
    rng = np.random.default_rng(0)
    crops = rng.integers(20, 200, (3, 64, 64, 3), dtype=np.uint8)
    same = ssim_psnr(crops, crops)
    assert same["ssim_face"] == pytest.approx(1.0, abs=1e-5) and same["psnr_face"] == 100.0  # inf capped
    brighter = ssim_psnr(crops + 10, crops)  # MSE 100 everywhere
    expected = 10 * np.log10(255 ** 2 / 100)
    assert brighter["psnr_face"] == pytest.approx(expected) and brighter["psnr_mouth"] == pytest.approx(expected)


def test_a_changed_mouth_shows_in_the_mouth_numbers_first():
    rng = np.random.default_rng(1)
    crops = rng.integers(20, 200, (2, 96, 96, 3), dtype=np.uint8)
    changed = crops.copy()
    rows, cols = mouth_slice(96)
    changed[:, rows, cols] = 128
    scores = ssim_psnr(changed, crops)
    assert scores["ssim_mouth"] < scores["ssim_face"] < 1 and scores["psnr_mouth"] < scores["psnr_face"]
    outside = crops.copy()
    outside[:, :rows.start] = 128  # above the mouth
    assert ssim_psnr(outside, crops)["psnr_mouth"] == 100.0


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -2.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = identity.ARCFACE_TEMPLATE
    dst = scale * src @ rotation.T + shift
    matrix = identity.similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_landmarks_belong_to_the_detected_face(grid_frames):
    detector = FaceDetector()
    boxes = detector.detect(grid_frames)
    points = detector.detect_landmarks(grid_frames)  # [N, 5, 2]
    assert np.isfinite(points).all()
    inside = ((points[..., 0] > boxes[:, None, 0]) & (points[..., 0] < boxes[:, None, 2])
              & (points[..., 1] > boxes[:, None, 1]) & (points[..., 1] < boxes[:, None, 3]))
    assert inside.all()
    eyes, nose, mouth = points[:, :2, 1].mean(1), points[:, 2, 1], points[:, 3:, 1].mean(1)
    assert (eyes < nose).all() and (nose < mouth).all()  # image y points down
    assert (points[:, 0, 0] < points[:, 1, 0]).all()  # left eye (in the image) first
    aligned = identity.align_faces(grid_frames[:2], points[:2])
    assert aligned.shape == (2, 112, 112, 3) and aligned.mean() > 30  # a face, not the black border


def test_csim_with_an_arcface_onnx_model(grid_frames, clips, tmp_path):
    arcface = identity.ArcFace(random_arcface_onnx(tmp_path / "w600k_r50.onnx"))
    detector = FaceDetector()
    own = identity.face_embeddings(arcface, detector, grid_frames)
    assert own.shape == (16, 512)
    np.testing.assert_allclose(np.linalg.norm(own, axis=1), 1.0, rtol=1e-5)
    other = identity.face_embeddings(arcface, detector, np.stack(list(iter_frames(clips["grid2"].path)))[:16])
    assert identity.csim(own, own) == pytest.approx(float((own @ (own.mean(0) / np.linalg.norm(own.mean(0)))).mean()))
    assert -1 <= identity.csim(other, own) <= 1


def test_arcface_run_by_torch_equals_onnxruntime(tmp_path):
    """The GPU path (lipsync.onnx_graph runs the graph: Conv, BatchNormalization, PRelu, Flatten, Gemm), here on
    the CPU, against onnxruntime on the same faces."""
    path = random_arcface_onnx(tmp_path / "w600k_r50.onnx", seed=3)
    faces = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    by_torch = identity.ArcFace(path, runtime="torch")
    assert by_torch.network is not None
    expected = identity.ArcFace(path).embed(faces)
    np.testing.assert_allclose(by_torch.embed(faces), expected, atol=1e-5)
    assert np.abs(expected @ expected.T - np.eye(5)).max() > 0.01  # the faces are told apart: a real comparison


def test_a_model_that_is_not_arcface_is_one_line(tmp_path):
    model = torch.nn.Conv2d(3, 4, 3)
    torch.onnx.export(model, torch.zeros(1, 3, 64, 64), str(tmp_path / "w600k_r50.onnx"), dynamo=False)
    with pytest.raises(UserError, match="is not an ArcFace recognition model"):
        identity.load_arcface(tmp_path, check="architecture")
    (tmp_path / "w600k_r50.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="not an ONNX model onnxruntime can load"):
        identity.load_arcface(tmp_path, check="architecture")
