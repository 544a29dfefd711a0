"""Killed and resumed multi-GPU generator training against an uninterrupted run (the real script, DeepSpeed ZeRO-2).

    python bench/bench_resume.py --work /tmp/bres [--devices 2] [--unet customized_unet] [--latent 96] [--steps 24]
    python bench/bench_resume.py --work /tmp/bres --tiny      # CPU processes, tiny UNet, fp32: the same flow in CI size

1. a random latent dataset (6 videos x 60 frames) and an untrained SyncNet expert (its loss is part of the state);
2. A: unet_wav2lip_lightning.py for `steps` steps on `devices` processes, checkpoints every steps/4 steps
   (an epoch is 16 batches per process: the second checkpoint falls mid-epoch);
3. B: the same command, SIGKILLed (its whole process group) once last.ckpt holds the second checkpoint;
4. C: B resumed from last.ckpt on `devices` processes, to `steps`; D: on 1 process (DeepSpeed's universal
   checkpoint conversion first);
5. a table: wall seconds (process start, model build, checkpoints and, for D, the conversion included), the
   largest difference of a step's logged train/recon_loss from A's at the same step, and the relative L2
   distance of the final fp32 weights from A's. C against A is the exactness of a resume: 0 on CPU in fp32
   (tests/test_resume.py); on GPUs the same batches in bf16, off by what nondeterministic kernels give.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lipsync import model_zoo, timing  # noqa: E402
from lipsync.data.filelists import make_filelists  # noqa: E402
from lipsync.data.folder import write_video_folder  # noqa: E402

SAMPLES_PER_EPOCH = 64  # with 2 processes x batch 2: 16 batches per process and epoch


def build(work: Path, latent: int, audio_dim: int) -> None:
    """work/latents (6 videos x 60 frames), work/filelists_bench, work/expert.safetensors."""
    from safetensors.torch import save_file

    from lipsync.training.options import OptimConfig
    from lipsync.training.syncnet_module import SyncNetModule
    from models.syncnet import SyncNetConfig

    rng = np.random.default_rng(0)
    frames = 60
    for v in range(6):
        full = torch.from_numpy(rng.standard_normal((frames, 4, latent, latent), dtype=np.float32))
        write_video_folder(work / "latents" / f"spk{v}" / "clip0", full, full * 0.5, np.arange(frames),
                           {"image_size": latent * 8, "codec": "bench/random"},
                           features=torch.randn(timing.num_feature_frames(frames * 640), audio_dim),
                           model_id="bench/random")
    make_filelists(work / "latents", work / "filelists_bench", val_groups=1, test_groups=1, seed=0)
    config = SyncNetConfig(T=5, latent_channels=4, audio_dim=audio_dim, audio_frames=timing.syncnet_window_length(5))
    card = {"kind": "syncnet", "syncnet": config.to_dict(), "audio_encoder": "bench/random",
            "audio_hidden_size": audio_dim, "codec": "bench/random", "image_size": latent * 8, "latent_size": latent}
    torch.manual_seed(0)
    module = SyncNetModule(config, card, OptimConfig(lr=1e-4, weight_decay=0.0, warmup_steps=0, schedule="constant"))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(work / "expert.safetensors"))


def train_command(work: Path, unet: str, steps: int, devices: int, out: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "unet_wav2lip_lightning.py"), "--data_root", str(work / "latents"),
            "--dataset_name", "bench", "--syncnet", str(work / "expert.safetensors"), "--unet_ckpt", unet,
            "--batch_size", "2", "--accumulate_grad_batches", "1", "--num_workers", "2", "--val_samples", "4",
            "--train_samples_per_epoch", str(SAMPLES_PER_EPOCH), "--max_steps", str(steps),
            "--val_check_interval", str(steps // 4), "--warmup_steps", "2", "--log_every_n_steps", "1",
            "--save_top_k", "0", "--devices", str(devices), "--output_dir", str(work / out), *extra]


def last_ckpt(work: Path, out: str) -> Path:
    return work / out / "generator" / "version_0" / "checkpoints" / "last.ckpt"


def saved_step(ckpt: Path) -> int | None:
    """Global step of a ZeRO checkpoint folder (None while there is none; it is replaced whole, never torn)."""
    states = ckpt / "checkpoint" / "mp_rank_00_model_states.pt"
    try:
        return int(torch.load(states, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except (FileNotFoundError, RuntimeError, KeyError):
        return None


def run(command: list[str], cwd: Path, kill_once_saved: tuple[Path, int] | None = None) -> tuple[int, float]:
    """(return code, wall seconds); with kill_once_saved=(ckpt, step) the run's process group is SIGKILLed as soon
    as `ckpt` holds that step."""
    start = time.perf_counter()
    with open(cwd / "logs.txt", "a") as log:
        proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=log, start_new_session=True)
        while proc.poll() is None:
            if kill_once_saved and saved_step(kill_once_saved[0]) == kill_once_saved[1]:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
    return proc.returncode, time.perf_counter() - start


def logged_losses(run_folder: Path, tag: str = "train/recon_loss") -> dict[int, float]:
    """{step: value} of a scalar in a run folder's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_folder), size_guidance={"scalars": 0})
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)} if tag in events.Tags()["scalars"] else {}


def largest_difference(losses: dict[int, float], reference: dict[int, float]) -> float:
    """max |loss - reference| over the steps both logged (nan when they share none)."""
    steps = sorted(set(losses) & set(reference))
    return max((abs(losses[s] - reference[s]) for s in steps), default=float("nan"))


def relative_l2(state: dict, reference: dict) -> float:
    """||state - reference|| / ||reference|| over the reference's floating tensors."""
    keys = [k for k, v in reference.items() if v.is_floating_point()]
    diff = sum(float((state[k].detach().double() - reference[k].detach().double()).square().sum()) for k in keys)
    norm = sum(float(reference[k].detach().double().square().sum()) for k in keys)
    return (diff / norm) ** 0.5


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--unet", default=str(ROOT / "customized_unet"), help="generator init (config folder)")
    p.add_argument("--latent", type=int, default=96)
    p.add_argument("--steps", type=int, default=24, help="a multiple of 4")
    p.add_argument("--tiny", action="store_true", help="tiny UNet, 16x16 latents, 32-d audio, fp32 (CPU)")
    args = p.parse_args(argv)
    from lipsync.checkpoint import read_checkpoint

    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    audio_dim, extra = 768, []
    if args.tiny:
        args.latent, audio_dim, extra = 16, 32, ["--precision", "32-true"]
        args.unet = str(model_zoo.save_unet(work / "tiny_unet", model_zoo.tiny_unet_config(), with_weights=False))
    build(work, args.latent, audio_dim)
    kill_at = 2 * (args.steps // 4)
    rows = []
    for name, out, devices, resume, kill in (("A uninterrupted", "a", args.devices, None, None),
                                             ("B killed", "b", args.devices, None, kill_at),
                                             ("C resumed, same processes", "c", args.devices, "b", None),
                                             ("D resumed, 1 process", "d", 1, "b", None)):
        command = train_command(work, args.unet, args.steps, devices, out, *extra)
        if resume:
            command += ["--ckpt", str(last_ckpt(work, resume))]
        code, seconds = run(command, work, (last_ckpt(work, out), kill) if kill else None)
        rows.append((name, devices, code, seconds, out))
        print(f"{name}: rc {code}, {seconds:.1f} s", flush=True)

    reference_losses = logged_losses(last_ckpt(work, "a").parents[1])
    reference = read_checkpoint(last_ckpt(work, "a")).state_dict
    print(f"\n{'run':<28}{'procs':>6}{'rc':>5}{'wall s':>9}{'saved step':>12}{'max |dloss|':>13}{'rel L2 dw':>11}")
    for name, devices, code, seconds, out in rows:
        ckpt = last_ckpt(work, out)
        step = saved_step(ckpt)
        loss = largest_difference(logged_losses(ckpt.parents[1]), reference_losses) if out != "a" else 0.0
        weights = relative_l2(read_checkpoint(ckpt).state_dict, reference) if step == args.steps else float("nan")
        print(f"{name:<28}{devices:>6}{code:>5}{seconds:>9.1f}{step!s:>12}{loss:>13.2e}{weights:>11.2e}")


if __name__ == "__main__":
    main()
