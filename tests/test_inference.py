"""lipsync.inference.lip_sync and unet_inference.py with a tiny generator, on the real GRID clip and speech
(tests/media.py) and videos made from it.

Pixel identity outside the blend mask is checked on the frames handed to the H.264 encoder (the `on_frame`
hook): H.264 in yuv420p changes pixels even at crf 0 (chroma subsampling and the RGB <-> YUV round trip), so
byte identity can only hold before encoding. The encoded file is then checked against those same frames within
a small tolerance, which ties the file to the frames the hook saw.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import unet_inference
from lipsync.audio import write_wav
from lipsync.checkpoint import encode_model_card
from lipsync.compile_cache import remember_compiled
from lipsync.errors import Cancelled, UserError
from lipsync.faces import FaceDetector, face_boxes, lower_face_mask, paste_faces
from lipsync.inference import LipSyncOptions, lip_sync, load_models
from lipsync.inference.models import COLD_COMPILE_PAYS_AFTER, WARM_COMPILE_PAYS_AFTER, compile_key, compile_pays
from lipsync.video_io import iter_frames, pingpong_indices, probe_video
from lipsync.video_writer import VideoWriter
from models.syncnet import SyncNet, SyncNetConfig

import media

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64  # the tiny generator's crops (conftest.generator_checkpoint)
GRID = media.GRID.path  # 360x288, 25 fps, 75 frames: the cheapest clip to detect on


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(generator_checkpoint):
    return load_models(generator_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def speech():
    """Real speech, 16 kHz mono float32 [32000] (2 s)."""
    return media.real_speech()[8000:40000]


def _write_speech(path, speech, seconds):
    write_wav(path, speech[:int(seconds * 16000)])
    return path


def _audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


class Recorder:
    """on_frame hook: keeps (source index, box, input frame, output frame) of every output frame."""

    def __init__(self):
        self.sources, self.boxes, self.inputs, self.outputs = [], [], [], []

    def __call__(self, index, source, box, before, after):
        assert index == len(self.sources)
        self.sources.append(source)
        self.boxes.append(box)
        self.inputs.append(before)
        self.outputs.append(after)


def _check_encoded_like_hook(outfile, recorder, tolerance=4.0):
    decoded = list(iter_frames(outfile))
    assert len(decoded) == len(recorder.outputs)
    for got, sent in zip(decoded, recorder.outputs):
        assert np.abs(got.astype(np.float32) - sent).mean() < tolerance


def test_video_keeps_size_and_fps_follows_the_audio_and_pastes_only_the_lower_face(models, speech,
                                                                                    tmp_path):
    audio = _write_speech(tmp_path / "speech.wav", speech, 2.0)
    outfile = tmp_path / "out" / "result.mp4"
    recorder = Recorder()
    summary = lip_sync(models, GRID, audio, outfile, batch_size=8, on_frame=recorder)

    info = probe_video(outfile)
    assert (info.width, info.height, info.fps) == (360, 288, 25.0)
    assert abs(info.num_frames - 2.0 * 25) <= 1 and summary["frames"] == info.num_frames
    assert _audio_seconds(outfile) == pytest.approx(2.0, abs=0.03)
    assert summary["faces_found"] == info.num_frames and summary["frames_without_face"] == 0
    assert set(summary["stages"]) >= {"video_decode", "detect", "vae_encode", "unet", "vae_decode", "blend", "write"}
    assert list(summary["phases"]) == ["inputs", "models_and_audio", "boxes", "reference_and_graph",
                                       "generate_and_write", "finish"]
    assert sum(summary["phases"].values()) == pytest.approx(summary["seconds"], abs=0.01)
    assert recorder.sources == list(range(info.num_frames))  # audio shorter than the video: the video is cut

    source_frames = list(iter_frames(GRID))
    mask = lower_face_mask(IMAGE_SIZE)
    for source, box, before, after in zip(recorder.sources, recorder.boxes, recorder.inputs, recorder.outputs):
        np.testing.assert_array_equal(before, source_frames[source])
        # where the pasted mask lands in this frame: paste a white face onto black through the same mask
        footprint = paste_faces(np.zeros_like(before)[None], box[None],
                                np.full((1, IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8), mask)[0].any(axis=2)
        np.testing.assert_array_equal(after[~footprint], before[~footprint])
        assert (after[footprint] != before[footprint]).any()
        rows = np.flatnonzero(footprint.any(axis=1))
        assert rows.min() >= (box[1] + box[3]) / 2  # only the lower half of the crop box is touched
    _check_encoded_like_hook(outfile, recorder)


def test_a_fixed_box_skips_detection_and_ping_pongs_over_every_frame(models, speech, tmp_path):
    audio = _write_speech(tmp_path / "speech.wav", np.tile(speech, 3), 4.0)  # 100 output frames over the 75
    recorder = Recorder()
    summary = lip_sync(models, GRID, audio, tmp_path / "out.mp4", batch_size=8, box=(60, 200, 120, 240),
                       on_frame=recorder)
    assert summary["source_frames"] == 75 and summary["faces_found"] == summary["frames"] == 100
    assert recorder.sources == pingpong_indices(75, 100).tolist()
    assert len({tuple(box) for box in recorder.boxes}) == 1  # the one fixed box, never smoothed or detected
    _check_encoded_like_hook(tmp_path / "out.mp4", recorder)


def test_30_fps_video_with_stereo_mp3_ping_pongs_when_the_audio_is_longer(models, speech, tmp_path):
    source = list(iter_frames(GRID))[:12]
    face = tmp_path / "face30.mp4"
    with VideoWriter(face, 30, 360, 288, crf=12) as writer:
        for frame in source:
            writer.write(frame)
    mp3 = tmp_path / "speech.mp3"  # stereo 44.1 kHz: the pipeline resamples and downmixes itself
    stereo = np.stack([speech[:24000], 0.5 * speech[:24000]])  # 1.5 s at 16 kHz
    stereo = soxr.resample(stereo.T, 16000, 44100).T.astype(np.float32)
    with av.open(str(mp3), "w") as container:
        stream = container.add_stream("libmp3lame", rate=44100)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo), format="fltp", layout="stereo")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)

    outfile = tmp_path / "pingpong.mp4"
    recorder = Recorder()
    summary = lip_sync(models, face, mp3, outfile, batch_size=8, ref_frame=5, color_match=True, on_frame=recorder)

    info = probe_video(outfile)
    assert (info.width, info.height, info.fps) == (360, 288, 30.0)
    assert abs(info.num_frames - 1.5 * 30) <= 1
    assert _audio_seconds(outfile) == pytest.approx(1.5, abs=0.06)
    assert summary["source_frames"] == 12 and summary["stages"]["detect"]["frames"] == 12  # detected once each
    assert recorder.sources == pingpong_indices(12, info.num_frames).tolist()
    assert recorder.sources[:14] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 10, 9]  # forward, then backward
    decoded_source = list(iter_frames(face))
    for index, before in zip(recorder.sources, recorder.inputs):
        np.testing.assert_array_equal(before, decoded_source[index])
    _check_encoded_like_hook(outfile, recorder)


def test_still_image_is_repeated_for_the_audio_at_the_given_fps(models, speech, tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(next(iter_frames(GRID)), cv2.COLOR_RGB2BGR))
    audio = _write_speech(tmp_path / "speech.wav", speech, 1.2)
    outfile = tmp_path / "still.mp4"
    recorder = Recorder()
    summary = lip_sync(models, image, audio, outfile, fps=10, resize_factor=2, batch_size=8, on_frame=recorder)

    info = probe_video(outfile)
    assert (info.width, info.height, info.fps, info.num_frames) == (180, 144, 10.0, 12)
    assert summary["source_frames"] == 1 and set(recorder.sources) == {0}
    assert _audio_seconds(outfile) == pytest.approx(1.2, abs=0.03)


def test_frames_without_a_face_pass_through_unchanged(models, speech, tmp_path):
    faces = list(iter_frames(GRID))[:6]
    face = tmp_path / "half_faceless.mp4"
    with VideoWriter(face, 25, 360, 288, crf=12) as writer:
        for frame in faces + [np.full_like(faces[0], 128)] * 6:
            writer.write(frame)
    audio = _write_speech(tmp_path / "speech.wav", speech, 12 / 25)
    recorder = Recorder()
    summary = lip_sync(models, face, audio, tmp_path / "out.mp4", batch_size=8, on_frame=recorder)

    assert (summary["frames"], summary["faces_found"], summary["frames_without_face"]) == (12, 6, 6)
    for box, before, after in zip(recorder.boxes[6:], recorder.inputs[6:], recorder.outputs[6:]):
        assert box is None
        np.testing.assert_array_equal(after, before)


def test_ref_frame_out_of_range_is_a_user_error(models, speech, tmp_path):
    audio = _write_speech(tmp_path / "speech.wav", speech, 0.4)
    with pytest.raises(UserError, match="--ref_frame 500"):
        lip_sync(models, GRID, audio, tmp_path / "x.mp4", ref_frame=500, box=(60, 200, 120, 240))
    assert not list(tmp_path.glob("*.mp4"))


def _script(*args, cwd):
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, str(ROOT / "unet_inference.py"), *map(str, args)], cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def inputs(speech, tmp_path_factory):
    """Good speech and the bad inputs: a text file named .mp4, a 0-sample wav, a faceless video without audio,
    a SyncNet checkpoint and a file of garbage named .ckpt; short inputs: 0.05 s of speech, a 1-frame video."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "not_a_video.mp4").write_text("hello")
    sf.write(str(root / "empty.wav"), np.zeros(0, np.float32), 16000)
    with VideoWriter(root / "faceless_silent.mp4", 25, 128, 96) as writer:
        for _ in range(10):
            writer.write(np.full((96, 128, 3), 128, np.uint8))
    net = SyncNet(SyncNetConfig(audio_dim=32))
    sync_state = {f"syncnet.{k}": v for k, v in net.state_dict().items()}
    sync_state["model_card"] = encode_model_card({"kind": "syncnet", "syncnet": net.config.to_dict()})
    torch.save({"state_dict": sync_state}, root / "syncnet.ckpt")
    (root / "garbage.ckpt").write_bytes(b"\x00not a checkpoint" * 10)
    _write_speech(root / "speech.wav", speech, 0.8)
    _write_speech(root / "short.wav", speech, 0.05)
    media.write_media(root / "one_frame.mp4", list(itertools.islice(iter_frames(GRID), 1)), 25)
    return root


def test_a_video_longer_than_the_audio_is_read_only_as_far_as_the_output_needs(models, speech, tmp_path):
    """1 s of speech over the 75-frame clip: 25 output frames, so detection reads 25 + 2 frames (the smoothing
    window's half), and the boxes of the shown frames are exactly those of a pass over the whole video."""
    audio = _write_speech(tmp_path / "speech.wav", speech, 1.0)
    recorder = Recorder()
    summary = lip_sync(models, GRID, audio, tmp_path / "out.mp4", batch_size=8, on_frame=recorder)
    assert summary["frames"] == 25 and summary["source_frames"] == 27
    assert summary["stages"]["detect"]["frames"] == 27
    whole, found = face_boxes(iter_frames(GRID), FaceDetector(), batch_size=8,
                              pads=LipSyncOptions().pads)
    assert len(whole) == 75 and found.all()
    np.testing.assert_allclose(np.stack(recorder.boxes), whole[:25], atol=0.01)  # detector batches differ at the end


BAD_INPUTS = {  # case: (checkpoint, face, audio, outfile, what the message says); None = the good one
    "missing_face": (None, "nope.mp4", None, None, "face file not found"),
    "face_not_video": (None, "not_a_video.mp4", None, None, "cannot read video"),
    "audio_not_audio": (None, None, "not_a_video.mp4", None,
                        "cannot read audio from {inputs}/not_a_video.mp4: Invalid data found when processing input"),
    "audio_without_stream": (None, None, "faceless_silent.mp4", None, "no audio stream"),
    "zero_length_audio": (None, None, "empty.wav", None, "empty audio"),
    "faceless_video": (None, "faceless_silent.mp4", None, None, "no face found"),
    "syncnet_checkpoint": ("syncnet.ckpt", None, None, None, "not a generator"),
    "unreadable_checkpoint": ("garbage.ckpt", None, None, None, "not a checkpoint"),
    # checked before any work (the writer would find out at the first frame, minutes into a long video)
    "outfile_in_a_file": (None, None, None, "{inputs}/speech.wav/out.mp4",
                          "output video {inputs}/speech.wav/out.mp4: {inputs}/speech.wav is a file, not a folder"),
    "outfile_without_extension": (None, None, None, "results/out",
                                  "output video results/out: the file name must end in .mp4, .mov, .m4v, .mkv, .avi"),
}
# short inputs that must simply work: a 1-frame face video (fewer frames than the box smoothing's window), and
# 0.05 s of speech (a 1-frame output)
SHORT_INPUTS = {"one_frame_face": ("one_frame.mp4", "speech.wav", 20), "short_audio": (None, "short.wav", 1)}


@pytest.fixture(scope="module")
def script_runs(generator_checkpoint, inputs, tmp_path_factory):
    """unet_inference.py as real processes, all started at once (each pays ~3 s of imports): one good run with
    the default outfile, and one run per BAD_INPUTS case. -> {name: (returncode, stdout, stderr, folder)}."""
    root = tmp_path_factory.mktemp("script_runs")
    procs = {"good": _script("--checkpoint_path", generator_checkpoint, "--face", GRID, "--audio",
                             inputs / "speech.wav", "--batch_size", 8, "--box", 60, 200, 120, 240, "--nosmooth",
                             "--crf", 23, "--preset", "faster", "--no_cuda_graph", cwd=root / "good")}
    for case, (ckpt, face, audio, outfile, _) in BAD_INPUTS.items():
        procs[case] = _script("--checkpoint_path", inputs / ckpt if ckpt else generator_checkpoint,
                              "--face", inputs / face if face else GRID,
                              "--audio", inputs / (audio or "speech.wav"),
                              *(["--outfile", outfile.format(inputs=inputs)] if outfile else []), cwd=root / case)
    for case, (face, audio, _) in SHORT_INPUTS.items():
        procs[case] = _script("--checkpoint_path", generator_checkpoint, "--face", inputs / face if face else GRID,
                              "--audio", inputs / audio, "--no_cuda_graph", cwd=root / case)
    outputs = {name: proc.communicate(timeout=600) for name, proc in procs.items()}
    return {name: (proc.returncode, *outputs[name], root / name, inputs) for name, proc in procs.items()}


def test_script_writes_the_default_outfile_and_prints_the_summary(script_runs):
    returncode, stdout, stderr, folder, _ = script_runs["good"]
    assert returncode == 0, stderr
    assert (folder / "results" / "result_voice.mp4").is_file()  # the default outfile, its folder created
    assert "faces found in 20/20 frames" in stdout and "unet" in stdout


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_fail_in_one_line_without_output(case, script_runs):
    returncode, _, stderr, folder, inputs = script_runs[case]
    lines = stderr.strip().splitlines()
    assert returncode == 1
    message = BAD_INPUTS[case][4].format(inputs=inputs)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert "Errno" not in lines[0] and lines[0].count(str(inputs)) <= 2  # FFmpeg's errno and path repeats are gone
    assert not (folder / "results").exists()


@pytest.mark.parametrize("case", sorted(SHORT_INPUTS))
def test_short_inputs_give_a_video(case, script_runs):
    returncode, stdout, stderr, folder, _ = script_runs[case]
    assert returncode == 0, stderr
    frames = SHORT_INPUTS[case][2]
    assert probe_video(folder / "results" / "result_voice.mp4").num_frames == frames
    assert f"faces found in {frames}/{frames} frames" in stdout


def test_output_video_is_checked_before_the_models_load(tmp_path, speech):
    """A bad outfile is reported before any other work (here, before the missing checkpoint would be)."""
    audio = _write_speech(tmp_path / "speech.wav", speech, 0.4)
    (tmp_path / "taken").write_text("")
    with pytest.raises(UserError, match="taken is a file, not a folder"):
        lip_sync(tmp_path / "missing.ckpt", GRID, audio, tmp_path / "taken" / "out.mp4")


@pytest.mark.parametrize("ref_frame", [None, 3])
def test_one_shape_padding_of_compiled_models_gives_the_same_frames(models, speech, tmp_path, ref_frame):
    """Compiled models get every codec / UNet call zero-padded to the batch size (one shape, no recompiles):
    batch 8 over 37 frames leaves a short last batch; the padding must not change any generated face."""
    audio = _write_speech(tmp_path / "speech.wav", speech, 1.5)
    outputs = {}
    for compiled in (False, True):
        recorder = Recorder()
        lip_sync(dataclasses.replace(models, compiled=compiled), GRID, audio, tmp_path / f"{compiled}.mp4",
                 batch_size=8, ref_frame=ref_frame, on_frame=recorder)
        outputs[compiled] = np.stack(recorder.outputs)
    assert len(outputs[True]) % 8 != 0
    np.testing.assert_allclose(outputs[True].astype(int), outputs[False].astype(int), atol=1)


def test_progress_names_every_step_in_order_and_counts_frames(generator_checkpoint, speech, tmp_path):
    audio = _write_speech(tmp_path / "speech.wav", speech, 1.0)  # 25 output frames; detection reads 27
    calls = []
    summary = lip_sync(generator_checkpoint, GRID, audio, tmp_path / "out.mp4", batch_size=8, device="cpu",
                       on_progress=lambda *call: calls.append(call))
    steps = [step for i, (step, _, _) in enumerate(calls) if i == 0 or calls[i - 1][0] != step]
    assert steps == ["load models", "encode audio", "detect", "lip sync", "finish"]
    assert [call for call in calls if call[0] == "detect"] == [("detect", n, 27) for n in (8, 16, 24, 27)]
    assert [call for call in calls if call[0] == "lip sync"] == [("lip sync", n, 25) for n in (0, 8, 16, 24, 25)]
    assert summary["frames"] == 25


def test_cancel_stops_within_a_batch_and_leaves_no_file_and_no_thread(models, speech, tmp_path):
    """A server cancels a run and starts the next on the same models: the cancelled run's threads are stopped
    before its worker processes' pipes close (a thread left reading a closed pipe's descriptor number would read
    the next run's pipe, which may get the same number)."""
    audio = _write_speech(tmp_path / "speech.wav", speech, 2.0)  # 50 output frames, batches of 8
    cancel = threading.Event()
    written = []

    def on_progress(step, done, total):
        if step == "lip sync":
            written.append(done)
            if done >= 16:
                cancel.set()

    with pytest.raises(Cancelled) as cancelled:
        lip_sync(models, GRID, audio, tmp_path / "out.mp4", batch_size=8, on_progress=on_progress, cancel=cancel)
    assert written == [0, 8, 16]  # the next batch was not written
    assert list(tmp_path.iterdir()) == [tmp_path / "speech.wav"]  # neither the mp4 nor its temp file
    # the exception (its traceback: the run's frames) is still alive here, and the run's threads are not
    assert cancelled.value is not None and "background" not in {thread.name for thread in threading.enumerate()}
    summary = lip_sync(models, GRID, audio, tmp_path / "next.mp4", batch_size=8)
    assert summary["frames"] == probe_video(tmp_path / "next.mp4").num_frames == 50


def test_audio_over_max_seconds_is_refused_before_any_work(models, speech, tmp_path):
    audio = _write_speech(tmp_path / "speech.wav", speech, 2.0)
    with pytest.raises(UserError, match="speech.wav lasts 2.0 s: the limit is 1.5 s"):
        lip_sync(models, GRID, audio, tmp_path / "out.mp4", max_seconds=1.5,
                 on_progress=lambda *call: pytest.fail(f"work started: {call}"))
    assert not (tmp_path / "out.mp4").exists()


def test_the_same_models_run_at_another_crop_size(models, speech, tmp_path):
    """A server offers other crop sizes by replacing the size on the loaded models (the UNet is convolutional:
    96 px crops are 24x24 latents for a UNet trained on 16x16); the run says which size it used."""
    import dataclasses

    audio = _write_speech(tmp_path / "speech.wav", speech, 0.4)
    outputs = {}
    for size in (IMAGE_SIZE, 96):
        recorder = Recorder()
        summary = lip_sync(dataclasses.replace(models, image_size=size), GRID, audio, tmp_path / f"{size}.mp4",
                           batch_size=8, box=(60, 200, 120, 240), on_frame=recorder)
        assert summary["crop_size"] == size
        outputs[size] = np.stack(recorder.outputs)
    assert models.image_size == IMAGE_SIZE
    assert outputs[96].shape == outputs[IMAGE_SIZE].shape and (outputs[96] != outputs[IMAGE_SIZE]).any()


def test_inference_compiles_by_default_where_it_pays(models, tmp_path, monkeypatch):
    """--compile auto: never on a CPU; on CUDA for long clips, and for clips of a few hundred frames once the same
    configuration (architectures, crop size, batch size, versions, GPU) compiled on this machine."""
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path))
    assert not compile_pays(models, 16, 100_000)  # CPU
    cuda = dataclasses.replace(models, device=torch.device("cuda"), image_size=768)  # as decided on a GPU
    short, long_ = WARM_COMPILE_PAYS_AFTER, COLD_COMPILE_PAYS_AFTER
    assert not compile_pays(cuda, 16, short) and compile_pays(cuda, 16, long_)
    remember_compiled(compile_key(cuda, 16))
    assert compile_pays(cuda, 16, short) and not compile_pays(cuda, 16, short - 1)
    assert not compile_pays(cuda, 8, short)  # another batch size: other shapes, not compiled yet
    small = dataclasses.replace(cuda, image_size=256)  # a ninth of the codec's work per frame
    assert not compile_pays(small, 16, long_) and compile_pays(small, 16, 9 * long_)


def test_compile_flag_is_auto_unless_given_and_cpu_models_stay_eager(generator_checkpoint):
    assert unet_inference.COMPILE_CHOICES[unet_inference.parse_args(["--checkpoint_path", "c", "--face", "f",
                                                                     "--audio", "a"]).compile] is None
    for argv, expected in ((["--compile"], True), (["--compile", "off"], False), (["--compile", "on"], True)):
        args = unet_inference.parse_args(["--checkpoint_path", "c", "--face", "f", "--audio", "a", *argv])
        assert unet_inference.COMPILE_CHOICES[args.compile] is expected
    loaded = load_models(generator_checkpoint, device="cpu", compile=True)
    assert not loaded.compiled  # compiling is for CUDA: on a CPU the eager models stay


def test_default_x264_preset_keeps_the_quality_of_veryfast(tmp_path):
    """The default preset (faster to write) keeps at least the quality of veryfast, the previous default, at the
    same CRF (PSNR against the frames written, on real faces), in a larger file: up to twice the size on noisy
    footage like GRID's (x264's faster presets drop tools that save bits, not quality)."""
    frames = list(iter_frames(GRID))[:50]
    height, width = frames[0].shape[:2]
    results = {}
    for preset in (LipSyncOptions().preset, "veryfast"):
        path = tmp_path / f"{preset}.mp4"
        with VideoWriter(path, 25, width, height, crf=LipSyncOptions().crf, preset=preset) as writer:
            for frame in frames:
                writer.write(frame)
        error = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(iter_frames(path), frames)])
        results[preset] = (10 * np.log10(255 ** 2 / error), path.stat().st_size)
    (psnr, size), (psnr_veryfast, size_veryfast) = results[LipSyncOptions().preset], results["veryfast"]
    assert LipSyncOptions().preset != "veryfast"
    assert psnr >= psnr_veryfast - 0.5 and size <= 2 * size_veryfast, results
