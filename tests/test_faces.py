"""lipsync.faces: RetinaFace detection on the real GRID clips and a synthetic talking face (tests/media.py), the
box recipe, crop / paste."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync.errors import UserError
from lipsync.faces import (
    MASK_TOP,
    FaceDetector,
    _scale_translate,
    color_match,
    crop_faces,
    face_boxes,
    fixed_box,
    lower_face_mask,
    nearest_found_boxes,
    paste_faces,
    smooth_boxes,
    square_boxes,
)
from lipsync.video_io import iter_frames

DETECTED = ("grid", "grid2", "talking_mpeg4")  # two real speakers and a synthetic one


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def clip_frames(clips) -> dict[str, np.ndarray]:
    return {name: np.stack(list(iter_frames(clips[name].path))) for name in DETECTED}


@pytest.fixture(scope="module")
def grid_boxes(clip_frames, detector) -> tuple[np.ndarray, np.ndarray]:
    return face_boxes(iter(clip_frames["grid"]), detector)


@pytest.mark.parametrize("name", DETECTED)
def test_face_found_in_every_frame_with_the_expected_width(name, clip_frames, clips, detector):
    frames = clip_frames[name]
    boxes = np.concatenate([detector.detect(frames[i:i + 32]) for i in range(0, len(frames), 32)])
    assert boxes.shape == (len(frames), 4) and boxes.dtype == np.float32
    assert np.isfinite(boxes).all()
    widths = boxes[:, 2] - boxes[:, 0]
    assert np.median(widths) == pytest.approx(clips[name].face_width, rel=0.4)
    height, width = frames.shape[1:3]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (np.abs(centres - [width / 2, height / 2]) < [width / 4, height / 4]).all()  # frontal, centred faces


def test_detect_returns_full_resolution_boxes_and_nan_without_face(clip_frames, detector):
    frame = clip_frames["grid"][0]
    blank = np.full_like(frame, 128)
    boxes = detector.detect(np.stack([frame, blank]))
    assert np.isfinite(boxes[0]).all() and np.isnan(boxes[1]).all()
    # 720x576 shrunk back to 360x288 for detection: same face, boxes in 720x576 pixels
    doubled = cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(FaceDetector(detect_size=360).detect(doubled[None])[0], 2 * boxes[0], atol=3)


def test_face_boxes_are_square_smooth_and_found(grid_boxes, clip_frames):
    boxes, found = grid_boxes
    assert boxes.shape == (len(clip_frames["grid"]), 4) and found.all()
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], rtol=1e-5)
    assert np.abs(np.diff(boxes[:, 0])).max() < 3  # smoothed: no jumps on a still speaker


def test_face_boxes_with_a_fixed_box(clip_frames):
    frames = clip_frames["grid"]
    boxes, found = face_boxes(iter(frames), None, box=(40, 200, 120, 240), margin=0)
    assert found.all() and len(boxes) == len(frames)
    np.testing.assert_allclose(boxes, np.tile([100, 40, 260, 200], (len(frames), 1)))  # 120x160 -> 160x160


def test_smooth_boxes():
    ramp = np.stack([np.arange(10.0)] * 4, axis=1).astype(np.float32)
    np.testing.assert_allclose(smooth_boxes(ramp)[2:-2], ramp[2:-2], atol=1e-5)  # centred: no lag
    jitter = ramp + np.random.default_rng(0).normal(0, 2, ramp.shape).astype(np.float32)
    assert np.abs(smooth_boxes(jitter) - ramp)[2:-2].mean() < np.abs(jitter - ramp)[2:-2].mean()
    gappy = ramp.copy()
    gappy[[0, 4, 5]] = np.nan
    smoothed = smooth_boxes(gappy, window=3)
    assert np.isnan(smoothed[[0, 4, 5]]).all() and np.isfinite(np.delete(smoothed, [0, 4, 5], axis=0)).all()
    np.testing.assert_allclose(smoothed[3], gappy[[2, 3]].mean(axis=0))  # only valid neighbours count
    np.testing.assert_allclose(smooth_boxes(gappy, window=1), gappy)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_smooth_boxes_of_videos_shorter_than_the_window(n):
    """1-4 frames (or a face video driven by < 0.1 s of audio) are fewer than the window: each box is still the
    mean of the valid boxes among its neighbours, the same as in a longer video."""
    boxes = np.stack([np.arange(n, dtype=np.float32) ** 2] * 4, axis=1)
    padded = np.concatenate([boxes, np.full((4, 4), np.nan, np.float32)])  # the same frames, then faceless ones
    np.testing.assert_allclose(smooth_boxes(boxes), smooth_boxes(padded)[:n])
    np.testing.assert_allclose(smooth_boxes(boxes)[0], boxes[:3].mean(axis=0))


def test_square_boxes_and_fixed_box():
    box = np.array([[10, 20, 50, 100], [np.nan] * 4], dtype=np.float32)  # 40 wide, 80 high
    square = square_boxes(box, pads=(0, 20, 0, 0), margin=0.5)  # padded: 40 x 100, centre (30, 70)
    np.testing.assert_allclose(square[0], [30 - 75, 70 - 75, 30 + 75, 70 + 75])
    assert np.isnan(square[1]).all()
    np.testing.assert_array_equal(fixed_box((20, 100, 10, 50), 3), np.tile([10, 20, 50, 100], (3, 1)))
    with pytest.raises(UserError):
        fixed_box((100, 20, 10, 50), 3)


def test_crop_faces(clip_frames, grid_boxes):
    frames = clip_frames["grid"][:4]
    crops = crop_faces(frames, grid_boxes[0][:4], 96)
    assert crops.shape == (4, 96, 96, 3) and crops.dtype == np.uint8
    # an integer box at scale 1 is a plain slice
    np.testing.assert_array_equal(crop_faces(frames[:1], np.array([[100, 50, 164, 114]]), 64)[0],
                                  frames[0, 50:114, 100:164])
    # a box half outside the frame replicates the border instead of padding black
    outside = crop_faces(frames[:1], np.array([[-50, -50, 50, 50]]), 100)[0]
    np.testing.assert_array_equal(outside[:50, :50], np.broadcast_to(frames[0, 0, 0], (50, 50, 3)))


def test_lower_face_mask():
    size = 256
    mask = lower_face_mask(size)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask.min() == 0 and mask.max() == 1
    assert not mask[: int(MASK_TOP * size)].any()  # nothing at or above the nose line
    assert not (mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())  # away from the crop borders
    assert mask[int(0.75 * size), size // 2] == 1  # the mouth
    steps = max(np.abs(np.diff(mask, axis=0)).max(), np.abs(np.diff(mask, axis=1)).max())
    assert steps < 2 / (0.08 * size)  # feathered: no seam


def test_paste_faces(clip_frames, grid_boxes):
    frames = clip_frames["grid"][:4]
    boxes = grid_boxes[0][:4]
    size = 128
    crops = crop_faces(frames, boxes, size)
    generated = 255 - crops  # a face that differs everywhere

    np.testing.assert_array_equal(paste_faces(frames, boxes, generated, np.zeros((size, size))), frames)

    mask = lower_face_mask(size)
    pasted = paste_faces(frames, boxes, generated, mask)
    changed = (pasted != frames).any(axis=-1)
    for frame_changed, box in zip(changed, boxes):
        side = box[2] - box[0]
        rows, cols = np.nonzero(frame_changed)
        assert rows.size > 0.1 * side * side  # the lower face was replaced
        assert rows.min() >= box[1] + MASK_TOP * side - 2  # nothing above the mask (2 px: bilinear edge)
        assert cols.min() >= box[0] and cols.max() < box[2]  # nothing outside the box

    # crop -> paste back unchanged faces: the frame barely moves (geometry of crop and paste agree)
    round_trip = paste_faces(frames, boxes, crops, mask)
    assert np.abs(round_trip.astype(int) - frames).mean() < 0.5


@pytest.mark.parametrize("size", [64, 256])  # upscaled and downscaled paste (the box is ~150 px)
def test_paste_blends_only_the_mask_band_yet_equals_a_whole_box_blend(clip_frames, grid_boxes, size):
    """paste_faces resamples and blends only the rows the mask covers; the result must match the plain recipe:
    warp the face and the mask into the whole box rectangle, blend in float, round (within 1 grey level)."""
    frames = clip_frames["grid"][:3]
    boxes = grid_boxes[0][:3] + [[0.3, 0.6, 0.3, 0.6]]  # sub-pixel offsets
    faces = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    mask = lower_face_mask(size)
    expected = np.array(frames, copy=True)
    for frame, box, face in zip(expected, boxes, faces):
        x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
        scale = (box[2] - box[0]) / size
        offset = (box[0] - x0, box[1] - y0)
        alpha = _scale_translate(mask, scale, offset, (x1 - x0, y1 - y0), cv2.BORDER_CONSTANT)[..., None]
        warped = _scale_translate(face, scale, offset, (x1 - x0, y1 - y0), cv2.BORDER_REPLICATE)
        region = frame[y0:y1, x0:x1]
        region[:] = np.clip(np.rint(region * (1 - alpha) + warped * alpha), 0, 255).astype(np.uint8)
    pasted = paste_faces(frames, boxes, faces, mask)
    assert np.abs(pasted.astype(int) - expected).max() <= 1
    assert (pasted != frames).any()


def test_color_match_restores_the_original_statistics(clip_frames, grid_boxes):
    size = 128
    crop = crop_faces(clip_frames["grid"][:2], grid_boxes[0][:2], size)
    tinted = np.clip(crop * [0.8, 0.9, 1.1] + [30, 0, -20], 0, 255).astype(np.uint8)
    mask = lower_face_mask(size)
    matched = color_match(tinted, crop, mask)
    assert matched.shape == crop.shape and matched.dtype == np.uint8
    inside = mask > 0.5
    error_before = np.abs(tinted.astype(int) - crop)[:, inside].mean()
    error_after = np.abs(matched.astype(int) - crop)[:, inside].mean()
    assert error_after < 0.25 * error_before


def test_torch_runtime_detects_the_same_boxes(clip_frames, detector):
    """The GPU path (the ONNX graph run by torch), here on the CPU: the same boxes as onnxruntime."""
    torch_detector = FaceDetector(runtime="torch")
    for name, frames in clip_frames.items():
        batch = np.concatenate([frames[:6], np.full_like(frames[:1], 128)])  # + a frame without a face
        expected = detector.detect(batch)
        np.testing.assert_allclose(torch_detector.detect(batch), expected, atol=0.05)
        assert np.isnan(expected[-1]).all()
    with pytest.raises(ValueError, match="onnxruntime on the CPU"):
        FaceDetector(device="cuda", runtime="onnxruntime")


def test_frames_without_a_face_take_the_nearest_found_box():
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    found = np.array([False, True, False, False, True])
    # frame 2 is nearer frame 1, frame 3 nearer frame 4, frame 0 takes frame 1
    np.testing.assert_array_equal(nearest_found_boxes(boxes, found), boxes[[1, 1, 1, 4, 4]])
    np.testing.assert_array_equal(nearest_found_boxes(boxes, np.ones(5, bool)), boxes)
