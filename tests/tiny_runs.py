"""What the training tests share: a tiny latent dataset on disk, an untrained expert checkpoint, the scripts'
command lines, and running a script as its own process (killed at a chosen point when asked).

The dataset: 4 random videos of 40 frames, 16x16 latents of 4 channels, 32-d audio features, the tiny codec;
filelists_lrs2/ in the working directory (train: 3 videos, val: 1).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lipsync.data.folder import write_video_folder
from lipsync.timing import syncnet_window_length
from lipsync.training.options import OptimConfig
from lipsync.training.syncnet_module import SyncNetModule
from models.syncnet import SyncNetConfig

REPO = Path(__file__).resolve().parents[1]
FRAMES, C, SIZE, DIM = 40, 4, 16, 32


def write_latent_dataset(root: Path, vae: str, audio_encoder: str = "tiny/wav2vec2") -> Path:
    """root/data/spk{0..3}/clip and root/filelists_lrs2/{train,val}.txt; returns root. `audio_encoder`: the id
    the features claim to come from (a real folder when a test loads the trained generator for inference)."""
    gen = torch.Generator().manual_seed(0)
    names = [f"spk{i}/clip" for i in range(4)]
    for name in names:
        full = torch.randn(FRAMES, C, SIZE, SIZE, generator=gen)
        masked = full.clone()
        masked[..., SIZE // 2:, :] = 0
        write_video_folder(root / "data" / name, full, masked, np.arange(FRAMES),
                           {"image_size": 4 * SIZE, "codec": vae},
                           features=torch.randn(2 * FRAMES - 1, DIM, generator=gen), model_id=audio_encoder)
    (root / "filelists_lrs2").mkdir(exist_ok=True)
    (root / "filelists_lrs2" / "train.txt").write_text("\n".join(names[:3]) + "\n")
    (root / "filelists_lrs2" / "val.txt").write_text(names[3] + "\n")
    return root


def save_expert(path: Path, vae: str, audio_encoder: str = "tiny/wav2vec2") -> Path:
    """An untrained SyncNet expert for the tiny dataset, as a safetensors state dict with its model card (the
    generator script takes any checkpoint kind; training one would cost the suite seconds)."""
    config = SyncNetConfig(variant="u", T=5, latent_channels=C, audio_dim=DIM, audio_frames=syncnet_window_length(5))
    card = {"kind": "syncnet", "syncnet": config.to_dict(), "audio_encoder": audio_encoder,
            "audio_hidden_size": DIM, "codec": vae, "image_size": 4 * SIZE, "latent_size": SIZE}
    torch.manual_seed(0)
    module = SyncNetModule(config, card, OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant"))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


def train_argv(root: Path, max_steps: int, *extra: str) -> list[str]:
    """A training script's arguments: batch 2, 8 samples per epoch (4 batches: checkpoints at step 3 fall mid-epoch),
    validation (and checkpoints) every 3 batches, fp32, every step logged."""
    return ["--data_root", str(root / "data"), "--dataset_name", "lrs2", "--batch_size", "2",
            "--num_workers", "0", "--train_samples_per_epoch", "8", "--val_samples", "2",
            "--max_steps", str(max_steps), "--val_check_interval", "3", "--warmup_steps", "1",
            "--accumulate_grad_batches", "1", "--precision", "32-true", "--log_every_n_steps", "1",
            "--output_dir", str(root / "runs"), *extra]


def run_script(script: str, argv: list[str], cwd: Path, kill_at_step: int | None = None,
               kill_in_save: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a training script (`unet_wav2lip_lightning`, ...) as its own Python process in `cwd`.

    kill_at_step: the process kills itself (SIGKILL) as the training batch of that global step starts.
    kill_in_save: the process kills itself in its k-th checkpoint write (1-based, counting every file torch.save
    writes for checkpoints), after writing the first half of that file's bytes: a kill mid-write."""
    driver = textwrap.dedent(f"""
        import io, os, signal, sys
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        from pytorch_lightning import Callback
        from lipsync.training import run
        import {script} as script

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        class KillAtStep(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == {kill_at_step!r}:
                    die()

        kill_in_save, saves, real_save = {kill_in_save!r}, [0], torch.save

        def save(obj, f, *args, **kwargs):
            saves[0] += 1
            if saves[0] != kill_in_save:
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            die()

        make_trainer = run.make_trainer

        def killing_trainer(*args, **kwargs):
            trainer = make_trainer(*args, **kwargs)
            trainer.callbacks.append(KillAtStep())
            torch.save = save  # only checkpoints are written from here on
            return trainer

        run.make_trainer = killing_trainer
        script.main(sys.argv[1:])
    """)
    return subprocess.run([sys.executable, "-c", driver, *argv], cwd=cwd, env=script_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_script(script: str, argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start `python <script>.py argv` as a user would (Lightning's launcher starts the other processes of a
    multi-process run by running that same command line again); `env`: more environment variables."""
    return subprocess.Popen([sys.executable, str(REPO / f"{script}.py"), *argv], cwd=cwd, env={**script_env(), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# set by Lightning in this process once a test trained in it: a child must pick its own (the port is taken)
DISTRIBUTED_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK",
                         "LOCAL_WORLD_SIZE", "GROUP_RANK", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def script_env() -> dict:
    """The environment a script runs in as its own process: offline, DeepSpeed on the CPU, the repository importable,
    nothing of a distributed run this test process may have set up."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_VARIABLES}
    return {**env, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
