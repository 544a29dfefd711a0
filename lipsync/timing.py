"""The ONE place that maps video frames to audio samples and Wav2Vec2 feature frames.

Conventions (everything else calls these functions, nothing re-derives them):
- audio is 16 kHz mono; Wav2Vec2-family encoders give one feature frame every 320 samples (50 Hz) with a
  receptive field of 400 samples, so S samples give floor((S - 400) / 320) + 1 frames;
- a video frame k of a clip at `fps` covers time [k / fps, (k + 1) / fps); at 25 fps that is feature frames
  [2k, 2k + 2);
- SyncNet window starting at frame s (T frames): video frames [s, s + T) <-> feature frames [2s, 2s + 2T)
  (start-aligned; both cover the same time span);
- generator window of frame f: GENERATOR_AUDIO_FRAMES = 10 feature frames (200 ms) CENTRED on the frame,
  i.e. [2f - 4, 2f + 6) at 25 fps, in training and at inference alike (it reaches 120 ms past the frame's
  start);
- AV offset (lipsync.evaluation.sync's sign, measured by score_sync.py): offset k > 0 means the sound comes k
  video frames EARLY, so the audio that belongs to video frame f sits at frame audio_frame(f, k) = f - k of the
  track (k < 0: late, taken from later). Training windows call the window functions with audio_frame(f, k), so a
  clip whose audio is k frames off trains as in sync (at 25 fps: 2k feature frames);
- indices outside the feature sequence are clamped to its ends (edge frames repeat), so every frame of a clip
  has a full window and nothing is ever shifted in time.
"""
from __future__ import annotations

import math

import numpy as np
import torch

VIDEO_FPS = 25.0  # training data is resampled to this rate
AUDIO_SAMPLE_RATE = 16_000  # Hz, every audio path resamples to this
FEATURE_HOP = 320  # samples between Wav2Vec2 frames
FEATURE_RECEPTIVE_FIELD = 400  # samples seen by one Wav2Vec2 frame
FEATURE_RATE = AUDIO_SAMPLE_RATE / FEATURE_HOP  # 50 feature frames per second
SYNCNET_T = 5  # video frames per SyncNet / training window
GENERATOR_AUDIO_FRAMES = 10  # feature frames per generated video frame (200 ms)


def num_feature_frames(num_samples: int) -> int:
    """Feature frames a Wav2Vec2 encoder gives for `num_samples` of 16 kHz audio (0 when too short)."""
    if num_samples < FEATURE_RECEPTIVE_FIELD:
        return 0
    return (num_samples - FEATURE_RECEPTIVE_FIELD) // FEATURE_HOP + 1


def num_samples_for_features(num_frames: int) -> int:
    """The fewest samples that give `num_frames` feature frames (the inverse of num_feature_frames)."""
    return (num_frames - 1) * FEATURE_HOP + FEATURE_RECEPTIVE_FIELD


def num_video_frames(num_samples: int, fps: float = VIDEO_FPS) -> int:
    """Video frames that cover `num_samples` of audio (rounded to the nearest frame)."""
    return int(round(num_samples / AUDIO_SAMPLE_RATE * fps))


def audio_frame(frame: int, offset: int = 0) -> int:
    """The audio track's frame that belongs to video frame `frame` of a clip with AV offset `offset` (> 0: the sound
    comes early; see the module doc)."""
    return frame - offset


def clamp_window(start: int, length: int, num_frames: int) -> np.ndarray:
    """Indices [start, start + length) clamped into [0, num_frames)."""
    if num_frames <= 0:
        raise ValueError("cannot take a window of an empty feature sequence")
    return np.clip(np.arange(start, start + length), 0, num_frames - 1)


def syncnet_window_start(frame: int, fps: float = VIDEO_FPS) -> int:
    """First feature frame of the SyncNet window whose first video frame is `frame`."""
    return int(round(frame * FEATURE_RATE / fps))


def syncnet_window_length(num_video_frames: int = SYNCNET_T, fps: float = VIDEO_FPS) -> int:
    """Feature frames in a SyncNet window of `num_video_frames` (10 for T=5 at 25 fps)."""
    return int(round(num_video_frames * FEATURE_RATE / fps))


def generator_window_start(frame: int, fps: float = VIDEO_FPS) -> int:
    """First feature frame of the generator window centred on video frame `frame`.

    The frame's centre is at time (frame + 0.5) / fps; the window spans GENERATOR_AUDIO_FRAMES feature frames
    around it. At 25 fps this is 2 * frame - 4.
    """
    centre = (frame + 0.5) * FEATURE_RATE / fps  # in feature frames
    return int(math.floor(centre - GENERATOR_AUDIO_FRAMES / 2 + 0.5))


def syncnet_audio_window(features: torch.Tensor, frame: int, num_video_frames: int = SYNCNET_T,
                         fps: float = VIDEO_FPS) -> torch.Tensor:
    """features [N, D] -> [2T, D]: the audio of video frames [frame, frame + T)."""
    start, length = syncnet_window_start(frame, fps), syncnet_window_length(num_video_frames, fps)
    if 0 <= start and start + length <= features.shape[0]:  # inside the track (nearly every window): a view
        return features[start:start + length]
    return features[torch.from_numpy(clamp_window(start, length, features.shape[0]))]


def generator_window_end(frame: int, fps: float = VIDEO_FPS) -> int:
    """Feature frames a stream must have before video frame `frame` can be generated (the window's end, one past
    its last frame): 2 * frame + 6 at 25 fps, i.e. 120 ms of audio past the frame's start."""
    return generator_window_start(frame, fps) + GENERATOR_AUDIO_FRAMES


def generator_window_indices(frames, num_features: int, fps: float = VIDEO_FPS) -> np.ndarray:
    """frames (iterable of video frame indices, length F) -> int64 [F, 10]: the feature frames of each generator
    window, clamped into [0, num_features)."""
    frames = list(frames)
    if not frames:
        return np.zeros((0, GENERATOR_AUDIO_FRAMES), dtype=np.int64)
    return np.stack([clamp_window(generator_window_start(f, fps), GENERATOR_AUDIO_FRAMES, num_features)
                     for f in frames])


def generator_audio_windows(features: torch.Tensor, frames, fps: float = VIDEO_FPS) -> torch.Tensor:
    """features [N, D], frames (iterable of video frame indices, length F) -> [F, 10, D]."""
    return features[torch.from_numpy(generator_window_indices(frames, features.shape[0], fps))]
