"""Video decoding and H.264 writing in child processes, for pipelines whose threads would fight over the GIL.

PyAV releases Python's GIL inside FFmpeg but takes it back many times per frame, and while another thread of the
process runs Python code, each take-back waits up to the interpreter's switch interval (5 ms): next to one busy
Python thread, writing and decoding slow down several-fold (BENCHMARKS.md, inference). A child process has its
own interpreter: the parent only moves raw RGB frames through a pipe (about one system call per frame), which
releases the GIL once and blocks in the kernel, not in Python.

    frames = iter_frames_by_index_in_process(path, indices, fps=25.0)   # same frames as iter_frames_by_index
    with VideoWriterProcess(path, fps, width, height, audio=..., preset="veryfast") as writer:  # as VideoWriter
        writer.write(frame)

The children run `python -m lipsync.video_workers decode|write` and speak a small framed protocol on their
stdin / stdout: a JSON header, then messages of one type byte (+ payload). Errors in a child come back as the
same one-line UserError the in-process function raises; a failed or interrupted write leaves no file behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from lipsync.errors import UserError
from lipsync.files import temp_path
from lipsync.video_io import iter_frames_by_index
from lipsync.video_writer import VideoWriter, check_frame

_FRAME, _SHAPE_MESSAGE, _END, _ERROR = b"F", b"S", b"E", b"X"  # message types
_SHAPE = struct.Struct("<II")  # height, width of the RGB frame that follows a decoded-frame message
_LENGTH = struct.Struct("<I")  # byte length of a header or an error message
_F_SETPIPE_SZ = 1031  # fcntl: grow a Linux pipe's buffer (64 KiB by default) so a frame moves in one syscall
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
_STOP_TIMEOUT_S = 10.0  # a child that does not exit this long after its input ended is killed


def _grow_pipe(fd: int, nbytes: int) -> None:
    """Ask for a pipe buffer of about `nbytes` (capped by /proc/sys/fs/pipe-max-size; best effort, Linux only)."""
    import fcntl  # POSIX
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, min(max(nbytes, 1 << 16), 1 << 20))


def _write_all(fd: int, *buffers) -> None:
    """Write the buffers in order, in as few system calls as the pipe allows (one per frame, usually)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views.pop(0))
        if written:
            views[0] = views[0][written:]


def _read_into(fd: int, *buffers) -> int:
    """Fill the writable buffers in order from fd; the number of bytes read, less than their total only if the
    stream ended first (one system call per frame, usually: each one may wait for Python's GIL afterwards)."""
    views = [memoryview(b).cast("B") for b in buffers]
    total = 0
    while views:
        got = os.readv(fd, views)
        if got == 0:
            break
        total += got
        while views and got >= len(views[0]):
            got -= len(views.pop(0))
        if got:
            views[0] = views[0][got:]
    return total


def _read_exact(fd: int, nbytes: int) -> bytes:
    """Exactly nbytes from fd; EOFError when the stream ends first."""
    buffer = bytearray(nbytes)
    if _read_into(fd, buffer) < nbytes:
        raise EOFError("the stream ended early")
    return bytes(buffer)


def _send_header(fd: int, header: dict) -> None:
    data = json.dumps(header).encode()
    _write_all(fd, _LENGTH.pack(len(data)) + data)


def _read_header(fd: int) -> dict:
    (length,) = _LENGTH.unpack(_read_exact(fd, _LENGTH.size))
    return json.loads(_read_exact(fd, length))


def _send_error(fd: int, message: str) -> None:
    data = message.encode()
    _write_all(fd, _ERROR + _LENGTH.pack(len(data)) + data)


def _error_text(payload: bytes) -> str:
    """The message of an error message's payload (the bytes after its type byte)."""
    (length,) = _LENGTH.unpack_from(payload)
    return payload[_LENGTH.size:_LENGTH.size + length].decode(errors="replace")


def start_worker(role: str) -> subprocess.Popen:
    """A `python -m lipsync.video_workers ROLE` child, started now and given its work later: its interpreter and
    imports take a fraction of a second, time a caller can overlap with its own start-up."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    # stderr dropped (FFmpeg's messages would cut into the parent's progress bars): a child that dies without
    # reporting (killed, out of memory) is told by its exit status
    return subprocess.Popen([sys.executable, "-m", "lipsync.video_workers", role], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, env=env)


def stop_worker(child: subprocess.Popen) -> int:
    """(Any number of times.) Close our ends of its pipes, wait for it (kill it if it hangs); its exit status."""
    for pipe in (child.stdin, child.stdout):
        with contextlib.suppress(OSError):
            pipe.close()
    try:
        return child.wait(_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


# ----------------------------------------------------------------------------------------------------- decoding
def iter_frames_by_index_in_process(path, indices, fps: float | None = None, resize_factor: int = 1,
                                    chunk: int = 48, worker: subprocess.Popen | None = None) -> Iterator[np.ndarray]:
    """`video_io.iter_frames_by_index` (same arguments, same frames, RGB uint8 [H, W, 3]) decoded by a child
    process (`worker`, from start_worker("decode"), or a new one), which runs ahead of the consumer by what the
    pipe holds. Closing the generator stops the child.
    The child first sends the frames' shape, then each frame as one message: type byte + H * W * 3 bytes."""
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and indices.min() < 0:
        raise ValueError("frame indices must be >= 0")
    if not indices.size:
        return
    child = worker or start_worker("decode")
    stdin, stdout = child.stdin.fileno(), child.stdout.fileno()
    kind = bytearray(1)
    try:
        _grow_pipe(stdout, 1 << 20)
        _send_header(stdin, {"path": str(path), "indices": indices.tolist(), "fps": fps,
                             "resize_factor": resize_factor, "chunk": chunk})
        shape = bytearray(_SHAPE.size)
        got = _read_into(stdout, kind, shape)
        _check_message(stdout, kind, _SHAPE_MESSAGE, got, shape)
        height, width = _SHAPE.unpack(shape)
        for _ in range(len(indices)):
            frame = np.empty((height, width, 3), dtype=np.uint8)
            got = _read_into(stdout, kind, frame)
            _check_message(stdout, kind, _FRAME, got, frame)
            yield frame
    except (EOFError, BrokenPipeError):
        raise UserError(f"the decoder process for {path} ended unexpectedly (exit status {child.poll()})") from None
    finally:
        stop_worker(child)


def _check_message(fd: int, kind: bytearray, expected: bytes, got: int, payload) -> None:
    """After reading a message of a known size: its child's error as a UserError, EOFError if it was cut short."""
    if got and kind == _ERROR:  # the error's own payload went into the buffer; the child sent it and exited
        head = memoryview(payload).cast("B")[:got - 1].tobytes()
        rest = bytearray(1 << 16)
        raise UserError(_error_text(head + rest[:_read_into(fd, rest)]))
    if kind != expected or got < 1 + memoryview(payload).nbytes:
        raise EOFError


def _serve_decode(stdin: int, stdout: int) -> None:
    header = _read_header(stdin)
    try:
        for i, frame in enumerate(iter_frames_by_index(header["path"], header["indices"], fps=header["fps"],
                                                       resize_factor=header["resize_factor"],
                                                       chunk=header["chunk"])):
            if i == 0:
                _write_all(stdout, _SHAPE_MESSAGE, _SHAPE.pack(*frame.shape[:2]))
            _write_all(stdout, _FRAME, np.ascontiguousarray(frame))
    except (UserError, IndexError) as err:
        _send_error(stdout, str(err))


# ------------------------------------------------------------------------------------------------------ writing
class VideoWriterProcess:
    """`video_io.VideoWriter` (same arguments and atomic temp-then-rename behaviour) running in a child process:
    `write` hands the frame to the pipe and returns; x264, the colour conversion and the muxing run in the child.
    Leaving the `with` block by an exception discards the output; errors of the child are one-line UserErrors."""

    def __init__(self, path, fps: float, width: int, height: int, crf: int = 18, audio: np.ndarray | None = None,
                 audio_rate: int = 16000, preset: str = "medium"):
        self.path, self.width, self.height = Path(path), width, height
        samples = None if audio is None else np.ascontiguousarray(np.asarray(audio, dtype=np.float32))
        self._child = start_worker("write")
        self._stdin, self._stdout = self._child.stdin.fileno(), self._child.stdout.fileno()
        _grow_pipe(self._stdin, width * height * 3 + 1)
        header = {"path": str(self.path), "fps": float(fps), "width": width, "height": height, "crf": crf,
                  "preset": preset, "audio_rate": audio_rate,
                  "audio_shape": None if samples is None else list(samples.shape)}
        try:
            _send_header(self._stdin, header)
            if samples is not None:
                _write_all(self._stdin, samples)
        except BrokenPipeError:
            self._fail()

    def __enter__(self) -> VideoWriterProcess:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 [height, width, 3] frame."""
        check_frame(frame, self.width, self.height)
        try:
            _write_all(self._stdin, _FRAME, np.ascontiguousarray(frame))
        except BrokenPipeError:  # the child stopped: its own error says why
            self._fail()

    def close(self) -> None:
        """Finish the file (the child flushes x264 and AAC, closes and renames it) and wait for the child."""
        if self._child is None:
            return
        reply = bytearray(1)
        try:
            _write_all(self._stdin, _END)
            _read_into(self._stdout, reply)
        except BrokenPipeError:
            self._fail()
        if reply != _END:
            self._fail(reply)
        self._stop()

    def discard(self) -> None:
        """Stop the child without finishing: it deletes its temp file (and so does this, if it was killed)."""
        if self._child is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()  # end of input before the end message: the child discards
            self._stop()

    def _stop(self) -> int:
        status = stop_worker(self._child)
        self._child = None
        with contextlib.suppress(OSError):
            temp_path(self.path).unlink(missing_ok=True)  # a killed child left it
        return status

    def _fail(self, reply: bytes = b""):
        """The child ended or reported an error (its last message, then it exits): raise it as one line.
        reply: the start of that message, when already read."""
        message = None
        with contextlib.suppress(OSError, struct.error):
            rest = bytearray(1 << 16)
            reply = bytes(reply) + rest[:_read_into(self._stdout, rest)]
            message = _error_text(reply[1:]) if reply[:1] == _ERROR else None
        status = self._stop()
        raise UserError(message or f"the video writer process for {self.path} ended unexpectedly "
                                   f"(exit status {status})")


def _serve_write(stdin: int, stdout: int) -> None:
    header = _read_header(stdin)
    audio = None
    if header["audio_shape"] is not None:
        audio = np.empty(header["audio_shape"], dtype=np.float32)
        if _read_into(stdin, audio) < audio.nbytes:
            raise EOFError
    height, width = header["height"], header["width"]
    frame = np.empty((height, width, 3), dtype=np.uint8)  # reused: VideoWriter.write copies it into x264's frame
    try:
        with VideoWriter(header["path"], header["fps"], width, height, crf=header["crf"], audio=audio,
                         audio_rate=header["audio_rate"], preset=header["preset"]) as writer:
            while True:
                kind = _read_exact(stdin, 1)  # EOFError (the parent gave up): the writer discards
                if kind == _END:
                    break
                if kind != _FRAME or _read_into(stdin, frame) < frame.nbytes:
                    raise EOFError
                writer.write(frame)
    except EOFError:
        return
    except Exception as err:  # noqa: BLE001 - whatever stopped the writer goes back to the parent as one line
        message = str(err)
        if isinstance(err, OSError) and err.strerror:  # "File exists: /out" rather than "[Errno 17] File exists: ..."
            message = err.strerror + (f": {err.filename}" if err.filename else "")
        _send_error(stdout, f"cannot write {header['path']}: {message}")
        return
    _write_all(stdout, _END)


def main(role: str) -> int:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        {"decode": _serve_decode, "write": _serve_write}[role](stdin, stdout)
    except (BrokenPipeError, EOFError, KeyboardInterrupt):  # the parent went away or was interrupted
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
