"""A web page for lip-syncing: upload a face video (or image) and speech, watch and download the result.

    python app.py --checkpoint_path CKPT [--host 127.0.0.1] [--port 7860] [--share] [--max_seconds 60] \
        [--keep_minutes 60] [--max_queue 16] [--device auto] [--compile] [--batch_size 16]

The models load once, at start-up; requests wait in a queue and each runs the same lip_sync as
unet_inference.py. Listens on 127.0.0.1 only unless --host says otherwise (0.0.0.0: every interface); --share
asks Gradio for a public link. The page itself is lipsync/app.py.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile

import diffusers
import transformers

from lipsync.errors import UserError, cli_entry
from lipsync.inference import LipSyncOptions

DEFAULTS = LipSyncOptions()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint_path", required=True,
                   help="generator checkpoint: Lightning .ckpt, ZeRO folder, zero_to_fp32 output, safetensors")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    p.add_argument("--max_seconds", type=float, default=60.0,
                   help="longest driving speech accepted, in seconds (0: no limit)")
    p.add_argument("--keep_minutes", type=float, default=60.0,
                   help="uploads and results older than this are deleted (all of them when the app stops)")
    p.add_argument("--max_queue", type=int, default=16, help="requests that may wait; more are turned away")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--compile", action="store_true", help="torch.compile UNet and codec (CUDA; long inputs)")
    p.add_argument("--batch_size", type=int, default=DEFAULTS.batch_size,
                   help="frames per face detector / codec / UNet batch")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> None:
    args = parse_args(argv)
    for name, bad, rule in (("max_seconds", args.max_seconds < 0, ">= 0"), ("keep_minutes", args.keep_minutes <= 0,
                            "> 0"), ("max_queue", args.max_queue < 1, ">= 1"), ("batch_size", args.batch_size < 1,
                            ">= 1")):
        if bad:
            raise UserError(f"--{name} must be {rule}, got {getattr(args, name):g}")
    for library in (transformers, diffusers):  # our own lines only, no loading chatter
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` ends it as Ctrl-C does: files removed
    files = tempfile.mkdtemp(prefix="lipsync_app_")  # uploads and results, all removed at exit
    os.environ["GRADIO_TEMP_DIR"] = files  # before Gradio is imported: some of its modules read it then
    try:
        from lipsync.app import serve

        serve(args.checkpoint_path, files, host=args.host, port=args.port, share=args.share,
              max_seconds=args.max_seconds or None, keep_minutes=args.keep_minutes, max_queue=args.max_queue,
              device=args.device, compile=args.compile, batch_size=args.batch_size)
    finally:
        shutil.rmtree(files, ignore_errors=True)


if __name__ == "__main__":
    main()
