"""The web app as users meet it: start-up, one request's latency, and what two concurrent requests cost.

    python bench/bench_app.py --work /tmp/bench_app [--model tiny|real] [--size 256] [--checkpoint CKPT] \
        [--clip FACE_VIDEO] [--audio SPEECH] [--seconds 2] [--repeats 3] [--device auto]

Starts `python app.py` as a real server on a free localhost port and drives it with gradio_client, as
tests/test_app.py does. The model: --checkpoint, or one written here with random weights: "tiny" (the tests'
tiny codec, Wav2Vec2 and UNet; runs on a CPU in seconds) or "real" (the SD VAE's and Wav2Vec2-base's
architectures and customized_unet/ at --size px crops, as bench/bench_inference.py writes them). The clip: --clip
(default: the GRID test clip, 360x288, 25 fps) driven by --seconds of --audio (default: the clip's own speech,
repeated as needed).

Prints a table: start-up (process start -> the server answers; of which the models' load, as the app logs it),
each sequential request's latency seen by the client (upload, queue, lip_sync, download) next to lip_sync's own
wall time from the run summary (the rest is the app's and Gradio's overhead), then two requests submitted at
once by two clients: each one's latency and the wall time until both are done.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRID = ROOT / "tests" / "data" / "grid_lwbsza.mpg"


def write_tiny_checkpoint(work: Path) -> Path:
    """The tests' tiny generator (conftest.generator_checkpoint): 64 px crops, random weights."""
    import torch

    from lipsync import model_zoo
    from lipsync.checkpoint import encode_model_card
    from models.unet import AUDIO_POSITIONS, build_unet

    config = model_zoo.tiny_unet_config()
    torch.manual_seed(0)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_hidden_size": 32, "image_size": 64,
            "audio_encoder": str(model_zoo.save_wav2vec2(work / "tiny_wav2vec2", model_zoo.tiny_wav2vec2_config())),
            "codec": str(model_zoo.save_vae(work / "tiny_vae", model_zoo.tiny_vae_config())),
            "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    path = work / "tiny_generator.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def write_speech(path: Path, source, seconds: float) -> Path:
    from lipsync.audio import load_audio, write_wav

    speech = load_audio(source)
    repeats = int(np.ceil(seconds * 16000 / len(speech)))
    write_wav(path, np.tile(speech, repeats)[:int(seconds * 16000)])
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: Path, work: Path, device: str, batch_size: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = work / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint_path", str(checkpoint),
                                    "--port", str(port), "--device", device, "--batch_size", str(batch_size),
                                    "--max_seconds", "0"], stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, f"http://127.0.0.1:{port}", log_path


def wait_until_serving(process: subprocess.Popen, log_path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while "serving on" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"app.py did not start:\n{log_path.read_text()}")
        time.sleep(0.05)


def request(client, face: Path, speech: Path) -> tuple[float, float, int]:
    """One request like the page's Run button -> (client-side seconds, lip_sync's seconds, frames)."""
    from gradio_client import handle_file

    start = time.perf_counter()
    _, _, summary = client.predict(handle_file(str(face)), None, handle_file(str(speech)), None, 0, 10, 0, 0, False,
                                   18, None, api_name="/lip_sync")
    latency = time.perf_counter() - start
    frames, seconds = re.search(r": (\d+) frames.*? ([\d.]+) s on ", summary, re.S).groups()
    return latency, float(seconds), int(frames)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="folder for the checkpoint, inputs, downloads and server log")
    p.add_argument("--model", choices=["tiny", "real"], default="tiny")
    p.add_argument("--size", type=int, default=256, help="crop size of the 'real' model")
    p.add_argument("--checkpoint", help="a generator checkpoint instead of one with random weights")
    p.add_argument("--clip", default=str(GRID), help="face video (default: the GRID test clip)")
    p.add_argument("--audio", help="speech to drive it (default: the clip's own audio)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of speech per request")
    p.add_argument("--repeats", type=int, default=3, help="sequential requests (the first one warms up)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    elif args.model == "tiny":
        checkpoint = write_tiny_checkpoint(work)
    else:
        from bench.bench_inference import write_models
        checkpoint = write_models(work, args.size)
    speech = write_speech(work / "speech.wav", args.audio or args.clip, args.seconds)

    from gradio_client import Client

    start = time.perf_counter()
    process, url, log_path = start_server(checkpoint, work, args.device, args.batch_size)
    try:
        wait_until_serving(process, log_path)
        clients = [Client(url, verbose=False, download_files=str(work / f"downloads_{i}")) for i in range(2)]
        startup = time.perf_counter() - start
        log = log_path.read_text()
        load = float(re.search(r"models loaded in ([\d.]+) s", log).group(1))
        device = re.search(r"px crops on (\S+)", log).group(1)
        sequential = [request(clients[0], Path(args.clip), speech) for _ in range(args.repeats)]

        both: list = [None, None]

        def run(i):
            both[i] = request(clients[i], Path(args.clip), speech)

        start = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        together = time.perf_counter() - start
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    frames = sequential[0][2]
    print(f"\napp on {device}, {args.model if not args.checkpoint else checkpoint.name} model, "
          f"{Path(args.clip).name} driven by {args.seconds:g} s of speech ({frames} frames)")
    print(f"start-up: {startup:.1f} s from `python app.py` to a connected client, of which the models' load "
          f"{load:.1f} s")
    print("request                     latency s  lip_sync s  overhead s")
    rows = [(f"sequential {i + 1}", *r[:2]) for i, r in enumerate(sequential)]
    rows += [(f"concurrent, client {i + 1} of 2", *r[:2]) for i, r in enumerate(both)]  # one of them waited
    for name, latency, inner in rows:
        print(f"{name:<26}{latency:>10.2f}{inner:>12.2f}{latency - inner:>12.2f}")
    print(f"two concurrent requests: both done after {together:.2f} s "
          f"(one warm request alone: {min(r[0] for r in sequential[1:] or sequential):.2f} s)")
    return {"startup_s": startup, "load_s": load, "sequential": sequential, "concurrent": both,
            "concurrent_wall_s": together}


if __name__ == "__main__":
    main()
