"""Wav2Vec2 features of a latent dataset: every folder's audio.wav -> wav2vec2.pt (fp16 [F, D], F = 50 / s).

    python audio_preprocess.py --data_root D [--audio_encoder facebook/wav2vec2-base-960h] [--device cuda|cpu]
        [--overwrite]

Run after video_preprocess.py. Folders whose wav2vec2.pt already holds this encoder's features are skipped;
features of another encoder are recomputed only with --overwrite. Exits non-zero if any folder failed.
"""
from __future__ import annotations

import argparse

import torch

from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER
from lipsync.errors import UserError, cli_entry
from lipsync.preprocess.audio import encode_dataset_audio
from lipsync.preprocess.report import summarize


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", required=True, help="dataset folder written by video_preprocess.py")
    p.add_argument("--audio_encoder", default=DEFAULT_AUDIO_ENCODER,
                   help="Wav2Vec2-family model: hub id or local folder (training and inference must use the same)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--overwrite", action="store_true", help="recompute existing wav2vec2.pt files")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    outcomes = encode_dataset_audio(args.data_root, args.audio_encoder, args.device, args.overwrite)
    print(summarize(outcomes, "folders"))
    failed = sum(o.status == "failed" for o in outcomes)
    if failed:
        raise UserError(f"{failed} of {len(outcomes)} folders failed")


if __name__ == "__main__":
    main()
