"""End-to-end inference speed on the GPU: a real clip driven by a real speech track, per-stage breakdown.

    python bench/bench_inference.py --clip CLIP.mp4 --audio SPEECH.wav [LONGER.wav] --work /tmp/bench_inf \
        [--sizes 768 256] [--modes eager graph compile compile+graph] [--ref_frame 0] [--box] \
        [--presets veryfast superfast]

Real-size architectures with random weights: the SD VAE (sd-vae-ft-mse's config), Wav2Vec2-base (default
config), customized_unet/ (80M). A generator checkpoint with its model card is written for each crop size, the
models are loaded once (as a long-running service would), one warm-up run lets cuDNN autotune (and records the
CUDA graph, or compiles, and collects the first 16 output frames), then the timed run goes through
lipsync.inference.lip_sync as unet_inference.py does. Prints frames/s end to end (model loading excluded, audio
encoding and both video passes included), an output check (the warm-up's first 16 output frames against the
first mode's), each step's wall time and the per-stage table last.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo  # noqa: E402
from lipsync.checkpoint import encode_model_card  # noqa: E402
from lipsync.inference import STAGES, lip_sync, load_models  # noqa: E402
from lipsync.video_writer import X264_PRESETS  # noqa: E402
from models.unet import AUDIO_POSITIONS, build_unet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = {"eager": {}, "compile": {"compile": True}, "graph": {"cuda_graph": True},
         "compile+graph": {"compile": True, "cuda_graph": True}}
CHECK_FRAMES = 16  # output frames compared with the first mode's


def first_frame_box(clip) -> tuple[int, int, int, int]:
    """The detector's box on the clip's first frame as --box wants it: top, bottom, left, right."""
    from lipsync.faces import FaceDetector
    from lipsync.video_io import iter_frames
    frames = iter_frames(clip)
    x1, y1, x2, y2 = FaceDetector().detect(next(frames)[None])[0]
    frames.close()
    return int(y1), int(y2), int(x1), int(x2)


def write_models(work: Path, image_size: int) -> Path:
    vae = work / "sd_vae"
    if not vae.is_dir():
        model_zoo.save_vae(vae, model_zoo.vae_config())
    w2v = work / "wav2vec2_base"
    if not w2v.is_dir():
        model_zoo.save_wav2vec2(w2v, model_zoo.wav2vec2_config())
    config = json.loads((ROOT / "customized_unet" / "config.json").read_text())
    config["sample_size"] = image_size // 8
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": str(w2v), "audio_hidden_size": 768,
            "codec": str(vae), "image_size": image_size, "latent_size": image_size // 8, "latent_channels": 4,
            "T": 5, "fps": 25, "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    path = work / f"generator_{image_size}.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True)
    p.add_argument("--audio", nargs="+", required=True, help="speech tracks, each timed with the same models")
    p.add_argument("--work", required=True)
    p.add_argument("--sizes", nargs="*", type=int, default=[768, 256])
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--modes", nargs="*", default=["eager", "compile"], choices=list(MODES),
                   help="eager; compile (torch.compile); graph (one CUDA graph per batch); compile+graph")
    p.add_argument("--box", action="store_true",
                   help="a fixed face box (detected once on the first frame) instead of detection on every frame, "
                        "as the reference's baseline was measured")
    p.add_argument("--ref_frame", type=int, default=None,
                   help="one fixed reference face (encoded once): one VAE encode per frame instead of two")
    p.add_argument("--presets", nargs="*", default=["veryfast"], choices=X264_PRESETS,
                   help="x264 presets of the output video to compare (lip_sync's --preset)")
    p.add_argument("--switch_interval", type=float, nargs="*", default=[None],
                   help="sys.setswitchinterval values (s) to compare: how long a thread may hold Python's GIL "
                        "before a waiting one gets it (default 0.005)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}", flush=True)
    results, first_outputs = {}, {}
    box = first_frame_box(args.clip) if args.box else None
    print(f"face box: {'fixed ' + str(box) if box else 'detected in every frame'}", flush=True)
    for size in args.sizes:
        checkpoint = write_models(work, size)
        for mode in args.modes:
            start = time.perf_counter()
            models = load_models(checkpoint, compile=MODES[mode].get("compile", False))
            for audio, preset, interval in itertools.product(args.audio, args.presets, args.switch_interval):
                default_interval = sys.getswitchinterval()
                if interval is not None:
                    sys.setswitchinterval(interval)
                options = dict(batch_size=args.batch_size, progress=False, ref_frame=args.ref_frame, box=box,
                               cuda_graph=MODES[mode].get("cuda_graph", False), preset=preset)
                outputs = []

                def keep(i, src, crop_box, before, after):
                    if i < CHECK_FRAMES:
                        outputs.append(after)

                # the warm-up run (+ compile time) collects the output check; the timed run has no callback
                lip_sync(models, args.clip, audio, work / f"warmup_{size}.mp4", on_frame=keep, **options)
                warm_s = time.perf_counter() - start
                summary = lip_sync(models, args.clip, audio, work / f"out_{size}.mp4", **options)
                summary["load_and_warmup_s"] = warm_s
                if (size, audio) not in first_outputs:  # Wav2Vec2 sees the whole track: compare the same audio
                    first_outputs[(size, audio)] = (mode, np.stack(outputs))
                ref_mode, ref = first_outputs[(size, audio)]
                diff = np.abs(np.stack(outputs).astype(np.int16) - ref)
                summary["check"] = (f"vs {ref_mode}: first {len(outputs)} frames max |diff| {diff.max()}, "
                                    f"mean {diff.mean():.3f}")
                sys.setswitchinterval(default_interval)
                label = mode + (f" {preset}" if len(args.presets) > 1 else "")
                label += f" si={interval:g}" if interval is not None else ""
                label += f" {summary['frames']}fr" if len(args.audio) > 1 else ""
                results[(size, label)] = summary
                print(json.dumps(summary), flush=True)
                start = time.perf_counter()
            del models
            torch.cuda.empty_cache()
    fixed = args.ref_frame is not None
    print(f"\nreference face: {f'source frame {args.ref_frame} (fixed)' if fixed else 'each frame'}")
    print("crop px  mode                     frames  seconds  end-to-end frames/s  (load + warm-up s)  output check")
    for (size, mode), s in results.items():
        print(f"{size:>7}  {mode:<24} {s['frames']:>6} {s['seconds']:>8.2f} {s['frames'] / s['seconds']:>20.1f}"
              f"  ({s['load_and_warmup_s']:>5.1f})  {s['check']}")
    print("\nsteps, wall seconds (lip_sync's summary['phases'])")
    for (size, mode), s in results.items():
        print(f"{size:>7}  {mode:<24}" + ", ".join(f"{name} {sec:.3f}" for name, sec in s["phases"].items()))
    print("\nstage frames/s (each stage's own busy time; the pipeline threads overlap)")
    print("crop px  mode                    " + " ".join(f"{name:>12}" for name in STAGES))
    for (size, mode), s in results.items():
        print(f"{size:>7}  {mode:<24}" + " ".join(f"{(s['stages'].get(name, {}).get('fps') or float('nan')):>12.1f}"
                                                 for name in STAGES))


if __name__ == "__main__":
    main()
