"""The real-time avatar server: 16 kHz mono PCM chunks in over a WebSocket, JPEG frames with their timestamps out,
one avatar per connection, the frames of every connection generated in shared batches by ONE Scheduler thread.

Protocol, `WS /stream?avatar=NAME[&format=s16le|f32le][&rate=16000]`:
    server -> {"type": "ready", "avatar", "fps", "width", "height", "sample_rate", "format", "delay_s"}
    client -> binary: raw little-endian mono PCM at 16 kHz, any number of whole samples per message
    client -> {"type": "end"}: no more audio; the server sends the remaining frames, then {"type": "end", "frames": N}
              and closes
    server -> binary: one frame: uint32 index, float64 timestamp (s, index / fps), little endian, then a JPEG
    server -> {"type": "error", "message": "..."}, then it closes that connection (1003 bad audio, 1008 too slow or
              unknown avatar); no other connection notices
`GET /` the page (static/index.html), `GET /avatars` the avatars, `GET /stats` the scheduler's counters.

Flow: the connection's receiver validates each chunk (pcm_samples) and hands it to the scheduler; it stops reading
while the connection has more than `max_backlog_s` of audio without frames (a client sending faster than real
time is held back by TCP). The scheduler loop: drain every connection's chunks; once some connection's speech
is ready, wait (at most `batch_wait_s`; off by default) until every connection that is still sending has some
ready too, so that one device step serves all of them (de-phased streams would otherwise get a small step each,
and small steps cost nearly as much as full ones); encode their due feature windows (one Wav2Vec2 call per
window length), take up to `max_batch` due frames round-robin over connections, generate them in one batch
(FrameGenerator), and queue (frame index, face) on each connection. A sender per
connection pastes and JPEG-encodes its frames in a thread pool (OpenCV releases the GIL) and sends them in order.
A connection with more than `max_queued_frames` unsent frames (a client that stopped reading) is closed; a closed
or dropped one is forgotten at the next tick. Neither holds up the scheduler.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from starlette.websockets import WebSocketDisconnect

from lipsync import timing
from lipsync.errors import UserError
from lipsync.inference.models import LipSyncModels
from lipsync.realtime.avatar import JSON_FILE, Avatar
from lipsync.realtime.streaming import AvatarStream, FrameGenerator, StreamOptions, pcm_samples

STATIC = Path(__file__).resolve().parent / "static"
FRAME_HEADER = struct.Struct("<Id")  # frame index, timestamp in seconds
FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
# files, not raw PCM: what a client sends by mistake (a WAV, MP3, Ogg, FLAC, MP4 / M4A chunk)
CONTAINER_MAGIC = {b"RIFF": "a WAV (RIFF) file", b"ID3": "an MP3 file", b"OggS": "an Ogg file",
                   b"fLaC": "a FLAC file"}
log = logging.getLogger("lipsync.realtime")
IDLE_WAIT_S = 0.1  # the scheduler's pause when no connection has anything to do (a chunk wakes it sooner)
SENDING_WINDOW_S = 0.1  # a connection with no chunk for longer than this (+ batch_wait_s) is not waited for


@dataclass
class ServerOptions:
    """Every option of the server (avatar_server.py's flags)."""
    stream: StreamOptions = field(default_factory=StreamOptions)
    max_batch: int = 16  # rows of one generation call (frames of all connections together)
    # how long a connection's ready speech may wait for the other connections' (one device step for all of them
    # instead of one each: fewer, fuller batches; module doc); 0 (the default until it is timed on a GPU): step as
    # soon as anything is ready
    batch_wait_s: float = 0.0
    cuda_graph: bool = True  # CUDA: replay UNet + decode as recorded graphs (one per power-of-two batch)
    jpeg_quality: int = 85
    max_queued_frames: int = 50  # unsent frames of a connection before it is closed as too slow (2 s at 25 fps)
    max_backlog_s: float = 2.0  # audio of a connection without frames yet before its receiver stops reading
    max_connections: int = 64


class Connection:
    """One WebSocket's stream. The event loop's side appends chunks (inbox) and reads frames (queue); the
    scheduler's side owns the AvatarStream."""

    def __init__(self, avatar: Avatar, options: StreamOptions, loop: asyncio.AbstractEventLoop):
        self.avatar = avatar
        self.stream = AvatarStream(avatar, StreamOptions(**asdict(options)))
        self.loop = loop
        self.inbox: collections.deque = collections.deque()  # float32 chunks, then None (the end)
        self.queue: asyncio.Queue = asyncio.Queue()  # (index, timestamp, source, face), then "end"
        self.received = 0  # samples received (the loop's side)
        self.heard_at = -math.inf  # perf_counter() of the scheduler's last chunk of this connection
        self.ready_since: float | None = None  # when its speech first waited for the device step
        self.closed = threading.Event()  # set by either side: the scheduler forgets the connection
        self.failure: str | None = None  # why the scheduler closed it (too slow, server error)
        self.failed = asyncio.Event()

    @property
    def backlog_s(self) -> float:
        return self.received / timing.AUDIO_SAMPLE_RATE - self.stream.next_frame / self.stream.fps

    def put(self, item) -> None:
        """From the scheduler's thread: queue an item for the sender."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def fail(self, message: str) -> None:
        """From the scheduler's thread: close this connection now, ahead of its queued frames."""
        self.failure = message
        self.closed.set()
        self.loop.call_soon_threadsafe(self.failed.set)


class Scheduler:
    """The one thread that drives every connection's stream and the device (module doc)."""

    def __init__(self, generator: FrameGenerator, options: ServerOptions):
        self.generator = generator
        self.options = options
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.stats = collections.Counter()
        self._thread = threading.Thread(target=self._run, name="avatar-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join()

    def add(self, connection: Connection) -> None:
        with self._lock:
            self.connections.append(connection)
        self.stats["connections"] += 1

    def _drop(self, connection: Connection, failure: str | None = None) -> None:
        with self._lock:
            if connection in self.connections:
                self.connections.remove(connection)
        if failure is not None and not connection.closed.is_set():
            connection.fail(failure)
        connection.closed.set()

    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    pause = self._tick()
                except Exception as err:  # the device step failed: every connection of that tick is told
                    log.exception("scheduler tick failed")
                    for connection in list(self.connections):
                        self._drop(connection, f"server error: {str(err).splitlines()[0] if str(err) else err!r}")
                    pause = IDLE_WAIT_S
                if pause > 0:  # until then, or until a chunk comes
                    self.wake.wait(pause)
                    self.wake.clear()

    def _tick(self) -> float:
        """One round: chunks in; then, if it is time (`_pause`), feature windows and one batch of frames out.
        -> seconds to pause before the next round (0: at once)."""
        with self._lock:
            connections = list(self.connections)
        live = []
        now = time.perf_counter()
        for connection in connections:
            if connection.closed.is_set():
                self._drop(connection)
                continue
            try:
                while connection.inbox:
                    chunk = connection.inbox.popleft()
                    connection.heard_at = now
                    if chunk is None:
                        connection.stream.end()
                    else:
                        connection.stream.push(chunk)
            except UserError as err:  # this connection's audio only
                self._drop(connection, str(err))
                continue
            live.append(connection)
        pause = self._pause(live, now)
        if pause is not None:
            return pause
        for connection in live:
            connection.ready_since = None
        requests = [r for c in live for r in c.stream.feature_requests(limit=self.options.max_batch)]
        started = time.perf_counter()
        self.generator.features(requests)
        encoded = time.perf_counter()
        jobs, owners = [], []
        progress = True
        while progress and len(jobs) < self.options.max_batch:  # round-robin: one frame per connection a turn
            progress = False
            for connection in live:
                if len(jobs) < self.options.max_batch:
                    taken = connection.stream.due_jobs(limit=1)
                    jobs += taken
                    owners += [connection] * len(taken)
                    progress = progress or bool(taken)
        if jobs:
            faces = self.generator.faces(jobs)
            self.stats["batches"] += 1
            self.stats["frames"] += len(jobs)
            for connection, job, face in zip(owners, jobs, faces):
                if connection.closed.is_set():
                    continue
                if connection.queue.qsize() >= self.options.max_queued_frames:
                    self.stats["dropped_too_slow"] += 1
                    self._drop(connection, f"client too slow: {connection.queue.qsize()} frames not received; "
                                           f"closing")
                    continue
                connection.put((job.index, job.timestamp, job.source, face))
        # where the scheduler's time goes (GET /stats; bench_realtime.py prints it): the speech encoder, and the
        # frames (picking the due ones, generating them, handing them to their connections)
        self.stats["encoder_s"] += encoded - started
        self.stats["generate_s"] += time.perf_counter() - encoded
        self.stats["encoder_windows"] += len(requests)
        for connection in live:
            if connection.stream.finished and not connection.closed.is_set():
                connection.put("end")
                self._drop(connection)
        return 0.0 if jobs or requests else IDLE_WAIT_S

    def _pause(self, live: list[Connection], now: float) -> float | None:
        """None: step now. Else seconds to wait for more connections' speech: while some connection's speech is
        ready, none has waited `batch_wait_s`, no frame is overdue, no stream has finished (its end is sent in a
        step), and another connection that is still sending (a chunk within the last `batch_wait_s` plus a chunk's
        time) has nothing ready yet."""
        if any(c.stream.frame_due() or c.stream.finished for c in live):
            return None
        ready = [c for c in live if c.stream.window_ready()]
        if not ready:
            return IDLE_WAIT_S
        for connection in ready:
            if connection.ready_since is None:
                connection.ready_since = now
        deadline = min(c.ready_since for c in ready) + self.options.batch_wait_s
        if now >= deadline:
            return None
        recent = now - self.options.batch_wait_s - SENDING_WINDOW_S
        if all(c in ready or c.stream.features.ended or c.heard_at < recent for c in live):
            return None
        return deadline - now


def decode_chunk(data: bytes, sample_format: str) -> np.ndarray:
    """One binary message -> float32 samples; one-line UserError for anything that is not raw PCM of the format."""
    for magic, what in CONTAINER_MAGIC.items():
        if data.startswith(magic):
            raise UserError(f"this chunk is {what}, not raw PCM: send the samples only ({sample_format}, 16 kHz mono)")
    if data[4:8] == b"ftyp":
        raise UserError(f"this chunk is an MP4 / M4A file, not raw PCM: send the samples only ({sample_format})")
    dtype = FORMATS[sample_format]
    if len(data) % dtype.itemsize:
        raise UserError(f"a {sample_format} chunk holds whole {dtype.itemsize}-byte samples; got {len(data)} bytes")
    return pcm_samples(np.frombuffer(data, dtype).astype(dtype.newbyteorder("=")))


def encode_frame(avatar: Avatar, index: int, timestamp: float, source: int, face, quality: int,
                 match_colors: bool) -> bytes:
    """Paste the face into its source frame and JPEG it, behind the binary header (runs in the thread pool)."""
    frame = avatar.compose(source, face, match_colors)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return FRAME_HEADER.pack(index, timestamp) + jpeg.tobytes()


def load_avatars(folder, models: LipSyncModels) -> dict[str, Avatar]:
    """Every avatar folder under `folder` (those with avatar.json), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"avatars folder not found: {folder}")
    avatars = {path.parent.name: Avatar.load(path.parent, models) for path in sorted(folder.glob(f"*/{JSON_FILE}"))}
    if not avatars:
        raise UserError(f"no avatars in {folder} (prepare one with prepare_avatar.py --name NAME)")
    return avatars


def create_app(models: LipSyncModels, avatars: dict[str, Avatar], options: ServerOptions | None = None) -> FastAPI:
    """The server's app; its lifespan starts the scheduler (CUDA graphs recorded first) and stops it."""
    options = options or ServerOptions()
    options.stream.check()
    generator = FrameGenerator(models, max_batch=options.max_batch, cuda_graph=options.cuda_graph,
                               window_samples=options.stream.window_samples)
    scheduler = Scheduler(generator, options)
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="avatar-jpeg")
    right = options.stream.right_context_s
    # audio past a frame's start that must arrive before the frame can be made: the generator's window (120 ms),
    # the last feature's receptive field (25 ms) and the stream's right context
    delay_s = (timing.num_samples_for_features(timing.generator_window_end(0)) / timing.AUDIO_SAMPLE_RATE
               + (right or 0.0))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        first = next(iter(avatars.values()))
        await asyncio.get_running_loop().run_in_executor(None, generator.warm_up, first)
        scheduler.start()
        yield
        scheduler.stop()
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(lifespan=lifespan)
    app.state.scheduler = scheduler

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/avatars")
    async def list_avatars():
        return JSONResponse({name: {"fps": a.fps, "width": a.size[0], "height": a.size[1],
                                    "frames": len(a.frames)} for name, a in avatars.items()})

    @app.get("/stats")
    async def stats():
        return JSONResponse({**scheduler.stats, "open": len(scheduler.connections)})

    async def refuse(ws: WebSocket, message: str, code: int) -> None:
        await ws.send_text(json.dumps({"type": "error", "message": message}))
        await ws.close(code)

    @app.websocket("/stream")
    async def stream(ws: WebSocket, avatar: str = "", format: str = "s16le", rate: int = timing.AUDIO_SAMPLE_RATE):
        await ws.accept()
        if avatar not in avatars:
            return await refuse(ws, f"unknown avatar {avatar!r}; this server has: {', '.join(sorted(avatars))}", 1008)
        if rate != timing.AUDIO_SAMPLE_RATE:
            return await refuse(ws, f"sample rate {rate} Hz: send {timing.AUDIO_SAMPLE_RATE} Hz mono PCM", 1003)
        if format not in FORMATS:
            return await refuse(ws, f"format {format!r}: use one of {', '.join(FORMATS)}", 1003)
        if len(scheduler.connections) >= options.max_connections:
            return await refuse(ws, f"server full ({options.max_connections} connections)", 1013)
        loop = asyncio.get_running_loop()
        chosen = avatars[avatar]
        connection = Connection(chosen, options.stream, loop)
        await ws.send_text(json.dumps({"type": "ready", "avatar": avatar, "fps": chosen.fps, "width": chosen.size[0],
                                       "height": chosen.size[1], "sample_rate": timing.AUDIO_SAMPLE_RATE,
                                       "format": format, "delay_s": round(delay_s, 3)}))
        scheduler.add(connection)

        async def receive():
            ended = False
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    if ended:
                        raise UserError("audio after {\"type\": \"end\"}")
                    samples = decode_chunk(message["bytes"], format)
                    connection.received += len(samples)
                    connection.inbox.append(samples)
                    scheduler.wake.set()
                    while connection.backlog_s > options.max_backlog_s and not connection.closed.is_set():
                        await asyncio.sleep(0.005)
                else:
                    try:
                        kind = json.loads(message.get("text") or "").get("type")
                    except (ValueError, AttributeError):
                        kind = None
                    if kind != "end":
                        raise UserError('text messages are {"type": "end"}; audio goes in binary messages')
                    ended = True
                    connection.inbox.append(None)
                    scheduler.wake.set()

        async def send():
            while True:
                item = await connection.queue.get()
                if item == "end":
                    await ws.send_text(json.dumps({"type": "end", "frames": connection.stream.next_frame}))
                    await ws.close(1000)
                    return
                data = await loop.run_in_executor(pool, encode_frame, chosen, *item, options.jpeg_quality,
                                                  options.stream.color_match)
                await ws.send_bytes(data)

        tasks = [asyncio.create_task(receive()), asyncio.create_task(send()),
                 asyncio.create_task(connection.failed.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            message = connection.failure if tasks[2] in done else None
            for task in done - {tasks[2]}:
                error = task.exception()
                if isinstance(error, UserError):
                    message = str(error)
                elif error is not None and not isinstance(error, WebSocketDisconnect):
                    log.error("connection failed: %r", error)
            if message is not None:  # bad audio, too slow, or a server error: tell this client, if it listens
                code = 1008 if connection.failure == message else 1003
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(refuse(ws, message, code), timeout=1.0)
        finally:
            connection.closed.set()
            scheduler.wake.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return app
