"""Writing video: the ONE H.264 + AAC writer of the project (VideoWriter, write_video), atomic (temp name, then
rename). lipsync.video_io reads."""
from __future__ import annotations

import contextlib
import itertools
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import cv2
import numpy as np

from lipsync.errors import UserError
from lipsync.files import check_writable_folder, temp_path

_SMPTE170M, _LIMITED_RANGE = 6, 1  # the tags VideoWriter writes (colour space, primaries, transfer; range): BT.601


_LAYOUTS = {1: "mono", 2: "stereo"}  # audio channels -> AAC channel layout


def _as_fraction(fps) -> Fraction:
    """Exact frame rate: 25 -> 25, 29.97 -> 2997/100, 30000 / 1001 -> 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def check_frame(frame: np.ndarray, width: int, height: int) -> None:
    """ValueError unless `frame` is what a writer of that size takes: RGB uint8 [height, width, 3]."""
    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
        raise ValueError(f"expected uint8 frame of shape {(height, width, 3)}, got {frame.dtype} {frame.shape}")


# containers the writer can put H.264 + AAC in (FFmpeg picks the container from the file name)
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".avi")


def check_output_video(path) -> None:
    """UserError unless a VideoWriter can write `path`: a file name with a video container's extension, in a
    folder that exists or can be made and may be written in. Lets a long run check its output before it starts
    (the writer itself opens the file only when the first frame is ready)."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"output video {path}: the file name must end in {', '.join(VIDEO_SUFFIXES)}")
    if path.is_dir():
        raise UserError(f"output video {path} is a folder")
    check_writable_folder(path.parent, f"output video {path}")


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


class VideoWriter:
    """H.264 (libx264, yuv420p, one CRF pass at an x264 `preset`) + optional AAC audio in one container, written
    atomically.

    Frames go to a hidden temp file next to `path` (`lipsync.files.temp_path`) that is renamed to `path` only when
    the writer closes cleanly; leaving the `with` block by an exception deletes it, so a half-written video never
    exists under the final name. The parent folder is created (and removed again with a discarded video).

    Video: frame n has pts n in time base 1 / fps (a Fraction: 29.97 stays exact), so the output rate is exact.
    yuv420p needs even sizes: an odd width or height is padded by replicating the last column / row (the output
    is then one pixel larger than `width` x `height`).

    Audio: float32 [S] (mono) or [C, S] (C = 1 or 2) at `audio_rate`, interleaved with the video (the audio up to
    the end of each frame goes in after it, the rest at close) with sample-exact pts, so the audio stream lasts
    S / audio_rate seconds whatever the video length.
    """

    def __init__(self, path, fps: float, width: int, height: int, crf: int = 18, audio: np.ndarray | None = None,
                 audio_rate: int = 16000, preset: str = "medium"):
        self.path = Path(path)
        self.width, self.height = width, height
        self._rate = _as_fraction(fps)
        self._frames_written = 0
        # folders made for the output go again with a discarded one: a failed run leaves nothing behind
        self._made_folders = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        self._container = av.open(str(self._tmp), "w")
        try:
            self._video = self._container.add_stream("libx264", rate=self._rate)
            self._video.width, self._video.height = width + width % 2, height + height % 2
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": str(crf), "preset": preset}  # preset: x264 speed vs file size
            self._video.codec_context.time_base = 1 / self._rate
            context = self._video.codec_context  # tagged BT.601 limited range, as converted: players read it right
            context.colorspace = context.color_primaries = context.color_trc = _SMPTE170M
            context.color_range = _LIMITED_RANGE
            self._audio = self._audio_stream(audio, audio_rate) if audio is not None else None
        except BaseException:
            self._discard()
            raise

    def _audio_stream(self, audio, rate: int):
        samples = np.asarray(audio, dtype=np.float32)
        self._samples = np.ascontiguousarray(samples[None] if samples.ndim == 1 else samples)  # [C, S]
        if self._samples.ndim != 2 or self._samples.shape[0] not in _LAYOUTS:
            raise ValueError(f"audio must be mono [S] or [C, S] with C in (1, 2), got shape {samples.shape}")
        self._audio_rate = rate
        self._samples_written = 0
        stream = self._container.add_stream("aac", rate=rate)
        stream.layout = _LAYOUTS[self._samples.shape[0]]
        return stream

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 [height, width, 3] frame."""
        check_frame(frame, self.width, self.height)
        pad = ((0, self.height % 2), (0, self.width % 2), (0, 0))
        if any(p[1] for p in pad):
            frame = np.pad(frame, pad, mode="edge")
        # OpenCV's BT.601 conversion is several times faster than swscale's inside x264's encode call
        planes = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420)  # [H * 3 / 2, W] uint8
        video_frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        video_frame.pts = self._frames_written
        video_frame.time_base = self._video.codec_context.time_base
        self._container.mux(self._video.encode(video_frame))
        self._frames_written += 1
        if self._audio is not None:
            self._write_audio(until_sample=round(self._frames_written / self._rate * self._audio_rate))

    def _write_audio(self, until_sample: int) -> None:
        stop = min(until_sample, self._samples.shape[1])
        if stop <= self._samples_written:
            return
        chunk = np.ascontiguousarray(self._samples[:, self._samples_written:stop])
        audio_frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=self._audio.layout)
        audio_frame.sample_rate = self._audio_rate
        audio_frame.pts = self._samples_written
        audio_frame.time_base = Fraction(1, self._audio_rate)
        self._container.mux(self._audio.encode(audio_frame))
        self._samples_written = stop

    def close(self) -> None:
        """Flush the encoders, close the file and move it to `path`."""
        if self._container is None:
            return
        try:
            if self._audio is not None:
                self._write_audio(until_sample=self._samples.shape[1])
                self._container.mux(self._audio.encode(None))
            self._container.mux(self._video.encode(None))
            self._container.close()
        except BaseException:
            self._discard()
            raise
        self._container = None
        os.replace(self._tmp, self.path)

    def _discard(self) -> None:
        """Close and delete the temp file (the error that brought us here is the one worth reporting)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)
        for folder in self._made_folders:  # deepest first
            with contextlib.suppress(OSError):  # not empty (someone else wrote there meanwhile)
                folder.rmdir()


def write_video(path, frames: Iterable[np.ndarray], fps: float, audio: np.ndarray | None = None,
                audio_rate: int = 16000, crf: int = 18, preset: str = "medium") -> None:
    """Write RGB uint8 frames (any iterable; the size is taken from the first) with optional audio."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"no frames to write to {path}")
    height, width = first.shape[:2]
    with VideoWriter(path, fps, width, height, crf=crf, audio=audio, audio_rate=audio_rate, preset=preset) as writer:
        for frame in itertools.chain([first], frames):
            writer.write(frame)
