"""Every generator UNet folder trains a few steps through the REAL scripts on the GPU (DeepSpeed ZeRO-2, bf16).

    python bench/train_smoke.py --work /tmp/smoke [--steps 6] [--latent 96]

1. writes a small random latent dataset at 96x96 latents with 768-d audio features (dataset format of lipsync.data);
2. trains a SyncNet expert for a few steps (unet_syncnet_lightning.py);
3. makes `stable-diffusion-v1-5/` with `unet_loader.py --extract` from a local SD-1.5-shaped pipeline folder (random
   weights: the real ones cannot be downloaded here);
4. trains unet_wav2lip_lightning.py for `steps` steps with --unet_ckpt customized_unet_small/, customized_unet/,
   customized_unet_large/ and stable-diffusion-v1-5/ (default strategy deepspeed_stage_2, bf16-mixed);
5. merges one ZeRO checkpoint with the folder's own zero_to_fp32.py and loads it with lipsync.checkpoint.
Prints a table last (wall seconds per run include process start, model build and checkpoint save).
"""
from __future__ import annotations

import argparse
import glob
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

LOGS = None  # folder for each run's full output (--logs)


def run(cmd, cwd=ROOT, timeout=300, name="run"):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if LOGS:
        Path(LOGS).mkdir(parents=True, exist_ok=True)
        (Path(LOGS) / f"{name}.log").write_text(proc.stdout + proc.stderr)
    print(f"$ {' '.join(map(str, cmd))}\n  rc={proc.returncode} {seconds:.1f}s", flush=True)
    return proc.returncode, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--latent", type=int, default=96)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--logs", default=None, help="write each run's full output here")
    args = p.parse_args(argv)
    global LOGS
    LOGS = args.logs
    work = Path(args.work)
    root = work / "latents"
    rng = np.random.default_rng(0)
    for v in range(6):
        full = torch.from_numpy(rng.standard_normal((40, 4, args.latent, args.latent), dtype=np.float32))
        write_video_folder(root / f"spk{v}" / "clip0", full, full * 0.5, np.arange(40),
                           {"image_size": args.latent * 8, "codec": "random/vae"},
                           features=torch.randn(timing.num_feature_frames(40 * 640), 768), model_id="random/w2v")
    make_filelists(root, work / "filelists_smoke", val_groups=1, test_groups=1, seed=0)
    common = ["--data_root", str(root), "--dataset_name", "smoke", "--output_dir", str(work / "experiments"),
              "--max_steps", str(args.steps), "--val_samples", "4", "--train_samples_per_epoch", "64",
              "--num_workers", "2", "--log_every_n_steps", "1", "--save_top_k", "0"]
    rows = []
    rc, sec = run([sys.executable, str(ROOT / "unet_syncnet_lightning.py"), *common, "--batch_size", "8"], cwd=work,
                  name="syncnet")
    rows.append(("syncnet u", rc, sec))
    syncnet = sorted(glob.glob(str(work / "experiments/syncnet/version_*/checkpoints/last.ckpt")))
    # an SD-1.5-shaped pipeline folder (unet/ with 4 input channels), as unet_loader.py --extract reads a real one
    if args.only is None or "stable-diffusion-v1-5" in args.only:
        sd = dict(model_zoo.sd15_unet_config(), in_channels=4)
        model_zoo.save_unet(work / "sd15_pipe" / "unet", sd)
        rc, sec = run([sys.executable, str(ROOT / "unet_loader.py"), "--extract", "--pipe", str(work / "sd15_pipe"),
                       "--ckpt", str(work / "stable-diffusion-v1-5")], name="extract")
        rows.append(("unet_loader --extract (859M)", rc, sec))
    folders = {"customized_unet_small": ROOT / "customized_unet_small", "customized_unet": ROOT / "customized_unet",
               "customized_unet_large": ROOT / "customized_unet_large",
               "stable-diffusion-v1-5": work / "stable-diffusion-v1-5"}
    for name, folder in folders.items():
        if args.only is not None and name not in args.only:
            continue
        if not syncnet:
            rows.append((name, "no syncnet", 0.0))
            continue
        rc, sec = run([sys.executable, str(ROOT / "unet_wav2lip_lightning.py"), *common, "--syncnet", syncnet[-1],
                       "--unet_ckpt", str(folder), "--batch_size", "2", "--accumulate_grad_batches", "1",
                       "--sync_start_step", "2", "--val_check_interval", str(args.steps)], cwd=work, name=name)
        rows.append((f"generator {name}", rc, sec))
    zero = sorted(glob.glob(str(work / "experiments/generator/version_*/checkpoints/last.ckpt")))
    if zero:
        rc, sec = run([sys.executable, "zero_to_fp32.py", ".", "merged"], cwd=zero[0], name="merge")
        rows.append(("zero_to_fp32.py . merged", rc, sec))
        from lipsync.checkpoint import load_generator
        loaded = load_generator(Path(zero[0]) / "merged")
        direct = load_generator(zero[0])
        same = all(torch.equal(a, b) for a, b in zip(loaded.unet.state_dict().values(),
                                                       direct.unet.state_dict().values()))
        rows.append((f"load merged == load ZeRO folder: {same}", 0 if same else 1, 0.0))
    print("\nrun                                   rc   wall s")
    for name, rc, sec in rows:
        print(f"{name:<37} {rc!s:>3} {sec:>8.1f}")


if __name__ == "__main__":
    main()
