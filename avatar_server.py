"""Serve prepared avatars in real time: speech streamed over a WebSocket in, lip-synced JPEG frames out, every
connection's frames generated in shared batches on one device (lipsync.realtime.server has the protocol).

    python avatar_server.py --checkpoint_path CKPT [--avatars avatars] [--host 127.0.0.1] [--port 8000] \
        [--device auto] [--max_batch 16] [--batch_wait_s 0] [--left_context_s 1.0] [--right_context_s 0.1] \
        [--silence_db -50] [--jpeg_quality 85] [--max_queued_frames 50] [--compile {auto,on,off}] [--no_cuda_graph]

Then open http://HOST:PORT/ (microphone or a file), or stream from code: ws://HOST:PORT/stream?avatar=NAME.
Prepare avatars first: python prepare_avatar.py --checkpoint_path CKPT --face VIDEO --name NAME
"""
from __future__ import annotations

import argparse
import socket
import sys

from lipsync.errors import UserError, cli_entry
from lipsync.inference import load_models
from lipsync.inference.models import resolve_device
from lipsync.realtime.server import ServerOptions, create_app, load_avatars
from lipsync.realtime.streaming import StreamOptions

DEFAULTS, STREAM = ServerOptions(), StreamOptions()


def seconds_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "full") else float(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint_path", required=True, help="generator checkpoint (any kind unet_inference.py reads)")
    p.add_argument("--avatars", default="avatars", help="folder of avatars written by prepare_avatar.py")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=("on", "off", "auto"),
                   help="torch.compile the UNet and the codec: 'auto' (default) on a CUDA device, where it halves the "
                        "generation step; the first start on a machine compiles for minutes, later ones read the "
                        "kernels kept on disk (lipsync/compile_cache.py). '--compile' alone = on")
    p.add_argument("--no_cuda_graph", dest="cuda_graph", action="store_false",
                   help="launch each kernel from Python instead of replaying recorded CUDA graphs")
    p.add_argument("--max_batch", type=int, default=DEFAULTS.max_batch,
                   help="frames of all connections generated in one call (at most)")
    p.add_argument("--batch_wait_s", type=float, default=DEFAULTS.batch_wait_s,
                   help="seconds one connection's ready speech may wait for the others' (fuller batches), e.g. 0.04")
    p.add_argument("--left_context_s", type=seconds_or_none, default=STREAM.left_context_s,
                   help="audio before each step that the speech encoder sees (none: all of it)")
    p.add_argument("--right_context_s", type=seconds_or_none, default=STREAM.right_context_s,
                   help="audio after each step that the speech encoder waits for: latency for accuracy")
    p.add_argument("--silence_db", type=seconds_or_none, default=STREAM.silence_db,
                   help="frames quieter than this (RMS dBFS over their audio window) show the idle face (none: off)")
    p.add_argument("--color_match", action="store_true", help="match the generated lower face's colours")
    p.add_argument("--jpeg_quality", type=int, default=DEFAULTS.jpeg_quality)
    p.add_argument("--max_queued_frames", type=int, default=DEFAULTS.max_queued_frames,
                   help="unsent frames after which a connection is closed as too slow")
    p.add_argument("--max_connections", type=int, default=DEFAULTS.max_connections)
    return p.parse_args(argv)


def build(args: argparse.Namespace):
    """The app for these options (models and avatars loaded)."""
    if args.max_batch < 1 or not 1 <= args.jpeg_quality <= 100 or args.max_queued_frames < 1 \
            or not 0 <= args.batch_wait_s <= 1:
        raise UserError("--max_batch and --max_queued_frames must be >= 1, --jpeg_quality in 1..100, "
                        "--batch_wait_s in 0..1")
    device = resolve_device(args.device)
    compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    if compile:
        print("compiling the generation step for this device (minutes on the first start of a machine; "
              "--compile off skips it)", flush=True)
    models = load_models(args.checkpoint_path, device=str(device), compile=compile, autotune=True)
    avatars = load_avatars(args.avatars, models)
    stream = StreamOptions(left_context_s=args.left_context_s, right_context_s=args.right_context_s,
                           silence_db=args.silence_db, color_match=args.color_match)
    options = ServerOptions(stream=stream, max_batch=args.max_batch, batch_wait_s=args.batch_wait_s,
                            cuda_graph=args.cuda_graph, jpeg_quality=args.jpeg_quality,
                            max_queued_frames=args.max_queued_frames, max_connections=args.max_connections)
    return create_app(models, avatars, options), avatars


@cli_entry
def main(argv=None):
    import uvicorn

    args = parse_args(argv)
    # the scheduler thread drives the device and lets go of the GIL in every torch call; the event loop and the
    # JPEG threads then hold it until they block or the switch interval (5 ms by default) ends: 1 ms bounds that wait
    sys.setswitchinterval(0.001)
    app, avatars = build(args)
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as err:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror}") from None
    port = sock.getsockname()[1]
    print(f"serving {len(avatars)} avatar(s) ({', '.join(avatars)}) on http://{args.host}:{port}/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", ws_max_size=1 << 20)).run(sockets=[sock])


if __name__ == "__main__":
    main()
