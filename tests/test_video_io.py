"""lipsync.video_io on the test clips (tests/media.py: real GRID clips in MPEG-PS, synthetic talking faces in MP4
with MPEG-4 part 2 or H.264 and AAC) and on synthetic videos written by VideoWriter."""
from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from lipsync.errors import UserError
from lipsync.video_io import (
    count_frames,
    is_image_path,
    iter_frames,
    iter_frames_by_index,
    pingpong_indices,
    probe_video,
    read_image,
)
from lipsync.video_writer import VideoWriter, check_output_video, write_video

from media import GRID, write_media

SQUARE_STEP = 3  # pixels the synthetic square moves per source frame


def moving_square(num_frames: int) -> list[np.ndarray]:
    """64 px high frames with a bright 8 px wide square whose left edge is at SQUARE_STEP * frame index."""
    frames = []
    for i in range(num_frames):
        frame = np.full((64, 16 + SQUARE_STEP * num_frames, 3), 20, dtype=np.uint8)
        frame[20:44, SQUARE_STEP * i:SQUARE_STEP * i + 8] = 235
        frames.append(frame)
    return frames


def square_position(frame: np.ndarray) -> int:
    """Left edge of the bright square, read back from a decoded frame."""
    return int(np.argmax(frame[32, :, 1] > 128))


@pytest.mark.parametrize("name", ["grid", "grid2", "talking_mpeg4", "talking_h264"])
def test_clip_probe_and_decode(name, clips):
    clip = clips[name]
    info = probe_video(clip.path)
    assert (info.fps, info.width, info.height, info.num_frames) == (clip.fps, clip.width, clip.height, clip.num_frames)
    assert info.duration == pytest.approx(clip.duration, abs=0.05)
    assert info.has_audio
    count = 0
    for frame in iter_frames(clip.path, target_fps=25):
        assert frame.shape == (clip.height, clip.width, 3) and frame.dtype == np.uint8
        count += 1
    assert count == clip.num_frames
    assert count_frames(clip.path, target_fps=25) == clip.num_frames
    assert count_frames(clip.path, target_fps=30, limit=10) == 10


def test_resize_factor_halves_the_frames():
    frame = next(iter_frames(GRID.path, resize_factor=2))
    assert frame.shape == (144, 180, 3)


@pytest.mark.parametrize("container, video_codec, audio_codec", [("mkv", "libvpx-vp9", "libopus"),
                                                                 ("mpg", "mpeg2video", "mp2"),
                                                                 ("avi", "mjpeg", "pcm_s16le")])
def test_other_containers_and_codecs_decode(tmp_path, container, video_codec, audio_codec):
    """WebM-style VP9 + Opus in Matroska, MPEG-2 + MP2 in MPEG-PS, Motion JPEG + PCM in AVI, at 30 fps: probed,
    decoded and resampled to 25 fps like the MP4s (Opus only takes 48 kHz: the audio is resampled on writing)."""
    frames = moving_square(30)
    path = write_media(tmp_path / f"clip.{container}", frames, 30, np.zeros(16000, np.float32),
                       video_codec=video_codec, audio_codec=audio_codec,
                       out_rate=48000 if audio_codec == "libopus" else None)
    info = probe_video(path)
    assert info.fps == pytest.approx(30) and info.has_audio and (info.width, info.height) == (106, 64)
    assert [square_position(f) for f in iter_frames(path)] == [SQUARE_STEP * i for i in range(30)]
    assert len(list(iter_frames(path, target_fps=25))) == 25


@pytest.mark.parametrize("source_fps", [30, 29.97])
def test_resample_to_25_fps_takes_frames_at_the_right_times(tmp_path, source_fps):
    num_source = 90
    path = tmp_path / "square.mp4"
    write_video(path, moving_square(num_source), fps=source_fps)
    info = probe_video(path)
    assert info.fps == pytest.approx(source_fps, abs=1e-6)

    frames = list(iter_frames(path, target_fps=25))
    assert abs(len(frames) - info.duration * 25) <= 1
    for k, frame in enumerate(frames):
        # the source frame shown at k / 25 s: the last one starting at or before it (half a frame tolerance)
        expected = min(int(np.floor(k / 25 * source_fps + 0.5)), num_source - 1)
        assert abs(square_position(frame) - SQUARE_STEP * expected) <= 1, f"output frame {k}"


def test_writer_round_trip_with_audio(tmp_path):
    fps, rate = 25, 16000
    frames = moving_square(50)
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)).astype(np.float32)
    path = tmp_path / "nested" / "out.mp4"
    write_video(path, frames, fps=fps, audio=audio, audio_rate=rate)

    assert sorted(p.name for p in path.parent.iterdir()) == ["out.mp4"]  # no temp file left
    info = probe_video(path)
    assert (info.fps, info.num_frames, info.width, info.height) == (25.0, 50, 166, 64)
    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and video.codec_context.pix_fmt == "yuv420p"
        assert sound.codec_context.name == "aac" and sound.rate == rate
        assert float(sound.duration * sound.time_base) == pytest.approx(2.0, abs=1 / fps)
    decoded = list(iter_frames(path))
    assert len(decoded) == 50
    assert [square_position(f) for f in decoded] == [SQUARE_STEP * i for i in range(50)]


def test_writer_pads_odd_sizes_by_replication(tmp_path):
    frame = np.zeros((63, 97, 3), dtype=np.uint8)
    frame[:, -1] = 200  # last column
    frame[-1, :] = 100  # last row
    path = tmp_path / "odd.mp4"
    write_video(path, [frame] * 3, fps=25)
    decoded = next(iter_frames(path))
    assert decoded.shape == (64, 98, 3)
    np.testing.assert_allclose(decoded[:, -1].astype(int), decoded[:, -2].astype(int), atol=6)
    np.testing.assert_allclose(decoded[-1, :].astype(int), decoded[-2, :].astype(int), atol=6)


def test_writer_leaves_nothing_on_exception(tmp_path):
    path = tmp_path / "new" / "folders" / "out.mp4"  # made for the output, removed with it
    with pytest.raises(RuntimeError):
        with VideoWriter(path, 25, 64, 48) as writer:
            writer.write(np.zeros((48, 64, 3), dtype=np.uint8))
            raise RuntimeError("generator crashed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, message", [
    ("out", "must end in .mp4, .mov, .m4v, .mkv, .avi"), ("out.webm", "must end in"),
    ("a_file/out.mp4", "a_file is a file, not a folder"), ("a_file/deeper/out.mp4", "a_file is a file, not a folder"),
    ("a_folder.mp4", "is a folder")])
def test_output_video_is_checked_without_writing_anything(tmp_path, name, message):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_folder.mp4").mkdir()
    with pytest.raises(UserError, match=message):
        check_output_video(tmp_path / name)
    check_output_video(tmp_path / "new" / "folders" / "out.MP4")  # a folder still to be made is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder.mp4"]


def test_writer_rejects_wrong_frame_shape(tmp_path):
    with pytest.raises(ValueError):
        with VideoWriter(tmp_path / "out.mp4", 25, 64, 48) as writer:
            writer.write(np.zeros((48, 65, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_pingpong_indices():
    np.testing.assert_array_equal(pingpong_indices(4, 11), [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2])
    np.testing.assert_array_equal(pingpong_indices(5, 3), [0, 1, 2])
    np.testing.assert_array_equal(pingpong_indices(1, 4), [0, 0, 0, 0])
    long = pingpong_indices(7, 100)
    assert set(np.abs(np.diff(long))) == {1}  # no repeated frame at a turn, no jump cut
    assert long.min() == 0 and long.max() == 6


@pytest.mark.parametrize("name, fps", [("grid", None), ("talking_mpeg4", None), ("talking_mpeg4", 30)])
def test_iter_frames_by_index_matches_plain_decode(name, fps, clips):
    path = clips[name].path
    plain = list(iter_frames(path, target_fps=fps, resize_factor=4))
    n = len(plain)
    indices = np.concatenate([pingpong_indices(n, 2 * n + n // 2),  # forward, backward (in blocks), forward
                              np.random.default_rng(0).integers(0, n, 20)])  # and random access
    frames = list(iter_frames_by_index(path, indices, fps=fps, resize_factor=4, chunk=16))
    assert len(frames) == len(indices)
    for i, frame in zip(indices, frames):
        np.testing.assert_array_equal(frame, plain[i])


def test_iter_frames_by_index_past_the_end():
    with pytest.raises(IndexError):
        list(iter_frames_by_index(GRID.path, [73, 74, 75]))


def test_bad_inputs_raise_user_error(tmp_path, media):
    fake = tmp_path / "notes.mp4"
    fake.write_text("not a video\n")
    for bad in [tmp_path / "missing.mp4", fake, media.speech_wav]:
        with pytest.raises(UserError, match=bad.name):
            probe_video(bad)
        with pytest.raises(UserError, match=bad.name):
            next(iter_frames(bad))
    with pytest.raises(UserError, match="notes.png"):
        read_image(fake.rename(tmp_path / "notes.png"))


def test_read_image_is_rgb(tmp_path):
    image = np.zeros((8, 12, 3), dtype=np.uint8)
    image[..., 0] = 255  # red in RGB
    path = tmp_path / "red.PNG"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert is_image_path(path) and not is_image_path(tmp_path / "clip.mp4")
    np.testing.assert_array_equal(read_image(path), image)


def colour_chart() -> np.ndarray:
    """[96, 128, 3] uint8: smooth hue and brightness ramps (what a face is made of), in 2x2 blocks of one colour."""
    y, x = np.mgrid[0:48, 0:64] / np.array([47.0, 63.0])[:, None, None]
    chart = np.stack([x, y, 1 - 0.5 * (x + y)], axis=-1) * 200 + 28
    return np.repeat(np.repeat(chart.round().astype(np.uint8), 2, axis=0), 2, axis=1)


def test_colours_survive_writing_and_reading_and_the_file_says_bt601(tmp_path):
    chart = colour_chart()
    write_video(tmp_path / "chart.mp4", [chart] * 3, fps=25, crf=0)
    back = next(iter_frames(tmp_path / "chart.mp4"))
    error = np.abs(back.astype(np.float32) - chart)
    assert error.mean() < 1.0 and error.max() <= 4  # a wrong matrix or channel order is off by tens
    with av.open(str(tmp_path / "chart.mp4")) as container:
        frame = next(container.decode(video=0))
        assert (frame.colorspace, frame.color_range) == (6, 1)  # SMPTE170M (BT.601), limited range


def test_frames_tagged_otherwise_are_converted_as_tagged(tmp_path):
    """BT.709 and full-range video keep FFmpeg's conversion, which reads the tags (OpenCV's assumes BT.601)."""
    for colorspace, color_range in ((1, 1), (6, 2)):  # BT.709 limited; BT.601 full range
        path = tmp_path / f"tagged_{colorspace}_{color_range}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            stream.codec_context.colorspace, stream.codec_context.color_range = colorspace, color_range
            for i in range(3):
                frame = av.VideoFrame.from_ndarray(colour_chart(), format="rgb24").reformat(format="yuv420p")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            assert (frame.colorspace, frame.color_range) == (colorspace, color_range)
            expected = frame.to_ndarray(format="rgb24")
        np.testing.assert_array_equal(next(iter_frames(path)), expected)


@pytest.mark.parametrize("preset", ["ultrafast", "medium"])  # medium writes B-frames (reordered packets)
def test_count_frames_of_a_written_mp4_counts_packets_like_decoding(tmp_path, preset):
    path = tmp_path / "count.mp4"
    with VideoWriter(path, 25, 64, 48, preset=preset) as writer:
        for frame in moving_square(37):
            writer.write(frame[:48, :64])
    assert count_frames(path) == sum(1 for _ in iter_frames(path)) == 37
    assert count_frames(path, limit=5) == 5
    assert count_frames(path, target_fps=50) == 74  # resampled: decoded and counted by timestamps
