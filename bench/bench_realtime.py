"""Real-time avatars: N concurrent streams through the real server, and how far limited context moves features
and frames.

    # streams: the server (avatar_server.py, a child process) on this machine's device, N clients sending a wav in
    # real time in CHUNK ms chunks; per stream: first-frame latency, delay from audio to frame, sustained fps
    python bench/bench_realtime.py --clip FACE.mp4 --audio SPEECH.wav --work /tmp/bench_rt \
        [--sizes 256 512] [--streams 1 2 4 8 16] [--chunk_ms 20] [--seconds 10] [--max_batch 16] [--batch_wait_s 0] \
        [--right_context_s 0.1] [--compile {auto,on,off}] [--no_cuda_graph] [--tiny]
    # context: features and frames of a stream at each right / left context against the whole clip's
    python bench/bench_realtime.py --clip FACE.mp4 --audio SPEECH.wav --work /tmp/bench_rt --context_sweep \
        [--sizes 256] [--tiny] [--features_only]

Real-size architectures with random weights (bench_inference.write_models: SD VAE, Wav2Vec2-base, the 80M
customized_unet, a checkpoint with its model card per crop size); --tiny: the test suite's tiny ones at 64 px
(CPU). The face box is detected once on the first frame and fixed (no detector in the timed path either way:
an avatar is prepared beforehand).

Delay of frame k = the wall time it arrives at the client - the wall time its own audio (at k / fps) was spoken,
with chunk c (audio [c d, (c + 1) d)) sent at stream start + (c + 1) d, as a microphone would. It holds the chunk
length, the generator's look-ahead (120 ms + the last feature's 25 ms receptive field), the right context, the
device step, JPEG and the socket. Steady = frames after the first second (of a clip shorter than 2 s: its
second half).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo, timing  # noqa: E402
from lipsync.audio import load_audio  # noqa: E402
from lipsync.checkpoint import encode_model_card  # noqa: E402
from lipsync.inference import load_models  # noqa: E402
from lipsync.realtime.avatar import Avatar, prepare_avatar  # noqa: E402
from lipsync.realtime.streaming import AvatarStream, FrameGenerator, StreamOptions  # noqa: E402
from models.unet import AUDIO_POSITIONS, build_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LOOKAHEAD_S = 0.125  # the generator window past the frame's start + the last feature's receptive field
RIGHT_CONTEXTS = (0.0, 0.02, 0.04, 0.08, 0.1, 0.16, 0.24, 0.4, 1.0, None)
LEFT_CONTEXTS = (0.5, 1.0, 2.0, None)


def write_tiny_models(work: Path) -> Path:
    vae = model_zoo.save_vae(work / "tiny_vae", model_zoo.tiny_vae_config())
    w2v = model_zoo.save_wav2vec2(work / "tiny_wav2vec2", model_zoo.tiny_wav2vec2_config())
    config = model_zoo.tiny_unet_config()
    torch.manual_seed(0)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": str(w2v), "audio_hidden_size": 32,
            "codec": str(vae), "image_size": 64, "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    path = work / "generator_tiny.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def checkpoints(args, work: Path) -> dict[int, Path]:
    if args.tiny:
        return {64: write_tiny_models(work)}
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_inference import write_models
    return {size: write_models(work, size) for size in args.sizes}


def prepare(checkpoint: Path, clip: str, work: Path, size: int, device: str) -> Path:
    """The clip as an avatar (box detected on its first frame, then fixed) in work/avatars_SIZE/face."""
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_inference import first_frame_box
    folder = work / f"avatars_{size}"
    models = load_models(checkpoint, device=device)
    summary = prepare_avatar(models, clip, folder / "face", box=first_frame_box(clip), max_seconds=10)
    print(f"avatar: {summary['num_frames']} frames {summary['width']}x{summary['height']}, {size} px crops, "
          f"prepared in {summary['seconds']:.1f} s", flush=True)
    del models
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


class ServerProcess:
    """avatar_server.py in a child process on a free port."""

    def __init__(self, checkpoint: Path, avatars: Path, args):
        command = [sys.executable, str(ROOT / "avatar_server.py"), "--checkpoint_path", str(checkpoint),
                   "--avatars", str(avatars), "--port", "0", "--max_batch", str(args.max_batch),
                   "--batch_wait_s", str(args.batch_wait_s),
                   "--right_context_s", str(args.right_context_s), "--device", args.device,
                   "--max_queued_frames", "1000"]
        command += ["--compile", args.compile] + ["--no_cuda_graph"] * (not args.cuda_graph)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = match = None
        while line != "" and not match:  # notes (compiling ...) come before the address
            line = self.process.stdout.readline()
            match = re.search(r"http://[^:]+:(\d+)/", line)
        if not match:
            self.process.kill()
            raise RuntimeError(f"the server did not start: {line!r}")
        self.port = int(match.group(1))
        # the port listens before the app's start-up (CUDA graphs recorded for every batch size) has finished;
        # uvicorn answers the first request only after it: wait for that, not inside a client's handshake timeout
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=600):
            pass

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats") as response:
            return json.loads(response.read())

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


async def client(port: int, pcm: np.ndarray, chunk_ms: int, start_at: float) -> dict:
    """One stream in real time -> first-frame latency and per-frame delays (seconds)."""
    import websockets

    step = timing.AUDIO_SAMPLE_RATE * chunk_ms // 1000
    arrivals = {}
    async with websockets.connect(f"ws://127.0.0.1:{port}/stream?avatar=face", max_size=None) as ws:
        ready = json.loads(await ws.recv())

        async def receive():
            async for message in ws:
                if isinstance(message, str):
                    return json.loads(message)
                arrivals[struct.unpack_from("<I", message)[0]] = time.perf_counter()

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        origin = time.perf_counter()  # audio sample 0 is spoken now; chunk c leaves at origin + (c + 1) d
        for c, first in enumerate(range(0, len(pcm), step)):
            await asyncio.sleep(max(0.0, origin + (c + 1) * chunk_ms / 1000 - time.perf_counter()))
            await ws.send(pcm[first:first + step].tobytes())
        await ws.send(json.dumps({"type": "end"}))
        end = await receiver
    del loop
    fps = ready["fps"]
    indices = sorted(arrivals)
    delays = np.array([arrivals[k] - (origin + k / fps) for k in indices])
    times = np.array(indices) / fps
    steady = delays[times >= min(1.0, times.max() / 2)]  # after the first second (the second half of a short clip)
    span = arrivals[indices[-1]] - arrivals[indices[0]] if len(indices) > 1 else float("nan")
    return {"frames": len(indices), "expected": end.get("frames"),
            "first_frame_s": arrivals[0] - (origin + chunk_ms / 1000), "delays": steady,
            "fps": (len(indices) - 1) / span}


async def run_streams(port: int, pcm: np.ndarray, count: int, chunk_ms: int) -> list[dict]:
    start_at = time.perf_counter() + 0.5
    # streams start 1 / count of a frame apart, as independent users would
    return await asyncio.gather(*(client(port, pcm, chunk_ms, start_at + i * 0.04 / count) for i in range(count)))


def check_encoder_graphs(avatars: Path, checkpoint: Path, pcm: np.ndarray, args) -> None:
    """The server's features (encoder graphs for full-context windows) against the eager encoder's, same stream."""
    if not (args.cuda_graph and torch.cuda.is_available()):
        return
    avatar = Avatar.load(avatars / "face", load_models(checkpoint, device=args.device))
    options = StreamOptions(right_context_s=args.right_context_s)
    eager, graphed = (stream_features(avatar, pcm, options, graphs) for graphs in (False, True))
    error = ((graphed - eager).norm(dim=1) / eager.norm(dim=1)).max()
    print(f"encoder graphs ({options.window_samples} samples a window) vs eager, {len(eager)} feature frames: "
          f"max |difference| {(graphed - eager).abs().max():.2e}, max relative {error:.2e}", flush=True)
    del avatar
    torch.cuda.empty_cache()


def bench_streams(args, work: Path, pcm: np.ndarray) -> None:
    rows = []
    for size, checkpoint in checkpoints(args, work).items():
        avatars = prepare(checkpoint, args.clip, work, size, args.device)
        check_encoder_graphs(avatars, checkpoint, pcm, args)
        server = ServerProcess(checkpoint, avatars, args)
        try:
            asyncio.run(run_streams(server.port, pcm[:timing.AUDIO_SAMPLE_RATE], 1, 20))  # warm-up
            for count in args.streams:
                for chunk_ms in args.chunk_ms:
                    before = server.stats()
                    results = asyncio.run(run_streams(server.port, pcm, count, chunk_ms))
                    after = server.stats()
                    delays = np.concatenate([r["delays"] for r in results])
                    rows.append((size, count, chunk_ms, max(r["first_frame_s"] for r in results),
                                 np.percentile(delays, 50), np.percentile(delays, 95),
                                 min(r["fps"] for r in results),
                                 all(r["frames"] == r["expected"] for r in results),
                                 (after["frames"] - before["frames"]) / max(1, after["batches"] - before["batches"])))
                    spent = {k: after.get(k, 0) - before.get(k, 0) for k in ("encoder_s", "generate_s",
                                                                            "encoder_windows", "frames", "batches")}
                    print(json.dumps({"size": size, "streams": count, "chunk_ms": chunk_ms, "row": rows[-1][3:],
                                      "scheduler": spent}, default=float), flush=True)
        finally:
            server.stop()
    print(f"\ndevice: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; "
          f"{len(pcm) / timing.AUDIO_SAMPLE_RATE:.1f} s of speech per stream in real time; right context "
          f"{args.right_context_s} s; look-ahead {LOOKAHEAD_S * 1000:.0f} ms; delay = frame arrival - its audio spoken")
    print("crop px  streams  chunk ms  first frame s (max)  delay p50 ms  p95 ms  p95 - look-ahead  "
          "fps/stream (min)  all frames  rows/batch")
    for size, count, chunk_ms, first, p50, p95, fps, complete, rows_per_batch in rows:
        print(f"{size:>7} {count:>8} {chunk_ms:>9} {first:>20.3f} {p50 * 1000:>13.0f} {p95 * 1000:>7.0f} "
              f"{(p95 - LOOKAHEAD_S) * 1000:>17.0f} {fps:>17.1f} {str(complete):>11} {rows_per_batch:>11.1f}")


def frame_region(avatar: Avatar) -> np.ndarray:
    """bool [H, W]: the pixels the paste can change (the mask's footprint in the source frames, all frames)."""
    from lipsync.faces import paste_faces
    size = avatar.models.image_size
    white = np.full((1, size, size, 3), 255, np.uint8)
    region = np.zeros(avatar.frames.shape[1:3], bool)
    for source in np.flatnonzero(avatar.found)[:: max(1, len(avatar.frames) // 10)]:
        black = np.zeros_like(np.asarray(avatar.frames[source]))[None]
        region |= paste_faces(black, avatar.boxes[source][None], white, avatar.mask)[0].any(axis=2)
    return region


def stream_features(avatar: Avatar, pcm: np.ndarray, options: StreamOptions, graphs: bool = False) -> torch.Tensor:
    """A stream's features from 20 ms chunks; graphs: the encoder replays CUDA graphs for full-context windows."""
    stream = AvatarStream(avatar, options)
    generator = FrameGenerator(avatar.models, window_samples=options.window_samples if graphs else None)
    for first in range(0, len(pcm), 320):
        stream.push(pcm[first:first + 320])
        generator.features(stream.feature_requests(limit=64))
    stream.end()
    generator.features(stream.feature_requests(limit=10 ** 6))
    return stream.features.features[:stream.features.total]


def bench_context(args, work: Path, pcm: np.ndarray) -> None:
    """Each context against full context (= the offline encoder's features and lip_sync's frames, within one grey
    level: tests/test_realtime.py); no silence gate, so every frame is generated from its features."""
    rows = []
    for size, checkpoint in checkpoints(args, work).items():
        avatar = Avatar.load(prepare(checkpoint, args.clip, work, size, args.device) / "face",
                             load_models(checkpoint, device=args.device))
        region = frame_region(avatar)
        chunks = [pcm[i:i + 320] for i in range(0, len(pcm), 320)]
        full = StreamOptions(left_context_s=None, right_context_s=None, silence_db=None)
        reference = stream_features(avatar, pcm, full)
        reference_frames = None if args.features_only else np.stack([f for _, f in avatar.stream(chunks, **vars(full))])
        for left in LEFT_CONTEXTS:
            for right in RIGHT_CONTEXTS:
                if right is None and left is not None:  # waiting for the end: the left context is all of it
                    continue
                options = StreamOptions(left_context_s=left, right_context_s=right, silence_db=None)
                features = stream_features(avatar, pcm, options)
                error = ((features - reference).norm(dim=1) / reference.norm(dim=1)).numpy()
                cosine = torch.nn.functional.cosine_similarity(features, reference, dim=1).numpy()
                moved = np.full(1, np.nan)
                if reference_frames is not None:
                    frames = np.stack([f for _, f in avatar.stream(chunks, **vars(options))])
                    moved = np.abs(frames.astype(np.int16) - reference_frames)[:, region].mean(axis=(1, 2))
                later = int(timing.FEATURE_RATE)  # after the first second: the running statistics have settled
                rows.append((size, left, right, error.mean(), np.percentile(error, 95), error[later:].mean(),
                             cosine.mean(), moved.mean(), moved[later // 2:].mean(), moved.max()))
                print(json.dumps({"row": rows[-1]}, default=lambda v: None if v is None else float(v)), flush=True)
    print(f"\nagainst full context ({len(pcm) / timing.AUDIO_SAMPLE_RATE:.1f} s of speech); feature error = "
          f"|f - f_full| / |f_full| per feature frame; frames: mean |difference| over the pasted region, grey levels")
    print("crop px  left s  right s  feature error mean     p95  after 1 s  cosine mean  frame diff mean  after 1 s"
          "  max (frame)")
    for size, left, right, mean, p95, later, cosine, moved, moved_later, worst in rows:
        print(f"{size:>7} {str(left):>7} {str(right):>8} {mean:>19.4f} {p95:>7.4f} {later:>10.4f} {cosine:>12.4f} "
              f"{moved:>16.2f} {moved_later:>10.2f} {worst:>12.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True, help="face video")
    p.add_argument("--audio", required=True, help="speech (any audio file)")
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", nargs="*", type=int, default=[256, 512])
    p.add_argument("--streams", nargs="*", type=int, default=[1, 2, 4, 8, 16])
    p.add_argument("--chunk_ms", nargs="*", type=int, default=[20])
    p.add_argument("--seconds", type=float, default=10.0, help="speech per stream (the audio is looped)")
    p.add_argument("--max_batch", type=int, default=16)
    p.add_argument("--batch_wait_s", type=float, default=0.0, help="avatar_server.py's")
    p.add_argument("--right_context_s", type=float, default=StreamOptions().right_context_s)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="the server's --compile")
    p.add_argument("--no_cuda_graph", dest="cuda_graph", action="store_false")
    p.add_argument("--tiny", action="store_true", help="the tiny test models at 64 px (CPU)")
    p.add_argument("--context_sweep", action="store_true", help="the context table instead of the streams table")
    p.add_argument("--features_only", action="store_true", help="context sweep: the features only (no frames)")
    p.add_argument("--right_contexts", type=float, nargs="*", default=None,
                   help="context sweep: right contexts in seconds (default: 0 .. 1 s); full context is always added")
    p.add_argument("--left_contexts", type=float, nargs="*", default=None,
                   help="context sweep: left contexts in seconds (default 0.5 1 2); 'all' is always added")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    speech = load_audio(args.audio)
    samples = int(args.seconds * timing.AUDIO_SAMPLE_RATE)
    speech = np.tile(speech, -(-samples // len(speech)))[:samples]
    pcm = np.round(np.clip(speech, -1, 1) * 32767).astype(np.int16)
    global RIGHT_CONTEXTS, LEFT_CONTEXTS
    if args.right_contexts is not None:
        RIGHT_CONTEXTS = (*args.right_contexts, None)
    if args.left_contexts is not None:
        LEFT_CONTEXTS = (*args.left_contexts, None)
    (bench_context if args.context_sweep else bench_streams)(args, work, pcm)


if __name__ == "__main__":
    main()
