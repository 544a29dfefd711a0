"""Evaluation speed: videos per minute for each metric of evaluate.py, next to the lip-sync inference it scores.

    python bench/bench_evaluate.py --work /tmp/bench_eval [--size 512] [--seconds 10] [--videos 3] \
        [--weights_dir DIR]          # real weights if you have them; random ones of the same networks otherwise
    python bench/bench_evaluate.py --work /tmp/bench_eval_cpu --tiny --size 96 --seconds 1.2 --videos 1  # CPU smoke

Synthetic talking faces (lipsync.demo.synthetic) rendered at --size px, written as H.264 + AAC. Real-size networks
with random weights unless --weights_dir holds the published files: SyncNet v2, the FID InceptionV3, an
IResNet-50 ArcFace (the architecture of insightface's w600k_r50) exported to ONNX, this project's "u" expert with
the SD VAE and Wav2Vec2-base, and for inference the 80M customized_unet generator at 256 px crops (--tiny: the
test suite's tiny models). Each metric is timed alone over all videos after one warm-up video (cuDNN autotuning,
onnxruntime session start), models loaded once, then all of them in one pass (evaluate.py's way); inference =
lipsync.inference.lip_sync of the same videos with their own audio (the reconstruction protocol), models loaded
once, one warm-up. Prints a table: seconds per video, videos per minute, and the time as a share of the inference
time (evaluation must not exceed it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lipsync import model_zoo, timing  # noqa: E402
from lipsync.checkpoint import encode_model_card  # noqa: E402
from lipsync.demo import synthetic  # noqa: E402
from lipsync.evaluation import runner  # noqa: E402
from lipsync.video_writer import write_video  # noqa: E402

METRIC_ORDER = ("lse", "expert", "fid", "quality", "csim")


def make_videos(folder: Path, count: int, seconds: float, size: int) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    videos = {}
    for k in range(count):
        path = folder / f"clip{k:02d}.mp4"
        if not path.is_file():
            rng = np.random.default_rng([k, 77])
            identity = synthetic.random_identity(rng)
            audio, opening = synthetic.synth_speech(seconds, rng)
            frames = (synthetic.render_frame(identity, o, i / timing.VIDEO_FPS, size) for i, o in enumerate(opening))
            write_video(path, frames, timing.VIDEO_FPS, audio=audio)
        videos[path.stem] = path
    return videos


def iresnet50_onnx(path: Path, tiny: bool) -> None:
    """insightface's IResNet-50 layout (BN-conv-BN-PReLU-conv-BN blocks, [3, 4, 14, 3], 64..512 wide, 512-d out),
    random weights, as ONNX with w600k_r50's input name and shape."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(cout), nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1,
                                                                                      bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return self.body(x) + self.skip(x)

    layers, widths = ([1, 1, 1, 1], (8, 16, 16, 32)) if tiny else ([3, 4, 14, 3], (64, 128, 256, 512))
    modules, cin = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)], 64
    for count, width in zip(layers, widths):
        for i in range(count):
            modules.append(Block(cin, width, 2 if i == 0 else 1))
            cin = width
    model = nn.Sequential(*modules, nn.BatchNorm2d(cin), nn.Flatten(), nn.Linear(cin * 7 * 7, 512),
                          nn.BatchNorm1d(512)).eval()
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), dynamo=False, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}})


def random_weights(folder: Path, tiny: bool) -> Path:
    """The published files' networks with random weights (BatchNorm statistics left at their defaults: timing only)."""
    from lipsync.evaluation import fid
    from models.syncnet_v2 import SyncNetV2

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(SyncNetV2().state_dict(), folder / "syncnet_v2.model")
    cls = fid.inception_class()
    from unittest import mock

    with mock.patch.object(sys.modules[cls.__module__], "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None):
        torch.save(cls("inception-v3-compat", ["2048"]).state_dict(), folder / fid.WEIGHTS["inception"].name)
    iresnet50_onnx(folder / "w600k_r50.onnx", tiny)
    return folder


def model_files(work: Path, tiny: bool) -> tuple[Path, Path]:
    """(generator checkpoint, expert checkpoint) with random weights, sharing one codec and audio encoder."""
    from models.syncnet import SyncNet, SyncNetConfig
    from models.unet import AUDIO_POSITIONS, build_unet

    vae, w2v = work / "vae", work / "wav2vec2"
    if tiny:
        vae_config, w2v_config, image_size = model_zoo.tiny_vae_config(), model_zoo.tiny_wav2vec2_config(), 64
        unet_config, factor, hidden = model_zoo.tiny_unet_config(), 4, 32
    else:
        vae_config, w2v_config, image_size = model_zoo.vae_config(), model_zoo.wav2vec2_config(), 256
        unet_config = json.loads((ROOT / "customized_unet" / "config.json").read_text())
        unet_config["sample_size"], factor, hidden = image_size // 8, 8, 768
    if not vae.is_dir():
        model_zoo.save_vae(vae, vae_config)
        model_zoo.save_wav2vec2(w2v, w2v_config)
    common = {"audio_encoder": str(w2v), "audio_hidden_size": hidden, "codec": str(vae), "image_size": image_size,
              "latent_size": image_size // factor}
    unet = build_unet(unet_config)
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card({"kind": "generator", "unet_config": unet_config, "latent_channels": 4,
                                             "T": 5, "fps": 25, "audio_positions": AUDIO_POSITIONS, **common})
    generator = work / "generator.ckpt"
    torch.save({"state_dict": state}, generator)
    config = SyncNetConfig(variant="u", latent_channels=4, audio_dim=hidden)
    state = {f"syncnet.{k}": v for k, v in SyncNet(config).state_dict().items()}
    state["model_card"] = encode_model_card({"kind": "syncnet", "syncnet": config.to_dict(), **common})
    expert = work / "expert.ckpt"
    torch.save({"state_dict": state}, expert)
    return generator, expert


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_inference(generator: Path, videos: dict[str, Path], device: str) -> float:
    """Seconds per video of lip_sync (reconstruction: each video with its own audio), after one warm-up."""
    from lipsync.inference import lip_sync, load_models

    models = load_models(generator, device=device)
    out = Path(next(iter(videos.values()))).parent.parent / "inference_out"
    first = next(iter(videos.values()))
    lip_sync(models, first, first, out / "warmup.mp4", progress=False)
    _sync(device)
    start = time.perf_counter()
    for name, path in videos.items():
        lip_sync(models, path, path, out / f"{name}.mp4", progress=False)
    _sync(device)
    return (time.perf_counter() - start) / len(videos)


def time_metrics(metrics: tuple[str, ...], options: runner.EvalOptions, videos: dict[str, Path],
                 stages: dict | None = None) -> float:
    """Seconds per video of these metrics in one pass, as evaluate.py scores a video (models loaded once, one
    warm-up video, no cache). stages: filled with the seconds per video of each stage (decode, detect, a metric;
    the device synchronised at stage boundaries)."""
    from lipsync.stopwatch import Stopwatch

    options = runner.EvalOptions(**{**options.__dict__, "metrics": metrics, "cache": False})
    scorers = runner.Scorers.load(options, references=True)
    first = next(iter(videos.values()))
    runner.score_video(scorers, first, first, None)
    _sync(scorers.device)
    scorers.stopwatch = Stopwatch(sync=lambda: _sync(scorers.device))
    start = time.perf_counter()
    for path in videos.values():
        runner.score_video(scorers, path, path, None)  # reconstruction: the clip against itself
    _sync(scorers.device)
    if stages is not None:
        stages.update({name: seconds / len(videos) for name, seconds in scorers.stopwatch.seconds.items()})
    return (time.perf_counter() - start) / len(videos)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--size", type=int, default=512, help="video side (px)")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--videos", type=int, default=3)
    p.add_argument("--weights_dir", help="the published weight files (default: random ones of the same networks)")
    p.add_argument("--metrics", nargs="+", default=list(METRIC_ORDER), choices=METRIC_ORDER)
    p.add_argument("--fid_stride", type=int, default=1, help="FID features of every k-th frame (evaluate.py's)")
    p.add_argument("--tiny", action="store_true", help="tiny models and ArcFace: the CPU smoke run")
    p.add_argument("--device", default="auto")
    p.add_argument("--one_pass_only", action="store_true", help="skip the timings of each metric alone")
    args = p.parse_args(argv)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    print(f"device: {torch.cuda.get_device_name() if device.startswith('cuda') else 'cpu'}", flush=True)
    videos = make_videos(work / f"videos_{args.size}", args.videos, args.seconds, args.size)
    generator, expert = model_files(work / ("models_tiny" if args.tiny else "models"), args.tiny)
    weights = Path(args.weights_dir) if args.weights_dir else random_weights(work / "weights", args.tiny)
    options = runner.EvalOptions(weights_dir=str(weights), weights_check="sha256" if args.weights_dir else
                                 "architecture", expert=str(expert), min_track=10, min_face_size=20.0, device=device,
                                 fid_stride=args.fid_stride)
    frames = int(round(args.seconds * timing.VIDEO_FPS))
    results = {"inference": time_inference(generator, videos, device)}
    print(f"inference: {results['inference']:.2f} s per video", flush=True)
    for metric in [] if args.one_pass_only else args.metrics:
        results[metric] = time_metrics((metric,), options, videos)
        print(f"{metric}: {results[metric]:.2f} s per video", flush=True)
    stages: dict[str, float] = {}
    results["all, one pass"] = time_metrics(tuple(args.metrics), options, videos, stages)
    print(f"all, one pass: {results['all, one pass']:.2f} s per video; its stages, s per video: "
          + ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items()), flush=True)
    print(f"\n{args.videos} videos, {args.size} px, {frames} frames each, {device}"
          f"{'' if args.weights_dir else ', random weights'}{', tiny models' if args.tiny else ''}")
    print("(each metric timed alone, decoding and face detection included; 'all, one pass': every metric as "
          "evaluate.py scores a video, each video decoded once)")
    print(f"{'':<14}{'s / video':>10}{'videos / min':>14}{'x inference':>13}")
    for name, seconds in results.items():
        print(f"{name:<14}{seconds:>10.2f}{60 / seconds:>14.1f}{seconds / results['inference']:>13.2f}")
    return results


if __name__ == "__main__":
    main()
