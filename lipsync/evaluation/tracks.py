"""Face tracks and 224 px crops for SyncNet v2, with syncnet_python's tracking and crop arithmetic.

`face_track` links per-frame detections into tracks (IoU > 0.5 with the track's last box, gaps of at most
`num_failed_det` frames, linear interpolation over them, tracks longer than `min_track` frames whose mean box side
exceeds `min_face_size` px) and returns the longest; `track_crops` cuts the reference's crop from each frame: box
centre and half-side median-filtered over 13 frames, the frame padded with grey 110, a window from one half-side
above the centre to 1.8 below and 1.4 to each side (crop_scale 0.4), resized to 224 x 224 (bilinear).

Detections come from either detector:
- `S3FDDetector`: the reference's S3FD (syncnet_python's network and detect_faces, weights `sfd_face.pth`), at the
  reference's scale 0.25 and threshold 0.9: the published protocol.
- `RetinaFaceDetector`: this project's bundled RetinaFace (lipsync.faces), best face per frame. Not identical for
  published comparisons: its boxes are not S3FD's, so crops (and LSE numbers) differ slightly.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_SCALE = 0.40
MEDIAN_KERNEL = 13
PAD_VALUE = 110


@dataclass(frozen=True)
class TrackOptions:
    """syncnet_python's SyncNetPipeline defaults (PipelineConfig)."""
    min_track: int = 50  # a track must have MORE than this many frames
    num_failed_det: int = 25  # largest gap (frames) bridged by interpolation
    min_face_size: float = 100.0  # mean box width or height (px) a track must exceed
    facedet_scale: float = 0.25  # S3FD runs on frames scaled by this
    conf_th: float = 0.9  # S3FD score threshold


def _iou(a, b) -> float:
    x_a, y_a = max(a[0], b[0]), max(a[1], b[1])
    x_b, y_b = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x_b - x_a) * max(0, y_b - y_a)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter + 1e-8)


def link_tracks(detections: list[list[np.ndarray]], options: TrackOptions = TrackOptions()) -> list[dict]:
    """Per-frame detections (frame i: a list of boxes x1 y1 x2 y2 [4]) -> tracks {"frame": int [T] consecutive,
    "bbox": float [T, 4]}, in the reference's order (its SyncNetPipeline._track, step for step: each pass takes,
    frame by frame, the first box of a frame while the chain continues and stops at the first frame whose first
    remaining box does not continue it)."""
    from scipy.interpolate import interp1d

    dets = [[{"frame": i, "bbox": list(map(float, box))} for box in boxes] for i, boxes in enumerate(detections)]
    tracks = []
    while True:
        track = []
        for faces in dets:
            for face in faces:  # (removing while iterating, as the reference does: it visits every other box)
                if not track:
                    track.append(face)
                    faces.remove(face)
                elif (face["frame"] - track[-1]["frame"] <= options.num_failed_det
                      and _iou(face["bbox"], track[-1]["bbox"]) > 0.5):
                    track.append(face)
                    faces.remove(face)
                    continue
                else:
                    break
        if not track:
            break
        if len(track) > options.min_track:
            frames = np.array([d["frame"] for d in track])
            boxes = np.array([d["bbox"] for d in track])
            full = np.arange(frames[0], frames[-1] + 1)
            interpolated = np.stack([interp1d(frames, boxes[:, i])(full) for i in range(4)], 1)
            if max(np.mean(interpolated[:, 2] - interpolated[:, 0]),
                   np.mean(interpolated[:, 3] - interpolated[:, 1])) > options.min_face_size:
                tracks.append({"frame": full, "bbox": interpolated})
    return tracks


def face_track(detections: list[list[np.ndarray]], options: TrackOptions = TrackOptions()) -> dict | None:
    """The longest track (the first of equal ones), or None when no track passes the reference's filters."""
    tracks = link_tracks(detections, options)
    return max(tracks, key=lambda t: len(t["frame"])) if tracks else None


def smoothed_geometry(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Track boxes [T, 4] -> (half-side s, centre x, centre y), each [T], median-filtered over 13 frames."""
    from scipy import signal

    boxes = np.asarray(boxes, np.float64)
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    return tuple(signal.medfilt(v, MEDIAN_KERNEL) for v in (s, x, y))


def crop_one(frame: np.ndarray, s: float, x: float, y: float, size: int = 224) -> np.ndarray:
    """One frame [H, W, 3] uint8 -> its reference crop [size, size, 3] (same channel order)."""
    pad = int(s * (1 + 2 * CROP_SCALE))
    padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    my, mx = y + pad, x + pad
    y1, y2 = int(my - s), int(my + s * (1 + 2 * CROP_SCALE))
    x1, x2 = int(mx - s * (1 + CROP_SCALE)), int(mx + s * (1 + CROP_SCALE))
    return cv2.resize(padded[y1:y2, x1:x2], (size, size))


def track_crops(frames, track: dict, size: int = 224) -> np.ndarray:
    """Frames (an indexable sequence of [H, W, 3] uint8, indexed by the track's frame numbers) -> [T, size, size, 3]
    crops in the frames' channel order."""
    s, x, y = smoothed_geometry(track["bbox"])
    return np.stack([crop_one(frames[f], s[i], x[i], y[i], size) for i, f in enumerate(track["frame"])])


class RetinaFaceDetector:
    """lipsync.faces.FaceDetector's best face per frame, as a list of detections per frame."""

    name = "retinaface"

    def __init__(self, device="cpu", batch_size: int = 32, detector=None):
        """detector: a lipsync.faces.FaceDetector to use (default: a new one on `device`)."""
        from lipsync.faces import FaceDetector

        self.detector = detector or FaceDetector(device=device)
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> list[list[np.ndarray]]:
        """frames [N, H, W, 3] RGB uint8 -> per frame a list of 0 or 1 boxes."""
        from lipsync.faces import raw_boxes

        return self.per_frame(raw_boxes(frames, self.detector, self.batch_size))

    @staticmethod
    def per_frame(boxes: np.ndarray) -> list[list[np.ndarray]]:
        """FaceDetector's boxes [N, 4] (NaN rows: no face) of a video -> per frame a list of 0 or 1 boxes."""
        return [[box] if np.isfinite(box).all() else [] for box in boxes]


class S3FDDetector:
    """syncnet_python's S3FD face detector (its S3FDNet and S3FD.detect_faces), weights from `sfd_face.pth`."""

    name = "s3fd"

    def __init__(self, weights_path, device="cpu", options: TrackOptions = TrackOptions()):
        import torch

        from lipsync.errors import UserError

        try:
            from syncnet_python.detectors.s3fd import S3FD
            from syncnet_python.detectors.s3fd.nets import S3FDNet
        except ImportError as err:
            raise UserError(f"--face_detector s3fd needs the reference package: pip install --no-deps -r "
                            f"requirements-eval.txt ({err})") from None
        net = S3FDNet(device=str(device))
        net.load_state_dict(torch.load(weights_path, map_location=str(device), weights_only=True))
        self.detector = S3FD(net=net, device=str(device))
        self.options = options

    def __call__(self, frames: np.ndarray) -> list[list[np.ndarray]]:
        """frames [N, H, W, 3] RGB uint8 (the reference converts its BGR frames to RGB before detect_faces)."""
        return [[np.asarray(b[:4], np.float64) for b in
                 self.detector.detect_faces(frame, conf_th=self.options.conf_th,
                                            scales=[self.options.facedet_scale])] for frame in frames]
