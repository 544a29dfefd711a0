"""The timing module against hand-computed indices at the start, middle and end of a clip."""
import numpy as np
import torch

from lipsync import timing


def test_feature_frame_count_matches_wav2vec2_formula():
    assert timing.num_feature_frames(399) == 0
    assert timing.num_feature_frames(400) == 1
    assert timing.num_feature_frames(16000) == 49  # 1 s
    assert timing.num_feature_frames(32000) == 99  # 2 s
    assert timing.num_feature_frames(1_600_000) == 4999


def test_generator_window_is_centred_on_the_frame():
    # 25 fps: frame f covers feature frames [2f, 2f + 2); its 10-frame window is [2f - 4, 2f + 6)
    assert timing.generator_window_start(0) == -4
    assert timing.generator_window_start(10) == 16
    assert timing.generator_window_start(100) == 196
    # 30 fps frame 3 covers [0.1, 0.1333) s, centre 0.11667 s = feature 5.833 -> window [1, 11)
    assert timing.generator_window_start(3, fps=30) == 1


def test_syncnet_window_is_start_aligned_with_its_video_frames():
    assert timing.syncnet_window_start(0) == 0
    assert timing.syncnet_window_start(7) == 14
    assert timing.syncnet_window_length() == 10


def test_windows_at_start_middle_and_end_of_a_clip():
    n = 100  # feature frames (2 s of audio, 50 video frames)
    features = torch.arange(n).float()[:, None].repeat(1, 3)
    w = timing.generator_audio_windows(features, [0, 25, 49])
    assert w.shape == (3, 10, 3)
    assert w[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # [-4, 6) clamped at the start
    assert w[1, :, 0].tolist() == list(range(46, 56))
    assert w[2, :, 0].tolist() == [94, 95, 96, 97, 98, 99, 99, 99, 99, 99]  # [94, 104) clamped at the end
    s = timing.syncnet_audio_window(features, 45)
    assert s[:, 0].tolist() == [90, 91, 92, 93, 94, 95, 96, 97, 98, 99]


def test_video_frames_for_audio_length():
    assert timing.num_video_frames(16000 * 3) == 75
    assert timing.num_video_frames(16000 * 3, fps=30) == 90
    assert np.array_equal(timing.clamp_window(-2, 4, 3), [0, 0, 0, 1])


def test_a_stream_can_generate_a_frame_once_its_windows_end_has_arrived():
    # 25 fps: frame f's window [2f - 4, 2f + 6) needs 2f + 6 feature frames: 120 ms of audio past the frame's start
    assert [timing.generator_window_end(f) for f in (0, 1, 10)] == [6, 8, 26]
    assert timing.generator_window_end(3, fps=30) == 11
    # the indices a stream reads from its feature buffer are those generator_audio_windows reads
    assert timing.generator_window_indices([0, 49], 100)[:, [0, -1]].tolist() == [[0, 5], [94, 99]]
    assert timing.generator_window_indices([], 100).shape == (0, 10)
