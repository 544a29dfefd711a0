"""The demo expert's training step on the CPU (BENCHMARKS.md, CPU).

    python bench/bench_demo_step.py [--steps 20]                 # each variant, live taps vs the full kernels
    python bench/bench_demo_step.py --omp [--steps 20]           # "u" under each OpenMP wait setting, idle and busy

Each row runs in a fresh interpreter (libgomp reads its environment once, when torch loads it): the SyncNet at the
demo's sizes (batch 64, 5 frames of 4x8x8 latents, lower half, 64-d audio features), forward + all-pairs loss +
backward + fused AdamW, mean ms per step after 5 warm-up steps. "full kernels" runs every conv as nn.Conv does
(models.syncnet.conv_over_live_taps bypassed), to show what the live taps buy.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.syncnet import FACE_STAGES  # noqa: E402

SETTINGS = {"libgomp default": {}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
STEP = """
import sys, time, torch
sys.path.insert(0, {root!r})
from models.syncnet import SyncNet, SyncNetConfig, all_pairs_sync_loss
torch.manual_seed(0)
from models import syncnet
if {full_kernels}:
    syncnet.conv_over_live_taps = lambda conv, x: conv(x)
net = SyncNet(SyncNetConfig(variant={variant!r}, T=5, latent_channels=4, audio_dim=64, audio_frames=10))
faces, audio, label = torch.randn(64, 5, 4, 8, 8), torch.randn(64, 10, 64), (torch.rand(64) > 0.5).float()
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
def step():
    loss = all_pairs_sync_loss(*net(faces, audio), label)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
for _ in range(5):
    step()
start = time.perf_counter()
for _ in range({steps}):
    step()
print((time.perf_counter() - start) / {steps} * 1000)
"""
BUSY = "import torch, time\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def step_ms(env: dict, steps: int, variant: str = "u", full_kernels: bool = False) -> float:
    code = STEP.format(root=str(ROOT), steps=steps, variant=variant, full_kernels=full_kernels)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--omp", action="store_true", help="the OpenMP wait settings instead of the variants")
    args = p.parse_args(argv)
    results = {}
    if not args.omp:
        for variant in FACE_STAGES:
            for full in (False, True):
                results[(variant, full)] = step_ms({}, args.steps, variant, full)
                path = "full kernels" if full else "live taps"
                print(f"{variant:<3} {path:<13} {results[(variant, full)]:7.1f} ms/step", flush=True)
        return results
    for load in ("idle", "beside a busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if load != "idle" else None
        try:
            time.sleep(1 if busy else 0)
            for name, env in SETTINGS.items():
                results[(load, name)] = step_ms(env, args.steps)
                print(f"{load:<22} {name:<24} {results[(load, name)]:7.1f} ms/step", flush=True)
        finally:
            if busy:
                busy.kill()
    return results


if __name__ == "__main__":
    main()
