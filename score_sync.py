"""Score the lip sync of every dataset folder: AV offset (frames at 25 fps) and confidence -> <folder>/sync.json.

    python score_sync.py --data_root D --syncnet experiments/syncnet/version_0/checkpoints/last.ckpt [--max_offset 15]
    python score_sync.py --data_root D --syncnet_v2 weights/syncnet_v2.model        # or SyncNet v2 on pixel crops

--syncnet: the project's trained latent expert, on the folder's latents and wav2vec2.pt (no video decoding; the
folders must be made with the codec and audio encoder its model card names). --syncnet_v2: syncnet_python's
network (user weights; docs/EVALUATION.md) on 224 px crops of the source video, cut with the folder's boxes.
Offset > 0: the sound comes early (lipsync.evaluation.sync). Folders already scored by the same network with the
same --max_offset are skipped, so a rerun resumes; a bad folder (no audio features, too short, ...) is one line of
the summary. Exits 0 when anything was scored. Then: make_filelists.py ... --min_sync_conf 3 --max_offset 6.
"""
from __future__ import annotations

import argparse

import torch

from lipsync.data.curation import LatentScorer, PixelScorer, score_dataset
from lipsync.errors import UserError, cli_entry
from lipsync.evaluation.sync import VSHIFT
from lipsync.preprocess.report import summarize


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_root", required=True, help="dataset folder (video folders at any depth)")
    scorer = p.add_mutually_exclusive_group(required=True)
    scorer.add_argument("--syncnet", help="this project's SyncNet checkpoint (any kind lipsync.checkpoint reads)")
    scorer.add_argument("--syncnet_v2", help="SyncNet v2 weights (syncnet_v2.model)")
    p.add_argument("--max_offset", type=int, default=VSHIFT, help="largest offset searched, frames each way")
    p.add_argument("--force", action="store_true", help="rescore folders already scored by this network")
    p.add_argument("--device", default="cpu", help="SyncNet v2's device (the latent expert runs on the CPU)")
    return p.parse_args(argv)


@cli_entry
def main(argv=None):
    args = parse_args(argv)
    if args.max_offset < 1:
        raise UserError("--max_offset must be at least 1")
    with torch.inference_mode():
        scorer = LatentScorer.load(args.syncnet) if args.syncnet else PixelScorer.load(args.syncnet_v2, args.device)
        outcomes = score_dataset(args.data_root, scorer, args.max_offset, args.force)
    print(summarize(outcomes, "folders"))
    if not outcomes:
        raise UserError(f"no finished dataset folder under {args.data_root}")
    if not any(o.status in ("done", "skipped") for o in outcomes):
        raise UserError(f"none of the {len(outcomes)} folders could be scored (listed above)")
    return outcomes


if __name__ == "__main__":
    main()
