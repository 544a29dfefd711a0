"""The options both training scripts share (data, optimiser, trainer), each defined once with its help text.
The resolved options are saved in the run folder (options.json) and in every checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from lipsync.arguments import devices, int_or_fraction

COSINE_FLOOR = 0.1  # the cosine schedule ends at this fraction of --lr


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_root", required=True, help="folder holding the preprocessed video folders")
    g.add_argument("--dataset_name", required=True, help="reads filelists_<name>/{train,val}.txt")
    g.add_argument("--T", type=int, default=5, help="video frames per window")
    g.add_argument("--train_samples_per_epoch", type=int, default=100_000)
    g.add_argument("--val_samples", type=int, default=1024, help="fixed, seeded validation windows")
    g.add_argument("--overfit", action="store_true",
                   help="validate on (a fixed sample of) the training videos: can it fit?")
    g.add_argument("--num_workers", type=int, default=4)


def add_trainer_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--batch_size", type=int, default=8, help="per device")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--weight_decay", type=float, default=0.01, help="AdamW decay (never on norms and biases)")
    g.add_argument("--warmup_steps", type=int, default=1000, help="linear warm-up, in optimizer steps")
    g.add_argument("--lr_schedule", choices=["cosine", "constant"], default="cosine",
                   help=f"after warm-up: cosine down to {COSINE_FLOOR} x lr at the last step, or constant")
    g.add_argument("--max_steps", type=int, default=200_000, help="optimizer steps (-1: use --max_epochs)")
    g.add_argument("--max_epochs", type=int, default=-1, help="-1: unlimited")
    g.add_argument("--val_check_interval", type=int_or_fraction, default=1000,
                   help="int: validate every N training batches; float: fraction of an epoch")
    g.add_argument("--accumulate_grad_batches", type=int, default=1)
    g.add_argument("--gradient_clip_val", type=float, default=1.0)
    g.add_argument("--devices", type=devices, default="auto",
                   help="processes (GPUs) per node; auto: every GPU, or one CPU process (README: several machines)")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--precision", choices=["32-true", "bf16-mixed", "bf16-true", "16-mixed"], default=None,
                   help="default: bf16-mixed on CUDA, 32-true on CPU")
    g.add_argument("--strategy", choices=["deepspeed_stage_2", "ddp", "auto"], default="deepspeed_stage_2",
                   help="deepspeed_stage_2 runs ZeRO-2 on GPUs, and on CPU processes on a CPU-only machine; ddp "
                        "on one device runs Lightning's single-device strategy; default: %(default)s")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--output_dir", default="experiments", help="run folders go to <output_dir>/<experiment>/")
    g.add_argument("--ckpt", default=None,
                   help="resume (mid-epoch too): a .ckpt file or a DeepSpeed checkpoint folder, from any number of "
                        "processes")
    g.add_argument("--save_top_k", type=int, default=3,
                   help="checkpoints kept by the validation metric (last.ckpt is written at every validation)")
    g.add_argument("--log_every_n_steps", type=int, default=50)
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")


@dataclass
class OptimConfig:
    lr: float
    weight_decay: float
    warmup_steps: int
    schedule: str  # "cosine" | "constant"

    @classmethod
    def from_args(cls, args) -> "OptimConfig":
        return cls(args.lr, args.weight_decay, args.warmup_steps, args.lr_schedule)
