"""Shots: a video is cut where the picture changes at once (a scene cut), so that no training window spans a cut and
no face track jumps from one person to another.

Cuts come from PySceneDetect's ContentDetector (HSV + edge change between consecutive frames over a threshold) fed
the decoded frames one by one; a cut at frame k means frame k is the first frame of a new shot. Shots are
[start, end) frame ranges at the dataset's fps.

Naming (lipsync.preprocess.video): a video without a cut keeps its plain folder name; a video with cuts becomes one
folder per kept shot, `<name>_shot{k:03d}` (k = the shot's place in the video, so the folder says which shot it
is even when shots before it were dropped), side by side where the plain folder would be: filelists that group by
leading path parts or by `(.+)_shot\\d+$` keep the shots of one source together.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np

from lipsync.errors import UserError

DETECT_SIDE = 256  # frames are shrunk to this longer side before cut detection (the score is a mean over pixels)
DEFAULT_THRESHOLD = 27.0  # ContentDetector's own default


class CutDetector:
    """Feed frames in order (`watch`); `cuts` then lists the first frame of every shot after the first."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        try:
            from scenedetect.detectors import ContentDetector
            from scenedetect.scene_detector import FlashFilter
        except ImportError:
            raise UserError("splitting videos at scene cuts needs PySceneDetect: pip install --no-deps "
                            "-r requirements-eval.txt (or pass --no_scene_split)") from None

        # SUPPRESS with length 1: every cut is reported at once and none is merged away, so a shot never spans one
        self.detector = ContentDetector(threshold=threshold, min_scene_len=1,
                                        filter_mode=FlashFilter.Mode.SUPPRESS)
        self.cuts: list[int] = []

    def watch(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yields the frames (RGB uint8 [H, W, 3]) unchanged, looking at each on the way."""
        for k, frame in enumerate(frames):
            small = frame
            scale = DETECT_SIDE / max(frame.shape[:2])
            if scale < 1:
                small = cv2.resize(frame, (round(frame.shape[1] * scale), round(frame.shape[0] * scale)),
                                   interpolation=cv2.INTER_AREA)
            cuts = self.detector.process_frame(k, np.ascontiguousarray(small[..., ::-1]))  # the detector takes BGR
            self.cuts += [int(c) for c in cuts if int(c) > 0]
            yield frame


def detect_cuts(frames: Iterable[np.ndarray], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Every frame of `frames` (RGB uint8) -> the first frame of each shot after the first."""
    detector = CutDetector(threshold)
    for _ in detector.watch(frames):
        pass
    return detector.cuts


def shot_ranges(cuts: list[int], num_frames: int) -> list[tuple[int, int]]:
    """Cuts (first frames of shots 1..) -> [start, end) of every shot, covering [0, num_frames)."""
    edges = [0, *sorted(c for c in set(cuts) if 0 < c < num_frames), num_frames]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def shot_folder(out_dir, index: int) -> Path:
    """The folder of shot `index` of a video whose plain folder would be out_dir."""
    out_dir = Path(out_dir)
    return out_dir.with_name(f"{out_dir.name}_shot{index:03d}")


def shot_folders(out_dir) -> list[Path]:
    """Existing shot folders of the video whose plain folder would be out_dir, sorted."""
    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    return sorted(out_dir.parent.glob(f"{out_dir.name}_shot[0-9][0-9][0-9]"))
