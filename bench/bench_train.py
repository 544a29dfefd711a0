"""Training throughput on the GPU: the generator step (UNet fwd+bwd + frozen SyncNet loss + AdamW) for every UNet
size, and the SyncNet expert step, at 96x96 latents (768 px crops) and 32x32 (256 px). Random weights,
real-size architectures. Prints a table last.

    python bench/bench_train.py                      # the default sweep (about 7 min on one H100)
    python bench/bench_train.py --only customized_unet --sizes 96 --batches 2 16 32 --recipes autocast bf16_cl

The step is the one lipsync/training/generator_module.py runs (models.unet.generate on B*T folded frames, lower-half
weighted L1 on latents, the frozen expert's BCE sync loss), without Lightning's bookkeeping.
Recipes (how the step is run):
  autocast      fp32 weights + bf16 autocast (what Lightning's "bf16-mixed" gives under DDP; the reference's way)
  bf16          bf16 weights, as DeepSpeed's bf16 mode runs the module (fp32 master weights live in the
                optimizer there; here AdamW steps the bf16 weights directly: the optimizer is <2% of the step)
  bf16_cl       bf16 + channels_last memory format (cuDNN convolutions without NCHW<->NHWC transposes)
  bf16_cl_ckpt  bf16_cl + activation checkpointing of the UNet blocks (memory for large batches)
  bf16_cl_compile  bf16_cl + torch.compile of the UNet (fused norms / activations)
Window = T=5 frames; "frames/s" counts generated frames.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo  # noqa: E402
from models.syncnet import SyncNet, SyncNetConfig, sync_loss  # noqa: E402
from models.unet import build_unet, count_parameters, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
T = 5
PEAK_BF16 = 989e12  # H100 SXM dense bf16 datasheet rate (H200: same tensor cores)
RECIPES = {
    "autocast": dict(bf16=False, channels_last=False, ckpt=False, compile=False),
    "bf16": dict(bf16=True, channels_last=False, ckpt=False, compile=False),
    "bf16_cl": dict(bf16=True, channels_last=True, ckpt=False, compile=False),
    "bf16_cl_ckpt": dict(bf16=True, channels_last=True, ckpt=True, compile=False),
    "bf16_cl_compile": dict(bf16=True, channels_last=True, ckpt=False, compile=True),
}


def unet_configs():
    configs = {name: json.loads((ROOT / name / "config.json").read_text())
               for name in ("customized_unet_small", "customized_unet", "customized_unet_large")}
    configs["sd15_859M"] = model_zoo.sd15_unet_config()
    return configs


def make_batch(batch, latent, device, audio_dim=768):
    frames = batch * T
    masked = torch.randn(frames, 4, latent, latent, device=device)
    return dict(masked=masked, reference=torch.randn_like(masked), gt=torch.randn_like(masked),
                audio=torch.randn(frames, 10, audio_dim, device=device),
                sync_audio=torch.randn(batch, 2 * T, audio_dim, device=device))


def generator_step(unet, expert, opt, data, autocast: bool):
    """One optimizer step on a batch of windows (all tensors already on the device)."""
    batch = data["sync_audio"].shape[0]
    latent = data["masked"].shape[-1]
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = generate(unet, data["masked"], data["reference"], data["audio"]).float()
        weight = torch.ones(1, 1, latent, 1, device=out.device)
        weight[:, :, latent // 2:] = 2.0  # lower half weighted, as the module's default
        recon = (weight * (out - data["gt"]).abs()).mean()
        window = out.view(batch, T, 4, latent, latent)
        sync = sync_loss(expert.sync_probability(window, data["sync_audio"]), torch.ones(batch, device=out.device))
        loss = recon + 0.1 * sync
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(step, steps, warmup=3):
    """ms per step (mean over `steps` after `warmup`) and peak GiB."""
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1e3, torch.cuda.max_memory_allocated() / 2**30


def build(config, latent, recipe):
    unet = build_unet(dict(config, sample_size=latent)).cuda().train()
    if recipe["bf16"]:
        unet = unet.to(torch.bfloat16)
    if recipe["channels_last"]:
        unet = unet.to(memory_format=torch.channels_last)
    if recipe["ckpt"]:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=True)
    model = torch.compile(unet) if recipe["compile"] else unet
    return unet, model, opt


def flops_per_window(config, latent, expert):
    """Model FLOPs of one training step on ONE window (fwd + bwd), counted on the eager fp32 model."""
    unet = build_unet(dict(config, sample_size=latent)).cuda().train()
    opt = torch.optim.SGD(unet.parameters(), lr=0.0)
    counter = FlopCounterMode(display=False)
    with counter:
        generator_step(unet, expert, opt, make_batch(1, latent, "cuda"), autocast=False)
    del unet, opt
    torch.cuda.empty_cache()
    return counter.get_total_flops()


def run_generator(name, config, latent, batch, recipe_name, expert, flops_window, steps):
    recipe = RECIPES[recipe_name]
    row = dict(model=name, recipe=recipe_name, latent=latent, batch=batch, frames=batch * T)
    unet = model = opt = None
    try:
        unet, model, opt = build(config, latent, recipe)
        data = make_batch(batch, latent, "cuda")
        ms, peak = timed(lambda: generator_step(model, expert, opt, data, autocast=not recipe["bf16"]), steps)
        flops = flops_window * batch
        row.update(params_M=count_parameters(unet) / 1e6, ms=ms, frames_s=batch * T / ms * 1e3, peak_GiB=peak,
                   gib_per_frame=peak / (batch * T), tflops=flops / ms / 1e9, mfu=flops / (ms / 1e3) / PEAK_BF16)
    except torch.OutOfMemoryError:
        row["oom"] = True
    finally:
        unet = model = opt = None  # free the memory before the next run (the timing lambda held them)
        torch.cuda.empty_cache()
    return row


def run_syncnet(variant, latent, batch, steps):
    net = SyncNet(SyncNetConfig(variant)).cuda().train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    faces = torch.randn(batch, T, 4, latent, latent, device="cuda")
    audio = torch.randn(batch, 2 * T, 768, device="cuda")
    label = (torch.rand(batch, device="cuda") > 0.5).float()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sync_loss(net.sync_probability(faces, audio), label)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms, peak = timed(step, steps)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    return dict(model=f"syncnet_{variant}", recipe="autocast", params_M=count_parameters(net) / 1e6, latent=latent,
                batch=batch, frames=batch * T, ms=ms, frames_s=batch * T / ms * 1e3, windows_s=batch / ms * 1e3,
                peak_GiB=peak, tflops=flops / ms / 1e9, mfu=flops / (ms / 1e3) / PEAK_BF16)


def profile(config, latent, batch, recipe_name, expert, rows=15):
    """Where a step's time goes: top CUDA kernels by self time over 3 steps."""
    recipe = RECIPES[recipe_name]
    unet, model, opt = build(config, latent, recipe)
    data = make_batch(batch, latent, "cuda")
    for _ in range(3):
        generator_step(model, expert, opt, data, autocast=not recipe["bf16"])
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            generator_step(model, expert, opt, data, autocast=not recipe["bf16"])
        torch.cuda.synchronize()
    del unet, model, opt
    torch.cuda.empty_cache()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=70)


def print_table(rows):
    print("\nmodel                  params recipe           latent batch frames  ms/step  frames/s  peak GiB "
          "GiB/frame TFLOP/s   MFU")
    for r in rows:
        head = f"{r['model']:<22} {r.get('params_M', math.nan):>5.1f}M {r['recipe']:<16} {r['latent']:>6} " \
               f"{r['batch']:>5} {r['frames']:>6}"
        if r.get("oom"):
            print(f"{head}  OOM")
            continue
        print(f"{head} {r['ms']:>8.1f} {r['frames_s']:>9.1f} {r['peak_GiB']:>9.1f} "
              f"{r.get('gib_per_frame', math.nan):>9.3f} {r['tflops']:>7.1f} {r['mfu']:>5.1%}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", help="UNet names to run (default all)")
    p.add_argument("--sizes", nargs="*", type=int, default=[96, 32])
    p.add_argument("--batches", nargs="*", type=int, default=[2, 16, 32, 64], help="windows of T=5 frames")
    p.add_argument("--recipes", nargs="*", default=["bf16_cl"], choices=list(RECIPES))
    p.add_argument("--compare", action="store_true",
                   help="all recipes for customized_unet at 96x96, batches 2 and 16 (the reference's two points)")
    p.add_argument("--profile", default=None, choices=list(RECIPES), help="profile 80M, 96x96, batch 16")
    p.add_argument("--syncnet", action="store_true", help="also time the SyncNet experts (batch 256)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--json", help="write all rows here")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)

    configs = unet_configs()
    experts = {s: SyncNet(SyncNetConfig("u")).cuda().eval().requires_grad_(False) for s in args.sizes + [96]}
    rows = []

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    if args.compare:
        fw = flops_per_window(configs["customized_unet"], 96, experts[96])
        for recipe in RECIPES:
            for batch in (2, 16, 32):
                record(run_generator("customized_unet", configs["customized_unet"], 96, batch, recipe, experts[96],
                                     fw, args.steps))
    for name, config in configs.items():
        if args.only is not None and name not in args.only:
            continue
        for latent in args.sizes:
            fw = flops_per_window(config, latent, experts[latent])
            for recipe in args.recipes:
                for batch in args.batches:
                    row = run_generator(name, config, latent, batch, recipe, experts[latent], fw, args.steps)
                    record(row)
                    if row.get("oom"):
                        break
    if args.syncnet:
        for variant in ("u", "xl"):
            for latent in args.sizes:
                record(run_syncnet(variant, latent, 256, args.steps))
    if args.profile:
        print(profile(configs["customized_unet"], 96, 16, args.profile, experts[96]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print_table(rows)


if __name__ == "__main__":
    main()
