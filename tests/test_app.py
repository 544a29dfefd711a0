"""The web app (app.py, lipsync/app.py) as a real server on localhost with the tiny checkpoint on the CPU, driven
through gradio_client as a user's script drives it: results, progress, cancel, bad input, the queue, the files
it keeps and removes, the interface it listens on."""
from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time

import av
import cv2
import numpy as np
import psutil
import pytest
import soundfile as sf
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from lipsync.audio import write_wav
from lipsync.video_io import iter_frames, probe_video
from lipsync.video_writer import VideoWriter

import media
from app_server import AppServer

GRID = media.GRID.path  # 360x288, 25 fps, 75 frames
MAX_SECONDS = 4  # the server's --max_seconds
BATCH = 8  # the server's --batch_size


@pytest.fixture(scope="module")
def server(generator_checkpoint, tmp_path_factory):
    app = AppServer(generator_checkpoint, tmp_path_factory.mktemp("app"), "--max_seconds", MAX_SECONDS,
                    "--batch_size", BATCH).wait_until_serving()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Speech of several lengths, a face image, and the bad inputs."""
    root = tmp_path_factory.mktemp("app_inputs")
    speech = media.real_speech()  # 5.96 s
    for seconds in (0.4, 2.0, MAX_SECONDS):
        write_wav(root / f"speech_{seconds:g}s.wav", speech[:int(seconds * 16000)])
    write_wav(root / "speech_long.wav", speech)
    cv2.imwrite(str(root / "face.png"), cv2.cvtColor(next(iter_frames(GRID)), cv2.COLOR_RGB2BGR))
    (root / "not_a_video.mp4").write_text("hello")
    (root / "not_an_image.png").write_text("hello")
    with VideoWriter(root / "faceless_silent.mp4", 25, 128, 96) as writer:
        for _ in range(10):
            writer.write(np.full((96, 128, 3), 128, np.uint8))
    sf.write(str(root / "empty.wav"), np.zeros(0, np.float32), 16000)
    return root


@pytest.fixture
def client(server, tmp_path):
    return server.client(tmp_path / "downloads")


def submit(client, face_video=None, face_image=None, speech=None, ref_frame=None, pads=(0, 10, 0, 0),
           color_match=False, crf=18, crop_size=64):
    """The page's Run button, through the API: -> a gradio_client Job."""
    files = [None if path is None else handle_file(str(path)) for path in (face_video, face_image, speech)]
    return client.submit(*files, ref_frame, *pads, color_match, crf, crop_size, api_name="/lip_sync")


def updates(job) -> list:
    """Every status and output update the client received for a finished job."""
    async def collect():
        return [update async for update in job]
    return asyncio.run(collect())


def audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return float(stream.duration * stream.time_base)


def request_lines(server, face_name: str) -> tuple[int, str]:
    """(number, log text from its start on) of the request whose face file is `face_name`."""
    number = int(re.search(rf"request (\d+): {re.escape(face_name)} \+", server.log).group(1))
    return number, server.log[server.log.index(f"request {number}: {face_name} +"):]


def test_a_face_video_and_speech_give_an_mp4_as_long_as_the_speech_with_its_audio(server, client, inputs):
    job = submit(client, face_video=GRID, speech=inputs / "speech_2s.wav")
    video, download, summary = job.result(timeout=300)

    info = probe_video(video)
    assert (info.width, info.height, info.fps) == (360, 288, 25.0) and abs(info.num_frames - 50) <= 1
    assert audio_seconds(video) == pytest.approx(2.0, abs=0.03)
    assert open(download, "rb").read() == open(video, "rb").read()
    assert summary.startswith(f"wrote grid_lwbsza_lipsync.mp4: {info.num_frames} frames, 360x288 @ 25 fps")
    assert "faces found in 50/50 frames" in summary and "unet" in summary and str(server.tmp) not in summary

    progress = [unit for update in updates(job) if getattr(update, "progress_data", None)
                for unit in update.progress_data]
    steps = [unit.desc for i, unit in enumerate(progress) if i == 0 or progress[i - 1].desc != unit.desc]
    order = ["encoding the speech", "finding the face", "lip-syncing", "writing the video"]
    assert "lip-syncing" in steps and steps == sorted(steps, key=order.index)  # shown in the pipeline's order
    frames = [(unit.index, unit.length, unit.unit) for unit in progress if unit.desc == "lip-syncing"]
    assert all(length == 50 and unit == "frames" for _, length, unit in frames)
    assert [index for index, _, _ in frames] == sorted(index for index, _, _ in frames)


def test_an_image_is_repeated_at_25_fps_for_the_speech(client, inputs):
    video, _, summary = submit(client, face_image=inputs / "face.png", speech=inputs / "speech_2s.wav").result(300)
    info = probe_video(video)
    assert (info.width, info.height, info.fps) == (360, 288, 25.0) and abs(info.num_frames - 50) <= 1
    assert audio_seconds(video) == pytest.approx(2.0, abs=0.03)
    assert "1 source frames" in summary


def test_the_options_reach_the_pipeline(server, client, inputs):
    shutil.copy(GRID, inputs / "options.mpg")
    job = submit(client, face_video=inputs / "options.mpg", speech=inputs / "speech_0.4s.wav", ref_frame=3,
                 pads=(2, 12, -2, 4), color_match=True, crf=30, crop_size=96)
    _, _, summary = job.result(timeout=300)
    assert "96 px face crops" in summary
    _, lines = request_lines(server, "options.mpg")
    assert "'ref_frame': 3, 'pads': (2, 12, -2, 4), 'color_match': True, 'crf': 30" in lines.splitlines()[0]


BAD_INPUTS = {  # case: (face video, face image, speech, what the message says)
    "no_face": (None, None, "speech_0.4s.wav", "Give a face"),
    "video_and_image": (GRID, "face.png", "speech_0.4s.wav", "not both"),
    "no_speech": (GRID, None, None, "Give speech"),
    "unreadable_video": ("not_a_video.mp4", None, "speech_0.4s.wav", "cannot read video not_a_video.mp4"),
    "unreadable_image": (None, "not_an_image.png", "speech_0.4s.wav", "cannot read image not_an_image.png"),
    "no_face_anywhere": ("faceless_silent.mp4", None, "speech_0.4s.wav", "no face found in any of the 10 frames"),
    "speech_without_audio": (GRID, None, "faceless_silent.mp4", "faceless_silent.mp4 has no audio stream"),
    "empty_speech": (GRID, None, "empty.wav", "empty audio"),
    "speech_too_long": (GRID, None, "speech_long.wav", f"speech_long.wav lasts 6.0 s: the limit is {MAX_SECONDS} s"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_in_the_page_and_the_next_request_succeeds(case, server, client, inputs):
    video, image, speech, expected = BAD_INPUTS[case]
    path = lambda name: None if name is None else (name if name == GRID else inputs / name)  # noqa: E731
    with pytest.raises(AppError) as caught:
        submit(client, face_video=path(video), face_image=path(image), speech=path(speech)).result(timeout=300)
    message = str(caught.value)
    assert expected in message and "\n" not in message and "Traceback" not in message
    assert str(server.tmp) not in message  # the user's file names, not the server's paths

    video, _, _ = submit(client, face_video=GRID, speech=inputs / "speech_0.4s.wav").result(timeout=300)
    assert probe_video(video).num_frames == 10


def test_cancel_stops_the_run_within_a_batch_and_leaves_no_file(server, client, inputs):
    shutil.copy(GRID, inputs / "cancel_me.mpg")
    job = submit(client, face_video=inputs / "cancel_me.mpg", speech=inputs / f"speech_{MAX_SECONDS}s.wav")
    deadline = time.monotonic() + 300
    while True:  # wait until it is writing frames: 100 of them, over the 75-frame clip and back
        progress = job.status().progress_data or []
        if any(unit.desc == "lip-syncing" and unit.index >= BATCH for unit in progress):
            break
        assert not job.done() and time.monotonic() < deadline, "the run ended before it could be cancelled"
        time.sleep(0.02)
    job.cancel()

    # the next request runs once the cancelled one has stopped (they share the models, one run at a time)
    video, _, _ = submit(client, face_video=GRID, speech=inputs / "speech_0.4s.wav").result(timeout=300)
    assert probe_video(video).num_frames == 10
    _, lines = request_lines(server, "cancel_me.mpg")
    written, total = map(int, re.search(r"cancelled after [\d.]+ s, (\d+) of (\d+) frames written", lines).groups())
    assert total == 100 and BATCH <= written < total
    names = [path.name for path in server.root.rglob("*")]
    assert "cancel_me.mpg" in names  # the upload stays for the next try
    assert not [name for name in names if "cancel_me_lipsync" in name or ".tmp" in name]


def test_two_concurrent_requests_both_finish_one_after_the_other(server, inputs, tmp_path):
    faces = []
    for name in ("first.mpg", "second.mpg"):
        shutil.copy(GRID, inputs / name)
        faces.append(inputs / name)
    clients = [server.client(tmp_path / f"downloads_{i}") for i in range(2)]  # two users, two sessions
    results = [None, None]

    def run(i):
        results[i] = submit(clients[i], face_video=faces[i], speech=inputs / "speech_2s.wav").result(timeout=300)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for (video, _, summary), face in zip(results, faces):
        assert probe_video(video).num_frames == 50 and summary.startswith(f"wrote {face.stem}_lipsync.mp4")
    spans = []
    for face in faces:
        number, _ = request_lines(server, face.name)
        log = server.log
        spans.append((log.index(f"request {number}: {face.name} +"), log.index(f"request {number}: 50 frames")))
    first, second = sorted(spans)
    assert first[1] < second[0]  # the second started after the first had finished


def test_it_listens_on_localhost_only(server):
    addresses = {conn.laddr.ip for conn in psutil.Process(server.process.pid).net_connections(kind="inet")
                 if conn.status == psutil.CONN_LISTEN}
    assert addresses == {"127.0.0.1"}


def test_a_busy_port_is_one_line_before_the_models_load(server):
    from lipsync.app import _check_port
    from lipsync.errors import UserError

    with pytest.raises(UserError, match=f"cannot serve on 127.0.0.1:{server.port}: Address already in use"):
        _check_port("127.0.0.1", server.port)


def test_sigterm_stops_it_and_removes_every_file_it_made(server):
    """Runs last in this module: it stops the module's server. Its folder then holds the uploads and results of
    every test above; SIGTERM (what a service manager sends) removes them all."""
    assert any(server.root.rglob("*_lipsync.mp4")) and any(server.root.rglob("grid_lwbsza.mpg"))
    assert server.stop() == 0
    # .ses: onnxruntime's telemetry session file, written by any face detection (the command line's too)
    assert [path.name for path in server.tmp.iterdir() if path.name != ".ses"] == []
    assert server.log.strip().splitlines()[-1] == f"Closing server running on port: {server.port}"
