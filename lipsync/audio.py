"""Audio in and out: any file FFmpeg decodes (wav, mp3, m4a/aac, flac, a video's audio track) -> 16 kHz mono.

PyAV decodes (FFmpeg is bundled in its wheel) and soxr resamples, instead of torchaudio: torchaudio's CPU builds
do not match current torch releases and its load/save need torchcodec plus a system FFmpeg.
Stereo is downmixed by averaging the channels ourselves (libswresample's mono layout sums with gain 1.41).
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf
import soxr

from lipsync.errors import UserError
from lipsync.files import atomic_path
from lipsync.timing import AUDIO_SAMPLE_RATE


def load_audio(path, sample_rate: int = AUDIO_SAMPLE_RATE, mono: bool = True) -> np.ndarray:
    """Decode the first audio stream of `path` -> float32 [S] (mono) or [C, S], resampled to `sample_rate`."""
    samples, source_rate = decode_audio(path)
    if mono:
        samples = samples.mean(axis=0)
    if source_rate != sample_rate:
        samples = soxr.resample(samples.T, source_rate, sample_rate, quality="HQ").T
    return np.ascontiguousarray(samples, dtype=np.float32)


def decode_audio(path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream at its own rate -> (float32 [C, S], sample_rate). One-line errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"audio file not found: {path}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:  # its str() holds the errno and the path: the reason is enough
        raise UserError(f"cannot read audio from {path}: {err.strerror}") from None
    with container:
        if not container.streams.audio:
            raise UserError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        # planar float at the source rate and layout: we downmix and resample ourselves
        resampler = av.AudioResampler(format="fltp", layout=stream.codec_context.layout.name, rate=rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except av.FFmpegError as err:
            raise UserError(f"cannot decode audio of {path}: {err.strerror}") from None
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise UserError(f"{path} has an empty audio stream")
    return np.concatenate(chunks, axis=1), rate


def write_wav(path, samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> None:
    """Write PCM16 wav atomically (temp name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), np.asarray(samples, dtype=np.float32).T, sample_rate, subtype="PCM_16", format="WAV")
