"""The Python half of bench/gpu_speed.sh: its inputs (`prep`) and its final table (`table`).

    python bench/gpu_speed.py prep --work W [--clip FACE.mp4] [--tiny]   # writes W/prep.env for the shell
    python bench/gpu_speed.py table OUTDIR                              # reads OUTDIR/*.log, prints the table

prep writes, with random weights (the benchmark machines cannot download pretrained ones):
- W/train: a latent dataset (6 videos x 40 frames, 96x96 latents, 768-d features; bench/train_smoke.py's), its
  filelists_smoke/, and a SyncNet "u" expert checkpoint with its model card (written directly: no training run);
- W/infer: the SD VAE (sd-vae-ft-mse's config), Wav2Vec2-base and a generator checkpoint of customized_unet/ per
  crop size (768 and 256 px), each with its model card (bench/bench_inference.py's models);
- the face box of the clip's first frame (RetinaFace on the CPU), for --box: the reference is timed with a fixed
  box, so ours is too.
--tiny: the same files from the tiny test architectures (16x16 latents, 32-d features, 64 px crops), so the whole
script runs on a CPU in a few minutes (tests/test_bench.py).

table: one row per measurement of bench/gpu_speed.sh (ms per training step, seconds from process start to the
finished file, frames/s in steady state), "skipped" / "failed" where a piece did not run or finish, and the
ratio to the reference where both exist.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VIDEOS, FRAMES = 6, 40  # training dataset: 6 speakers x 40 frames (4 train, 1 val, 1 test)


def write_training_inputs(work: Path, latent: int, dim: int, codec: str, image_size: int) -> dict:
    """A random latent dataset, its filelists_smoke/ (in `work`: run the script from there) and an expert."""
    import numpy as np
    import torch

    from lipsync import timing
    from lipsync.checkpoint import encode_model_card
    from lipsync.data.filelists import make_filelists
    from lipsync.data.folder import write_video_folder
    from models.syncnet import SyncNet, SyncNetConfig

    rng = np.random.default_rng(0)
    root = work / "latents"
    for v in range(VIDEOS):
        full = torch.from_numpy(rng.standard_normal((FRAMES, 4, latent, latent), dtype=np.float32))
        write_video_folder(root / f"spk{v}" / "clip0", full, full * 0.5, np.arange(FRAMES),
                           {"image_size": image_size, "codec": codec},
                           features=torch.randn(timing.num_feature_frames(FRAMES * 640), dim), model_id="random/w2v")
    make_filelists(root, work / "filelists_smoke", val_groups=1, test_groups=1, seed=0)
    config = SyncNetConfig(variant="u", audio_dim=dim)
    torch.manual_seed(0)
    expert = SyncNet(config)
    card = {"kind": "syncnet", "syncnet": config.to_dict(), "audio_encoder": "random/w2v", "audio_hidden_size": dim,
            "codec": codec, "image_size": image_size, "latent_size": latent}
    state = {f"syncnet.{k}": v for k, v in expert.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    torch.save({"state_dict": state}, work / "syncnet.ckpt")
    return {"TRAIN_WORK": work, "TRAIN_DATA": root, "SYNCNET": work / "syncnet.ckpt"}


def write_generator(work: Path, config: dict, vae: Path, w2v: Path, image_size: int, latent: int) -> Path:
    """A generator checkpoint (Lightning layout: unet.* + model_card) with random weights."""
    import torch

    from lipsync.checkpoint import encode_model_card
    from models.unet import AUDIO_POSITIONS, build_unet

    config = dict(config, sample_size=latent)
    torch.manual_seed(0)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": str(w2v),
            "audio_hidden_size": config["cross_attention_dim"], "codec": str(vae), "image_size": image_size,
            "latent_size": latent, "latent_channels": 4, "T": 5, "fps": 25, "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    path = work / f"generator_{image_size}.ckpt"
    torch.save({"state_dict": state}, path)
    return path


def first_frame_box(clip) -> str:
    """RetinaFace's box on the clip's first frame, as --box wants it: 'top bottom left right'."""
    from lipsync.faces import FaceDetector
    from lipsync.video_io import iter_frames
    frames = iter_frames(clip)
    x1, y1, x2, y2 = FaceDetector().detect(next(frames)[None])[0]
    frames.close()
    return f"{int(y1)} {int(y2)} {int(x1)} {int(x2)}"


def prep(args) -> None:
    from lipsync import model_zoo

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    infer = work / "infer"
    infer.mkdir(exist_ok=True)
    if args.tiny:
        vae = model_zoo.save_vae(infer / "vae", model_zoo.tiny_vae_config())
        w2v = model_zoo.save_wav2vec2(infer / "w2v", model_zoo.tiny_wav2vec2_config())
        unet_config = model_zoo.tiny_unet_config()
        train_unet = model_zoo.save_unet(work / "train_unet", unet_config, with_weights=False)
        values = write_training_inputs(work / "train", 16, 32, str(vae), 64)
        sizes, factor = (64,), 4
    else:
        vae = model_zoo.save_vae(infer / "sd_vae", model_zoo.vae_config())
        w2v = model_zoo.save_wav2vec2(infer / "wav2vec2_base", model_zoo.wav2vec2_config())
        unet_config = json.loads((ROOT / "customized_unet" / "config.json").read_text())
        train_unet = ROOT / "customized_unet"
        values = write_training_inputs(work / "train", 96, 768, "random/vae", 768)
        sizes, factor = (768, 256), 8
    values["TRAIN_UNET"] = train_unet
    for size in sizes:
        values[f"CKPT_{size}"] = write_generator(infer, unet_config, vae, w2v, size, size // factor)
    values["SIZES"] = " ".join(map(str, sizes))
    if args.clip:
        values["BOX"] = first_frame_box(args.clip)
    text = "".join(f"{key}='{value}'\n" for key, value in values.items())
    (work / "prep.env").write_text(text)
    print(text, end="")


# ------------------------------------------------------------------------------------------------------ table
TRAIN_ROWS = (  # (log name, what)
    ("ref_train_{b}", "reference (DDP, fp16 autocast, optimizer step every 4th micro-batch)"),
    ("train_b{b}_fast", "this project, eager, ZeRO-2 with lipsync's step (default)"),
    ("train_b{b}_stock", "this project, eager, DeepSpeed's stock ZeRO-2 step (LIPSYNC_DEEPSPEED_STEP=stock)"),
    ("train_b{b}_compile", "this project, --compile (inductor)"),
    ("train_b{b}_graphs", "this project, --compile reduce-overhead (inductor + CUDA graphs), ZeRO-2"),
    ("train_b{b}_graphs_single", "this project, --strategy auto --compile reduce-overhead (one GPU, no ZeRO)"),
)
INFER_ROWS = (
    ("ref_infer", "reference, its defaults (fp32, batch 2)"),
    ("infer_default", "this project, default flags, no compile cache (a bare machine)"),
    ("infer_autotune", "the same with cuDNN autotuning (LIPSYNC_CUDNN_BENCHMARK=1)"),
    ("infer_compile_cold", "this project, --compile, empty compile cache (the first run on a machine)"),
    ("infer_auto_warm", "this project, default flags after that run (--compile auto, cache on disk)"),
)
STEADY_ROWS = (
    ("steady_768", "768 px, --compile (cache on disk), --ref_frame 0"),
    ("steady_768_autotune", "the same with cuDNN autotuning (LIPSYNC_CUDNN_BENCHMARK=1)"),
    ("steady_256_eager", "256 px, --compile off (CUDA graph of eager kernels), --ref_frame 0"),
    ("steady_256", "256 px, --compile, --ref_frame 0"),
)


def _read(out: Path, name: str) -> tuple[str | None, str]:
    """(log text or None, status): status 'ok', 'skipped', 'timed out' or 'failed (rc N)'."""
    log, rc = out / f"{name}.log", out / f"{name}.rc"
    if not log.is_file():
        return None, "skipped"
    code = int(rc.read_text().strip()) if rc.is_file() and rc.read_text().strip() else -1
    status = "ok" if code == 0 else "timed out" if code in (124, 137) else f"failed (rc {code})"
    return log.read_text(errors="replace"), status


def train_ms(text: str) -> float | None:
    """ms per step: the reference's REF_TRAIN median (its harness waits for the GPU at every step), or
    bench_train_step's mean over the timed steps with the GPU's work included (else its median)."""
    found = re.search(r"REF_TRAIN (\{.*\})", text)
    if found:
        return float(json.loads(found.group(1))["median_ms"])
    found = (re.search(r"step time, mean of steps \d+-\d+, GPU work included: ([\d.]+) ms", text)
             or re.search(r"step time, median of \d+ unprofiled steps: ([\d.]+) ms", text))
    return float(found.group(1)) if found else None


def train_detail(text: str) -> str:
    found = re.search(r"GPU work ([\d.]+) ms/step, GPU busy ([\d.]+) %, (\d+) GPU operations/step", text)
    if found:
        return f"GPU work {found.group(1)} ms, busy {found.group(2)} %, {found.group(3)} launches"
    found = re.search(r"REF_TRAIN (\{.*\})", text)
    if found:
        return f"peak {json.loads(found.group(1))['peak_alloc_gib']:.1f} GiB"
    found = re.search(r"peak GPU memory: ([\d.]+) GiB", text)
    return f"peak {found.group(1)} GiB" if found else ""


def summary_fields(text: str) -> dict:
    """From unet_inference.py's printed summary: frames, phases (wall s) and stage frames/s."""
    fields: dict = {}
    found = re.search(r"wrote .*?: (\d+) frames", text)
    if found:
        fields["frames"] = int(found.group(1))
    found = re.search(r"steps \(wall s\): (.*)", text)
    if found:
        fields["phases"] = {name: float(sec) for name, sec in
                            (part.rsplit(" ", 1) for part in found.group(1).split(", "))}
    fields["stages"] = {m.group(1): float(m.group(2)) for m in
                        re.finditer(r"^(\w+)\s+[\d.]+\s+\d+\s+([\d.]+)$", text, re.MULTILINE)}
    return fields


def wall_s(text: str) -> float | None:
    """Process start to finished file: the reference's REF_PROCESS_WALL_S, or the shell's PROCESS_WALL_S."""
    found = re.search(r"(?:REF_)?PROCESS_WALL_S ([\d.]+)", text)
    return float(found.group(1)) if found else None


def infer_detail(text: str) -> str:
    fields = summary_fields(text)
    phases = fields.get("phases")
    if not phases:
        found = re.search(r"REF_INFER (\{.*\})", text)
        return f"{json.loads(found.group(1))['frames']} frames" if found else ""
    wall = wall_s(text)
    start = wall - sum(phases.values()) if wall is not None else float("nan")
    parts = [f"interpreter + imports {start:.1f}"] + [f"{k} {v:.1f}" for k, v in phases.items() if v >= 0.05]
    compiled = ", compiled" if re.search(r"s on cuda\S* \(\w+, compiled\)", text) else ""
    return f"{fields.get('frames', '?')} frames{compiled}; s: " + ", ".join(parts)


def steady_fps(text: str) -> float | None:
    """Frames over the generate_and_write step (start-up, compilation and graph recording excluded)."""
    fields = summary_fields(text)
    seconds = fields.get("phases", {}).get("generate_and_write")
    return fields["frames"] / seconds if seconds and "frames" in fields else None


def steady_detail(text: str) -> str:
    stages = summary_fields(text).get("stages", {})
    keep = ("generate", "blend", "write", "video_decode", "crop")
    return ", ".join(f"{k} {stages[k]:.0f}" for k in keep if k in stages) + (" (stage frames/s)" if stages else "")


def table(out: Path) -> str:
    lines = [f"# gpu_speed.sh results ({out})", ""]
    meta = out / "machine.txt"
    if meta.is_file():
        lines += ["    " + line for line in meta.read_text().strip().splitlines()] + [""]
    lines += ["| training, 80M UNet, 96x96 latents, sync loss on | batch | ms/step | vs reference | notes |",
              "|---|---|---|---|---|"]
    for batch in (2, 16):
        reference = None
        for pattern, what in TRAIN_ROWS:
            name = pattern.format(b=batch)
            text, status = _read(out, name)
            ms = train_ms(text) if text else None
            if name.startswith("ref_"):
                reference = ms
            ratio = f"{reference / ms:.2f}x" if ms and reference and not name.startswith("ref_") else ""
            value = f"{ms:.1f}" if ms else status
            lines.append(f"| {what} | {batch} | {value} | {ratio} | {train_detail(text) if text else ''} |")
    lines += ["", "| inference, 768 px crops, 9.6 s clip (240 frames), fixed box | process start to file, s |"
              " reference / this | where the time went |", "|---|---|---|---|"]
    reference = None
    for name, what in INFER_ROWS:
        text, status = _read(out, name)
        seconds = wall_s(text) if text else None
        if name == "ref_infer":
            if text and "REF_INFER {" not in text:  # its own run failed: the wrapper's clock alone is no result
                seconds, status = None, "failed (no REF_INFER line)"
            reference = seconds
        ratio = f"{reference / seconds:.2f}x" if seconds and reference and name != "ref_infer" else ""
        value = f"{seconds:.1f}" if seconds and status == "ok" else status
        lines.append(f"| {what} | {value} | {ratio} | {infer_detail(text) if text else ''} |")
    lines += ["", "| steady state, 1,500 frames (60 s of speech), fixed box | frames/s over generate and write | "
              "stages |", "|---|---|---|"]
    for name, what in STEADY_ROWS:
        text, status = _read(out, name)
        fps = steady_fps(text) if text and status == "ok" else None
        lines.append(f"| {what} | {f'{fps:.1f}' if fps else status} | {steady_detail(text) if text else ''} |")
    walls = sorted(out.glob("*.wall"))
    if walls:
        lines += ["", "piece wall seconds: " + ", ".join(f"{p.stem} {float(p.read_text()):.0f}" for p in walls)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("prep", help="write the benchmark's inputs and W/prep.env")
    pr.add_argument("--work", required=True)
    pr.add_argument("--clip", default=None, help="face video whose first frame's box becomes BOX")
    pr.add_argument("--tiny", action="store_true", help="tiny architectures: a CPU smoke run")
    tb = sub.add_parser("table", help="the final table from OUTDIR's logs")
    tb.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "prep":
        prep(args)
    else:
        print(table(Path(args.out)))


if __name__ == "__main__":
    main()
