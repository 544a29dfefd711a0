"""lipsync.video_workers: decoding and writing in child processes give what video_io gives in process."""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest

from lipsync.errors import UserError
from lipsync.video_io import iter_frames, iter_frames_by_index, pingpong_indices
from lipsync.video_workers import VideoWriterProcess, iter_frames_by_index_in_process
from lipsync.video_writer import VideoWriter

from media import GRID


def worker_processes() -> int:
    """Running `python -m lipsync.video_workers` children of this process (Linux /proc; other processes' workers,
    e.g. of a test run next to this one, are not counted)."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
            count += parent == os.getpid() and b"lipsync.video_workers" in (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            pass
    return count


@pytest.mark.parametrize("name, fps", [("grid", None), ("talking_mpeg4", 30)])
def test_decoding_in_a_child_gives_the_same_frames(name, fps, clips):
    path = clips[name].path
    n = sum(1 for _ in iter_frames(path, target_fps=fps, resize_factor=2))
    indices = np.concatenate([pingpong_indices(n, n + n // 2), np.random.default_rng(0).integers(0, n, 10)])
    here = list(iter_frames_by_index(path, indices, fps=fps, resize_factor=2, chunk=16))
    there = list(iter_frames_by_index_in_process(path, indices, fps=fps, resize_factor=2, chunk=16))
    assert len(there) == len(indices)
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)


def test_decoding_errors_are_one_line_and_stop_the_child(tmp_path):
    with pytest.raises(UserError, match="video file not found"):
        list(iter_frames_by_index_in_process(tmp_path / "missing.mp4", [0]))
    with pytest.raises(UserError, match="has no frame 75"):
        list(iter_frames_by_index_in_process(GRID.path, [73, 74, 75]))
    frames = iter_frames_by_index_in_process(GRID.path, np.arange(75))
    next(frames)
    assert worker_processes() >= 1
    frames.close()  # the consumer stops early: the child goes
    assert worker_processes() == 0


def read_back(path) -> tuple[list[np.ndarray], float]:
    """Decoded frames and the audio stream's duration in seconds."""
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        seconds = float(audio.duration * audio.time_base)
    return list(iter_frames(path)), seconds


def test_writing_in_a_child_gives_the_same_video(tmp_path):
    # crf 0 is lossless: the decoded frames depend only on what reached x264, not on its multithreaded encoding
    # decisions, which once differed between two runs of the same lossy encode on a loaded CI machine
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(30)]
    audio = rng.standard_normal((2, 16000)).astype(np.float32) * 0.1  # stereo, 1 s
    for cls, name in ((VideoWriter, "here.mp4"), (VideoWriterProcess, "there.mp4")):
        with cls(tmp_path / name, 29.97, 64, 48, crf=0, audio=audio, audio_rate=16000, preset="veryfast") as w:
            for frame in frames:
                w.write(frame)
    here, here_seconds = read_back(tmp_path / "here.mp4")
    there, there_seconds = read_back(tmp_path / "there.mp4")
    assert len(there) == 30 and there_seconds == pytest.approx(here_seconds) == pytest.approx(1.0, abs=0.1)
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.mp4", "there.mp4"]  # no temp file left


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):  # the caller's own error: the child discards its temp file
        with VideoWriterProcess(tmp_path / "out.mp4", 25, 64, 48) as writer:
            writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
            raise RuntimeError("generator crashed")
    with pytest.raises(ValueError):
        with VideoWriterProcess(tmp_path / "out.mp4", 25, 64, 48) as writer:
            writer.write(np.zeros((48, 65, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="ended unexpectedly"):  # the child dies (e.g. killed for memory)
        with VideoWriterProcess(tmp_path / "out.mp4", 25, 64, 48) as writer:
            writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
            writer._child.kill()
            writer._child.wait()
            for _ in range(100):  # the pipe breaks once its buffer is full
                writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []
    assert worker_processes() == 0


def test_an_unwritable_output_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write") as err:
        with VideoWriterProcess(blocker / "out.mp4", 25, 64, 48) as writer:
            for _ in range(100):
                writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
    assert "\n" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
