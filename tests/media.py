"""Every media file the tests read, from one place.

- Real faces and speech: the two GRID corpus clips committed in tests/data (CC BY 4.0, see its README).
- Everything else is made at test time: talking faces rendered by the demo's synthetic renderer (RetinaFace
  finds them in every frame) and written by PyAV in the container, codec, frame rate and audio format a test is
  about. Nothing is read from outside the repository.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipsync.audio import load_audio
from lipsync.demo import synthetic
from lipsync.timing import AUDIO_SAMPLE_RATE, num_video_frames

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Clip:
    """A test video and what its header and frames hold (every clip has audio)."""
    path: Path
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float  # seconds, as the header says
    face_width: int  # median RetinaFace box width, pixels


# tests/data/README.md: 25 fps mpeg1video + mp2 44.1 kHz stereo in MPEG-PS, one frontal speaker per clip
GRID = Clip(DATA / "grid_lwbsza.mpg", 25.0, 75, 360, 288, 2.98, 103)
GRID2 = Clip(DATA / "grid_id2_swwp2s.mpg", 25.0, 75, 360, 288, 2.98, 105)


def real_speech() -> np.ndarray:
    """Real speech, 16 kHz mono float32 [~95,000]: the two GRID sentences, one after the other (5.96 s)."""
    return np.concatenate([load_audio(GRID.path), load_audio(GRID2.path)])


def talking_face(seconds: float, size: int, seed: int = 0, fps: float = 25.0) -> tuple[list[np.ndarray], np.ndarray]:
    """A synthetic person speaking: (frames RGB uint8 [size, size, 3] at `fps`, speech float32 [S] at 16 kHz)."""
    rng = np.random.default_rng([seed, 1])
    identity = synthetic.random_identity(rng)
    audio, opening = synthetic.synth_speech(seconds, rng, fps)
    times = np.arange(num_video_frames(len(audio), fps)) / fps
    return [synthetic.render_frame(identity, o, t, size) for o, t in zip(opening, times)], audio


def write_media(path, frames, fps: float, audio: np.ndarray | None = None, audio_rate: int = AUDIO_SAMPLE_RATE,
                video_codec: str = "libx264", audio_codec: str = "aac", channels: int = 1,
                out_rate: int | None = None, gop: int = 25, faststart: bool = False) -> Path:
    """Write RGB frames (and 16 kHz mono `audio`, optional) with PyAV in any container / codec: the container
    follows the suffix, the audio is resampled to `out_rate` (default: `audio_rate`) and duplicated onto
    `channels` channels. A keyframe every `gop` frames, so seeking is exercised. faststart: an MP4's index goes
    before the media data (as for streaming), so a file cut short still opens and tells its full length."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        video = container.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1001))
        # Motion JPEG takes full-range YUV only
        video.width, video.height, video.pix_fmt = width, height, "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
        video.codec_context.gop_size = gop
        sound = None
        if audio is not None:
            out_rate = out_rate or audio_rate
            layout = {1: "mono", 2: "stereo"}[channels]
            sound = container.add_stream(audio_codec, rate=out_rate, layout=layout)
            resampler = av.AudioResampler(format=sound.codec_context.format.name, layout=layout, rate=out_rate)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = np.repeat(np.asarray(audio, np.float32)[None], channels, axis=0)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout=layout)
            frame.sample_rate = audio_rate
            # timestamps from 0: the encoder's priming samples are then marked as such and skipped on decoding
            # (without them the track decodes ~1,000 samples late)
            frame.pts, frame.time_base = 0, Fraction(1, audio_rate)
            for piece in [*resampler.resample(frame), *resampler.resample(None)]:
                container.mux(sound.encode(piece))
            container.mux(sound.encode(None))
    return path


@dataclass(frozen=True)
class Media:
    """The made-at-test-time clips of one test session (see `make_media`)."""
    talking_mpeg4: Clip  # MP4, MPEG-4 part 2 + AAC 16 kHz stereo, 256 px: a talking head like HDTF's
    talking_h264: Clip  # MP4, H.264 + AAC 44.1 kHz stereo, 200 px
    speech_wav: Path  # real speech (GRID), 16 kHz mono PCM wav, 5.96 s


def make_media(folder: Path) -> Media:
    folder.mkdir(parents=True, exist_ok=True)
    frames, audio = talking_face(6.0, 256, seed=1)
    mpeg4 = write_media(folder / "talking_mpeg4.mp4", frames, 25, audio, video_codec="mpeg4", channels=2)
    frames, audio = talking_face(4.88, 200, seed=2)
    h264 = write_media(folder / "talking_h264.mp4", frames, 25, audio, channels=2, out_rate=44100)
    speech = folder / "speech.wav"
    import soundfile as sf

    sf.write(str(speech), real_speech(), AUDIO_SAMPLE_RATE, subtype="PCM_16")
    return Media(talking_mpeg4=Clip(mpeg4, 25.0, 150, 256, 256, 6.0, 111),
                 talking_h264=Clip(h264, 25.0, 122, 200, 200, 4.88, 64), speech_wav=speech)
