"""The SD VAE alone on the GPU: encode / decode images per second per recipe, and where the time goes.

    python bench/bench_vae.py [--sizes 768 256] [--batch 8] [--recipes eager_bf16 cl_bf16 compile_bf16]

Random weights with sd-vae-ft-mse's published config (what lipsync.model_zoo.vae_config builds). The VAE is
most of the work of preprocessing (two encodes per frame) and of inference at 768 px (encode + decode), so
each recipe is checked against the plain fp32 result (max abs error of the decoded image in [-1, 1], which
must stay within bf16 tolerance) and timed after warm-up. --profile prints the top CUDA kernels of one
decode of each recipe at the first size. Prints one table row per (recipe, size) last.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo  # noqa: E402
from lipsync.codec_upsample import use_subpixel_upsampling  # noqa: E402
from lipsync.latent_codec import LatentCodec  # noqa: E402

RECIPES = ("fp32", "eager_bf16", "cl_bf16", "compile_bf16", "compile_cl_bf16", "subpixel_bf16", "subpixel_cl_bf16",
           "compile_subpixel_bf16", "compile_subpixel_cl_bf16", "codec_bf16", "codec_recipe_bf16", "codec_compile_bf16")
# codec_*: what lipsync.latent_codec.LatentCodec runs: eager (sub-pixel upsampling), eager with the compiled
# recipe's layout and attention (LatentCodec.use_compiled_recipe), and LatentCodec.compile()


def build(recipe: str, state: dict):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(model_zoo.vae_config())
    vae.load_state_dict(state)
    dtype = torch.float32 if recipe == "fp32" else torch.bfloat16
    vae = vae.to("cuda", dtype).eval().requires_grad_(False)
    if recipe.startswith("codec"):
        codec = LatentCodec(vae)
        if recipe == "codec_recipe_bf16":
            codec.use_compiled_recipe()
        elif recipe == "codec_compile_bf16":
            codec.compile()
        return codec.vae, dtype, False  # a channels_last decoder's post_quant_conv turns NCHW latents NHWC
    if "subpixel" in recipe:  # the decoder's upsamplers computed at the low resolution (latent_codec)
        use_subpixel_upsampling(vae.decoder)
    channels_last = "cl" in recipe
    if channels_last:
        vae = vae.to(memory_format=torch.channels_last)
    if recipe.startswith("compile"):
        vae.encoder = torch.compile(vae.encoder)
        vae.decoder = torch.compile(vae.decoder)
    return vae, dtype, channels_last


def timed(fn, repeats: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="*", type=int, default=[768, 256])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--recipes", nargs="*", default=list(RECIPES[1:]), choices=RECIPES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    state = AutoencoderKL.from_config(model_zoo.vae_config()).state_dict()
    reference = {}  # size -> (images, fp32 decoded) on the GPU
    rows = []
    for size in args.sizes:
        images = torch.rand(args.batch, 3, size, size, device="cuda") * 2 - 1
        fp32, _, _ = build("fp32", state)
        with torch.no_grad():
            reference[size] = fp32.decode(fp32.encode(images[:2]).latent_dist.mean).sample.float()
        del fp32
        torch.cuda.empty_cache()
        for recipe in args.recipes:
            vae, dtype, channels_last = build(recipe, state)
            x = images.to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                start = time.perf_counter()
                latents = vae.encode(x).latent_dist.mean
                decoded = vae.decode(latents).sample
                torch.cuda.synchronize()
                first = time.perf_counter() - start  # includes compilation for the compiled recipes
                vae.encode(x), vae.decode(latents)  # second warm-up (cuDNN autotune done, graphs cached)
                check = vae.decode(vae.encode(x[:2]).latent_dist.mean).sample.float()
                error = (check - reference[size]).abs().max().item()
                encode = timed(lambda: vae.encode(x).latent_dist.mean, args.repeats)
                decode = timed(lambda: vae.decode(latents).sample, args.repeats)
                if args.profile and size == args.sizes[0]:
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        vae.decode(latents)
                        torch.cuda.synchronize()
                    print(f"--- decode {size} px x{args.batch}, {recipe}: top CUDA kernels")
                    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
            del decoded
            rows.append((recipe, size, args.batch, args.batch / encode, args.batch / decode, first, error,
                         torch.cuda.max_memory_allocated() / 2 ** 30))
            print(f"bench_vae: {recipe} {size}px encode {args.batch / encode:.1f} img/s "
                  f"decode {args.batch / decode:.1f} img/s first call {first:.1f} s max|err| vs fp32 {error:.3f}",
                  flush=True)
            vae = None  # free it before the next recipe is built
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    print("| recipe | px | batch | encode img/s | decode img/s | first call s | max abs err vs fp32 | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe, size, batch, enc, dec, first, error, peak in rows:
        print(f"| {recipe} | {size} | {batch} | {enc:.1f} | {dec:.1f} | {first:.1f} | {error:.3f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
