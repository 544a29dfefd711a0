"""The avatar server for real: uvicorn on a localhost port, clients over real WebSockets (the `websockets`
package), a tiny generator on the CPU. Streams against Avatar.stream's frames, several connections at once, a
client that drops or stops reading, and bad chunks that end only their own connection."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import struct
import threading
import time

import cv2
import numpy as np
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from lipsync.inference import load_models
from lipsync.realtime.avatar import Avatar, prepare_avatar
from lipsync.realtime.server import Connection, Scheduler, ServerOptions, create_app, load_avatars
from lipsync.realtime.streaming import FrameGenerator, StreamOptions

import media
from tiny_generator import write_tiny_generator

BOX = (60, 200, 120, 240)
WAIT_S = 120  # a liveness bound, not a timing: a stalled server fails here instead of hanging the suite


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tiny_models):
    return load_models(write_tiny_generator(tiny_models, tiny_models["root"] / "server_generator.ckpt"), device="cpu")


@pytest.fixture(scope="module")
def avatars_dir(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars")
    prepare_avatar(models, media.GRID.path, root / "grid", box=BOX)
    prepare_avatar(models, media.GRID2.path, root / "grid2", static=True)  # one frame, its face detected
    return root


class Server:
    """uvicorn serving `app` on a free localhost port, in a thread."""

    def __init__(self, app):
        self.socket = socket.create_server(("127.0.0.1", 0))
        # accepted sockets inherit a fixed 64 KB send buffer (Linux would grow it to megabytes): a client that
        # stops reading stalls its connection within a few frames, as over a real network
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        self.port = self.socket.getsockname()[1]
        # no keepalive pings: on a loaded CI machine a starved client misses a pong and the connection drops
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_ping_interval=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT_S
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def url(self, query: str) -> str:
        return f"ws://127.0.0.1:{self.port}/stream?{query}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(WAIT_S)


@pytest.fixture(scope="module")
def server(models, avatars_dir):
    options = ServerOptions(stream=StreamOptions(silence_db=None), max_batch=8, max_queued_frames=20)
    running = Server(create_app(models, load_avatars(avatars_dir, models), options))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def pcm(speech):
    """2 s of real speech, 16-bit PCM."""
    return np.round(speech[8000:40000] * 32767).astype(np.int16)


def receive_all(ws) -> tuple[list[tuple[int, float, np.ndarray]], dict]:
    """Frames (index, timestamp, RGB) until the server's end message -> (frames, end message)."""
    frames = []
    while True:
        message = ws.recv(timeout=WAIT_S)
        if isinstance(message, str):
            return frames, json.loads(message)
        index, timestamp = struct.unpack_from("<Id", message)
        image = cv2.imdecode(np.frombuffer(message[12:], np.uint8), cv2.IMREAD_COLOR)
        frames.append((index, timestamp, cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))


def stream_file(server, pcm, avatar="grid", ms=40, sample_format="s16le"):
    with connect(server.url(f"avatar={avatar}&format={sample_format}"), open_timeout=WAIT_S, ping_interval=None) as ws:
        ready = json.loads(ws.recv(timeout=WAIT_S))
        step = 16 * ms
        data = pcm if sample_format == "s16le" else pcm.astype("<f4") / 32768
        for start in range(0, len(pcm), step):
            ws.send(data[start:start + step].tobytes())
        ws.send(json.dumps({"type": "end"}))
        frames, end = receive_all(ws)
    return ready, frames, end


def test_a_stream_gets_every_frame_in_order_as_avatar_stream_makes_them(server, pcm, models, avatars_dir):
    ready, frames, end = stream_file(server, pcm, ms=20)
    assert ready["type"] == "ready" and (ready["fps"], ready["width"], ready["height"]) == (25.0, 360, 288)
    assert ready["delay_s"] == pytest.approx(0.125 + 0.1)  # window + receptive field + right context
    assert end == {"type": "end", "frames": 50}
    assert [(i, t) for i, t, _ in frames] == [(k, k / 25) for k in range(50)]
    local = Avatar.load(avatars_dir / "grid", models)
    expected = [frame for _, frame in local.stream([pcm[i:i + 640] for i in range(0, len(pcm), 640)],
                                                   silence_db=None)]
    for (_, _, got), want in zip(frames, expected):  # JPEG at quality 85 against the raw frames
        assert np.abs(got.astype(float) - want).mean() < 3.0


def test_an_end_without_audio_gets_its_end_message(server):
    with connect(server.url("avatar=grid"), open_timeout=WAIT_S, ping_interval=None) as ws:
        assert json.loads(ws.recv(timeout=WAIT_S))["type"] == "ready"
        ws.send(json.dumps({"type": "end"}))
        frames, end = receive_all(ws)
    assert frames == [] and end == {"type": "end", "frames": 0}


def test_float32_pcm_and_a_still_avatar(server, pcm):
    ready, frames, end = stream_file(server, pcm[:16000], avatar="grid2", ms=100, sample_format="f32le")
    assert ready["format"] == "f32le" and end["frames"] == len(frames) == 25


def test_connections_share_batches_and_a_dropped_or_stalled_client_stalls_no_other(server, pcm):
    """Three good streams run beside a client that vanishes mid-stream and one that never reads (its socket's
    receive buffer shrunk to 4 KB): every good stream gets all its frames, the stalled one is closed."""
    before = dict(json.loads(_get(server, "/stats")))
    long_pcm = np.tile(pcm, 4)  # 8 s: 200 frames, well past the stalled client's socket buffers
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled_ws = connect(server.url("avatar=grid"), sock=stalled, open_timeout=WAIT_S, ping_interval=None)
    stalled_ws.recv(timeout=WAIT_S)  # ready; then it never reads again
    for start in range(0, len(long_pcm), 1600):
        stalled_ws.send(long_pcm[start:start + 1600].tobytes())
    stalled_ws.send(json.dumps({"type": "end"}))
    dropped = connect(server.url("avatar=grid"), open_timeout=WAIT_S, ping_interval=None)
    dropped.recv(timeout=WAIT_S)
    dropped.send(long_pcm[:16000].tobytes())
    dropped.close()

    results = {}

    def good(name):
        results[name] = stream_file(server, long_pcm, ms=(20, 40, 100)[name])

    threads = [threading.Thread(target=good, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    for name in range(3):
        _, frames, end = results[name]
        assert end["frames"] == len(frames) == 200 and [i for i, _, _ in frames] == list(range(200))
    stats = json.loads(_get(server, "/stats"))
    assert stats["dropped_too_slow"] - before.get("dropped_too_slow", 0) == 1
    assert stats["frames"] - before.get("frames", 0) >= 600
    # frames of different connections went through the device together
    assert (stats["frames"] - before.get("frames", 0)) / (stats["batches"] - before.get("batches", 0)) > 1.0
    assert stats["open"] == 0
    received = 0
    with pytest.raises(ConnectionClosed):  # what the stalled client finds once it reads: some frames, then closed
        while True:
            message = stalled_ws.recv(timeout=WAIT_S)
            received += isinstance(message, bytes)
    assert received < 200
    stalled_ws.close()


def test_ready_speech_waits_for_the_other_connections_up_to_batch_wait(models, avatars_dir, pcm):
    """The scheduler's rounds driven by hand: a connection's ready speech waits while another one that is still
    sending has none ready; both then go in one step; a connection that went quiet, or batch_wait_s, ends a wait."""
    avatar = load_avatars(avatars_dir, models)["grid"]
    options = ServerOptions(stream=StreamOptions(silence_db=None), max_batch=8, batch_wait_s=0.3)
    scheduler = Scheduler(FrameGenerator(models, max_batch=8), options)
    loop = asyncio.new_event_loop()
    try:
        a, b = Connection(avatar, options.stream, loop), Connection(avatar, options.stream, loop)
        scheduler.add(a)
        scheduler.add(b)
        a.inbox.append(pcm[:8000])  # 0.5 s: several windows ready
        b.inbox.append(pcm[:320])  # 20 ms: sending, nothing ready (a window needs 145 ms)
        assert 0 < scheduler._tick() <= 0.3 + 1e-6
        assert scheduler.stats["encoder_windows"] == 0 and a.stream.next_frame == 0
        b.inbox.append(pcm[320:4000])
        assert scheduler._tick() == 0  # both ready: one step for both
        assert scheduler.stats["batches"] == 1 and a.stream.next_frame > 0 and b.stream.next_frame > 0
        while scheduler._tick() == 0:  # the rest of what has arrived
            pass
        a.inbox.append(pcm[8000:9600])
        assert scheduler._tick() > 0  # b sent within batch_wait_s: a's new window waits for it
        time.sleep(0.31)
        before = a.stream.next_frame
        assert scheduler._tick() == 0 and a.stream.next_frame > before  # waited batch_wait_s: a goes alone
        b.heard_at -= 10  # b went quiet
        a.inbox.append(pcm[9600:11200])
        assert scheduler._tick() == 0  # nobody to wait for
    finally:
        loop.close()


def _get(server, path) -> str:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1].decode()


BAD = {  # query, what is sent, what the error says
    "wrong_rate": ("avatar=grid&rate=44100", None, "sample rate 44100 Hz"),
    "unknown_avatar": ("avatar=nobody", None, "unknown avatar 'nobody'"),
    "wav_file": ("avatar=grid", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100), r"a WAV \(RIFF\) file, not raw PCM"),
    "odd_bytes": ("avatar=grid", bytes(641), "whole 2-byte samples"),
    "int16_as_float": ("avatar=grid&format=f32le", np.full(320, 20000, "<i2").tobytes() * 2, "not PCM|int16"),
    "text": ("avatar=grid", "hello", "text messages are"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_chunk_is_an_error_on_its_own_connection_only(server, pcm, case):
    query, payload, says = BAD[case]
    with connect(server.url("avatar=grid"), open_timeout=WAIT_S, ping_interval=None) as good:
        good.recv(timeout=WAIT_S)
        good.send(pcm[:8000].tobytes())
        with connect(server.url(query), open_timeout=WAIT_S, ping_interval=None) as bad:
            first = json.loads(bad.recv(timeout=WAIT_S))
            if first["type"] == "ready":
                bad.send(pcm[:3200].tobytes())
                bad.send(payload)
                while isinstance(message := bad.recv(timeout=WAIT_S), bytes):
                    pass
                first = json.loads(message)
            assert first["type"] == "error"
            assert re.search(says, first["message"]), first["message"]
            with pytest.raises(ConnectionClosed):
                bad.recv(timeout=WAIT_S)
            assert bad.close_code in (1003, 1008)
        good.send(pcm[8000:].tobytes())
        good.send(json.dumps({"type": "end"}))
        frames, end = receive_all(good)
        assert end["frames"] == len(frames) == 50


def test_the_script_compiles_by_default_on_cuda_only(tiny_models, avatars_dir, capsys):
    import avatar_server

    checkpoint = tiny_models["root"] / "server_generator.ckpt"  # written by the models fixture
    common = ["--checkpoint_path", str(checkpoint), "--avatars", str(avatars_dir), "--device", "cpu"]
    assert avatar_server.parse_args(common).compile == "auto"
    assert avatar_server.parse_args(common + ["--compile"]).compile == "on"
    _, avatars = avatar_server.build(avatar_server.parse_args(common))
    assert set(avatars) == {"grid", "grid2"} and not avatars["grid"].models.compiled
    assert "compiling" not in capsys.readouterr().out  # auto: no compilation on a CPU
