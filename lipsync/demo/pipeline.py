"""The whole workflow on synthetic talking faces, on a CPU, in minutes; numbers that show lip sync was learned.

    run_demo(output_root, profile="full" | "ci", seed=0) -> metrics

Stages (each writes under output_root; the training, preprocessing and inference stages are the project's own
scripts and functions, called exactly as the README's commands call them):
 1. data       raw/idNNN/clip00.mp4 (+ .json truth) from lipsync.demo.synthetic, and held-out driving speech
               data/driving/driveNN.wav (+ .npy true opening), synthesised from another seed stream
 2. codec      models/vae: a tiny AutoencoderKL fitted on faces of OTHER random people (demo-only stand-in for
               the SD VAE); models/wav2vec2: a tiny random Wav2Vec2, frozen, used exactly as a pretrained one
 3. preprocess video_preprocess.py (RetinaFace boxes, 32 px crops -> 8x8 latents), audio_preprocess.py, and
               filelists_synthetic/ (whole identities split train / val / test)
 4. syncnet    unet_syncnet_lightning.py (DeepSpeed ZeRO-2 on the CPU) -> experiments/syncnet
 5. generator  unet_wav2lip_lightning.py with a small UNet config -> experiments/generator
 6. merge      `python zero_to_fp32.py . merged` inside the generator's last ZeRO checkpoint folder
 7. inference  lipsync.inference.lip_sync: each held-out (test split) video driven by held-out speech
 8. evaluate   on the test split only (identities and speech never seen in training):
               sync_corr     Pearson r of the mouth opening measured in the OUTPUT video's pixels with the driving
                             speech's true opening (mean over test videos)
               baseline_corr the same for the input video unchanged (its mouth follows other speech)
               syncnet_acc   the expert's accuracy on fixed in-sync / off-sync test windows
               audio_gain    mouth-region latent L1 of the generator with shuffled audio / with the true audio
               sync_lag      the frame shift that best aligns the output's mouth with the driving speech (0)
               and results/demo.mp4 (input | output, driving audio), results/mouth_opening.png, metrics.json.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lipsync import model_zoo, timing
from lipsync.audio import write_wav
from lipsync.demo import synthetic
from lipsync.faces import crop_faces
from lipsync.stopwatch import Stopwatch
from lipsync.video_io import iter_frames, write_video

DATASET = "synthetic"  # filelists_synthetic/ inside output_root
DRIVING_STREAM = 7919  # seed stream of the held-out driving speech: default_rng([seed, DRIVING_STREAM, k])
VAE_STREAM = 7907  # seed stream of the codec's training faces: people who are in no clip


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and budgets of one demo run."""
    identities: int  # people rendered; whole people go to val / test
    val_identities: int
    test_identities: int
    clip_seconds: float
    frame_size: int  # rendered video side (px)
    image_size: int  # face crop side (px); the codec downsamples 4x
    vae_steps: int
    vae_pool: int  # rendered faces the codec is fitted on
    syncnet_steps: int
    syncnet_batch: int
    syncnet_lr: float
    generator_steps: int
    generator_batch: int  # windows of T=5 frames
    generator_lr: float
    eval_windows: int  # fixed held-out windows for syncnet_acc and audio_gain


PROFILES = {
    # Many short clips rather than a few long ones: the expert and the generator must generalise to faces they
    # never saw, and what varies between people (skin, lips, face size) is learned from the number of people.
    # Seed-0 measurements on the 2-core CPU (the expert trains on all face x audio pairs of a batch):
    # - expert held-out accuracy after 3000 steps: 160 people 0.89 (1500 steps: 0.89; with labelled pairs only
    #   0.80-0.81 after 1500, 0.82-0.89 after 3000), 320 people 0.91, 480 people 0.94; ~63 ms per step;
    # - generator audio_gain: 1.37 on the eight test people (sync_corr 0.78) while the UNet's cross-attention saw
    #   the audio window as an unordered set; with position codes on it (models.unet.audio_positions) 1.92 (sync_corr
    #   0.95) after 1400 steps, 1.80 after 1000 (the profile's: ~60 s less). Before the codes, wider UNets, more
    #   steps, other sync / lower-half weights and learning rates had all stayed at 1.34-1.48.
    "full": Profile(identities=480, val_identities=2, test_identities=8, clip_seconds=4.0, frame_size=128,
                    image_size=32, vae_steps=600, vae_pool=2048, syncnet_steps=3000, syncnet_batch=64,
                    syncnet_lr=1e-3, generator_steps=1000, generator_batch=8, generator_lr=2e-3, eval_windows=512),
    "ci": Profile(identities=80, val_identities=1, test_identities=2, clip_seconds=4.0, frame_size=128,
                  image_size=32, vae_steps=300, vae_pool=1024, syncnet_steps=400, syncnet_batch=64,
                  syncnet_lr=1e-3, generator_steps=400, generator_batch=8, generator_lr=2e-3, eval_windows=256),
}

# The tiny random speech encoder: more conv channels and a wider hidden state than model_zoo's "tiny" (16 / 32):
# random frozen features of that size predict the synthetic mouth opening better (linear fit r ~0.92 vs ~0.85).
WAV2VEC2_HIDDEN, WAV2VEC2_CONV = 64, 64
UNET_CHANNELS, UNET_HEADS = (64, 128), 4
# Wav2Lip's expert weight (0.03) rather than the script's default 0.1: at the demo's high learning rate, 0.1 made
# the generator diverge once the sync loss switched on in one of three runs (val sync loss 0.73 -> 2.8).
SYNC_WEIGHT = 0.03
# Crop recipe (detector box + pads, top bottom left right, in pixels of the 128 px frames): tighter than the
# default (0, 10, 0, 0) and centred lower, so the crop is nose-to-chin and the mouth fills ~3x more of it:
# the mouth is the only part of the lower half that the audio explains, so its share of the lower-half latents
# sets how strong the lip-sync signal is for both the expert and the generator's L1. Preprocessing, the codec's
# training crops and inference all use it.
PADS = (-15, -4, -3, -3)
# Processes for the CPU-bound data stages (rendering, preprocessing): on the 2-core machine, 2 render the 320
# clips in 31 s instead of 59, and preprocess them in 33 s instead of 49.
CPU_WORKERS = max(1, min(4, os.cpu_count() or 1))


def wav2vec2_config():
    config = model_zoo.tiny_wav2vec2_config(hidden_size=WAV2VEC2_HIDDEN)
    config.conv_dim = (WAV2VEC2_CONV,) * len(config.conv_dim)
    return config


# ------------------------------------------------------------------------------------------------- data

def make_driving_speech(folder: Path, count: int, seconds: float, seed: int) -> list[tuple[Path, np.ndarray]]:
    """Held-out speech: folder/driveKK.wav and its true per-frame opening (also saved as driveKK.npy)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        audio, opening = synthetic.synth_speech(seconds, np.random.default_rng([seed, DRIVING_STREAM, k]))
        write_wav(folder / f"drive{k:02d}.wav", audio)
        np.save(folder / f"drive{k:02d}.npy", opening)
        out.append((folder / f"drive{k:02d}.wav", opening))
    return out


# ------------------------------------------------------------------------------------------------ codec

def render_codec_faces(count: int, frame_size: int, image_size: int, seed: int, pads) -> np.ndarray:
    """Face crops uint8 [count, S, S, 3] of `count` random people (none of the dataset's) at random times and
    mouth openings (30 % closed, as in speech pauses), cropped by the preprocessing recipe (RetinaFace boxes,
    `pads`, squared), so the codec is fitted on the crops it will encode."""
    from lipsync.faces import FaceDetector, face_boxes

    rng = np.random.default_rng([seed, VAE_STREAM])
    frames = np.empty((count, frame_size, frame_size, 3), np.uint8)
    for i in range(count):
        opening = rng.uniform(0, 1) if rng.random() < 0.7 else 0.0
        frames[i] = synthetic.render_frame(synthetic.random_identity(rng), opening, rng.uniform(0, 10), frame_size)
    boxes, found = face_boxes(frames, FaceDetector(), batch_size=64, pads=pads, smooth=False)
    return crop_faces(frames[found], boxes[found], image_size)


def fit_codec(folder: Path, crops: np.ndarray, steps: int, seed: int, batch_size: int = 16, lr: float = 5e-3,
              kl_weight: float = 1e-4, mouth_weight: float = 3.0, log=print) -> float:
    """Fit a tiny AutoencoderKL (model_zoo.tiny_vae_config: 4x down, 4 channels) on crops [N, S, S, 3] and
    save_pretrained it into `folder`; returns the final held-out L1 (images in [-1, 1]).

    Loss: L1 of the reconstruction from the posterior MEAN (what LatentCodec encodes), rows of the lower face
    (0.55-0.95 of the crop: the pasted region) weighted `mouth_weight`, + kl_weight x KL per latent element.
    The scaling factor saved in the config is 1 / std of the latents, so the UNet sees ~unit-variance latents
    (how SD's 0.18215 was chosen). channels_last: ~3-5x faster convolutions of 16-32 channels on a CPU.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # [N, 3, S, S] in [-1, 1]
    held_out, x = x[:64], x[64:]
    vae = AutoencoderKL.from_config(model_zoo.tiny_vae_config()).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(vae.parameters(), lr)
    size = x.shape[-1]
    rows = torch.ones(1, 1, size, 1)
    rows[..., int(0.55 * size):int(0.95 * size), :] = mouth_weight
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        # 20-step warm-up, then cosine to 10 %
        factor = min(1.0, (step + 1) / 20) * (0.1 + 0.45 * (1 + np.cos(np.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        batch = x[torch.randint(len(x), (batch_size,), generator=generator)].contiguous(
            memory_format=torch.channels_last)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mean).sample
        l1 = ((recon - batch).abs() * rows).mean() / rows.mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = l1 + kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"demo: codec step {step}: L1 {l1.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in x[:512].split(64)])
        error = (vae.decode(vae.encode(held_out).latent_dist.mean).sample - held_out).abs().mean().item()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.to(memory_format=torch.contiguous_format).save_pretrained(folder)
    return error


# ----------------------------------------------------------------------------------------------- evaluate

def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def best_lag(measured: list[np.ndarray], true: list[np.ndarray], max_lag: int = 3) -> int:
    """The shift (frames) that best lines the measured openings up with the true ones: argmax over lag of the
    mean over clips of Pearson r(measured[t], true[t + lag]). 0 when output frame t shows the audio of frame t;
    an audio window one frame off between training and inference (the reference's bug) gives +-1."""
    def r(m, t, lag):
        m, t = (m[:len(m) - lag], t[lag:]) if lag >= 0 else (m[-lag:], t[:len(t) + lag])
        return pearson(m, t)
    lags = range(-max_lag, max_lag + 1)
    return max(lags, key=lambda lag: np.mean([r(m, t, lag) for m, t in zip(measured, true)]))


def measure_video(path, boxes: np.ndarray) -> np.ndarray:
    """Mouth opening measured in every frame of a video [N] (boxes [>= N, 4] of the face in each frame)."""
    frames = np.stack(list(iter_frames(path, target_fps=timing.VIDEO_FPS)))
    return synthetic.measure_mouth_opening(frames, boxes[:len(frames)])


@torch.no_grad()
def syncnet_accuracy(checkpoint, folders, windows: int, seed: int, batch_size: int = 64) -> float:
    """Accuracy (P(in sync) > 0.5) of the expert on `windows` fixed test windows, half in sync, half not."""
    from lipsync.checkpoint import load_syncnet
    from lipsync.data.datasets import SyncNetDataset
    from models.syncnet import sync_correct

    expert = load_syncnet(checkpoint).syncnet
    dataset = SyncNetDataset(folders, train=False, val_samples=windows, seed=seed)
    correct = 0
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        p = expert.sync_probability(batch["faces"], batch["audio"])
        correct += int(sync_correct(p, batch["label"]).sum())
    return correct / len(dataset)


@torch.no_grad()
def audio_gain(checkpoint, folders, windows: int, seed: int, batch_size: int = 32) -> float:
    """Mouth-region latent L1 of the generator with shuffled audio / with the true audio, on fixed test windows.

    Mouth region: the lower half's middle half of columns ([h/2, h) x [w/4, 3w/4) of the latent), where the
    mouth lies in every crop (faces are centred); the jaw line and the background at the sides, which the
    reference frame explains and the audio does not, are left out. Shuffled = each window gets the audio of
    the next window in the batch (another time or another video)."""
    from lipsync.checkpoint import load_generator
    from lipsync.data.datasets import GeneratorDataset
    from models.unet import generate

    unet = load_generator(checkpoint).unet.eval()
    dataset = GeneratorDataset(folders, train=False, val_samples=windows, seed=seed)
    errors = {"true": 0.0, "shuffled": 0.0}
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        gt = batch["gt"]  # [B, T, C, h, w]
        h, w = gt.shape[-2:]
        for name, audio in (("true", batch["audio"]), ("shuffled", batch["audio"].roll(1, dims=0))):
            generated = generate(unet, batch["masked"].flatten(0, 1), batch["reference"].flatten(0, 1),
                                 audio.flatten(0, 1)).view_as(gt)
            errors[name] += float((generated - gt)[..., h // 2:, w // 4:w - w // 4].abs().mean()) * len(gt)
    return errors["shuffled"] / errors["true"]


def write_side_by_side(path, input_video, output_video, audio_path, scale: int = 2) -> None:
    """input | output, each upscaled `scale`x (the clips are small), with the driving audio."""
    import cv2

    from lipsync.audio import load_audio

    def frames():
        for left, right in zip(iter_frames(input_video), iter_frames(output_video)):
            pair = np.concatenate([left, right], axis=1)
            yield cv2.resize(pair, (pair.shape[1] * scale, pair.shape[0] * scale), interpolation=cv2.INTER_CUBIC)

    write_video(path, frames(), timing.VIDEO_FPS, audio=load_audio(audio_path))


def plot_openings(path, clips: list[dict]) -> None:
    """One panel per test clip: the driving speech's true opening and the opening measured in the output and
    input videos, each mapped onto the true scale by a least-squares line (the measure's slope and offset
    depend on the face)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(clips), 1, figsize=(10, 2.2 * len(clips)), squeeze=False, sharex=True)
    for ax, clip in zip(axes[:, 0], clips):
        true = clip["true"]
        t = np.arange(len(true)) / timing.VIDEO_FPS
        ax.plot(t, true, color="black", lw=1.5, label="true (driving speech)")
        for key, colour in (("output", "tab:red"), ("input", "tab:blue")):
            measured = clip[key]
            fit = np.polyval(np.polyfit(measured, true, 1), measured)
            ax.plot(t, fit, color=colour, lw=1, alpha=0.8,
                    label=f"{key} video, measured (r={clip[key + '_corr']:.2f})")
        ax.set_ylabel(clip["name"])
        ax.legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds")
    fig.suptitle("mouth opening: held-out faces driven by held-out speech")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- run

MARKER = ".lipsync_demo"  # in output_root: this folder was made by the demo and may be cleared by it
OWN = ("data", "models", "experiments", "results", f"filelists_{DATASET}")


def _fresh_output_root(root: Path) -> None:
    """Every run starts clean (a rerun with another profile or seed must not train on the last run's videos),
    but the demo only ever deletes folders it made itself: a non-empty folder without its marker is an error."""
    from lipsync.errors import UserError

    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise UserError(f"--output_root {root} is not empty and was not made by the demo: choose a new folder")
        for name in OWN:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by demo.py; the next run clears data/ models/ experiments/ results/\n")


def _last_checkpoint(trainer) -> Path:
    return Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"


SCRIPTS = ("video_preprocess", "audio_preprocess", "unet_syncnet_lightning", "unet_wav2lip_lightning")


def run_demo(output_root, scripts: dict[str, Callable], profile: str = "full", seed: int = 0, log=print) -> dict:
    """The whole workflow into output_root (data/, models/, filelists_synthetic/, experiments/, results/);
    returns the metrics (and `seconds`, `stage_seconds`). scripts: the `main(argv)` of each of SCRIPTS (demo.py
    passes the top-level scripts' own), called exactly as their command lines would be."""
    from lipsync.data.filelists import make_filelists
    from lipsync.inference import lip_sync, load_models

    p = PROFILES[profile]
    root = Path(output_root).absolute()
    _fresh_output_root(root)
    raw, latents, models, results = root / "data" / "raw", root / "data" / "latents", root / "models", root / "results"
    experiments = root / "experiments"
    for folder in (raw, latents, models, results, experiments):
        folder.mkdir(parents=True, exist_ok=True)
    stopwatch = Stopwatch(log=lambda line: log(f"demo: {line}"))
    stage = stopwatch.stage

    with stage("data"):
        synthetic.make_dataset(raw, p.identities, 1, p.clip_seconds, seed, size=p.frame_size, workers=CPU_WORKERS)
        driving = make_driving_speech(root / "data" / "driving", p.test_identities, p.clip_seconds, seed)

    with stage("codec"):
        crops = render_codec_faces(p.vae_pool, p.frame_size, p.image_size, seed, PADS)
        error = fit_codec(models / "vae", crops, p.vae_steps, seed, log=log)
        log(f"demo: codec held-out L1 {error:.4f}")
        model_zoo.save_wav2vec2(models / "wav2vec2", wav2vec2_config(), seed=seed)

    with stage("preprocess"):
        scripts["video_preprocess"](["--data_root", str(raw), "--output_root", str(latents), "--codec", str(models / "vae"),
                               "--image_size", str(p.image_size), "--pads", *map(str, PADS), "--devices", "0",
                               "--batch_size", "64", "--num_workers", str(CPU_WORKERS)])
        scripts["audio_preprocess"](["--data_root", str(latents), "--audio_encoder", str(models / "wav2vec2"),
                               "--device", "cpu"])
        # what `make_filelists.py --data_root D --name synthetic --val V --test T` does, into output_root
        command = shlex.join(["python", "make_filelists.py", "--data_root", str(latents), "--name", DATASET,
                              "--val", str(p.val_identities), "--test", str(p.test_identities), "--seed", str(seed)])
        splits = make_filelists(latents, root / f"filelists_{DATASET}", p.val_identities,
                                            p.test_identities, seed, command=command)
        log("demo: filelists " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    common = ["--data_root", str(latents), "--dataset_name", DATASET, "--num_workers", "0", "--devices", "1",
              "--output_dir", str(experiments), "--seed", str(seed), "--save_top_k", "1", "--log_every_n_steps", "10",
              "--val_samples", "256"]
    with contextlib.chdir(root):  # the training scripts find filelists_<name>/ in the current directory
        with stage("syncnet"):
            trainer = scripts["unet_syncnet_lightning"]([
                *common, "--face_region", "lower", "--batch_size", str(p.syncnet_batch),
                "--lr", str(p.syncnet_lr), "--warmup_steps", "40", "--max_steps", str(p.syncnet_steps),
                "--train_samples_per_epoch", str(p.syncnet_steps * p.syncnet_batch),
                "--val_check_interval", str(p.syncnet_steps // 2)])
            syncnet_ckpt = _last_checkpoint(trainer)
        with stage("generator"):
            unet_folder = model_zoo.save_unet(
                models / "unet", model_zoo.unet_config(UNET_CHANNELS, heads=UNET_HEADS,
                                                       cross_attention_dim=WAV2VEC2_HIDDEN,
                                                       sample_size=p.image_size // 4),
                seed=seed, with_weights=False)
            trainer = scripts["unet_wav2lip_lightning"]([
                *common, "--syncnet", str(syncnet_ckpt), "--unet_ckpt", str(unet_folder),
                "--batch_size", str(p.generator_batch), "--accumulate_grad_batches", "1",
                "--lr", str(p.generator_lr), "--warmup_steps", "40", "--sync_weight", str(SYNC_WEIGHT),
                "--max_steps", str(p.generator_steps),
                "--train_samples_per_epoch", str(p.generator_steps * p.generator_batch),
                "--val_check_interval", str(p.generator_steps // 2)])
            generator_ckpt = _last_checkpoint(trainer)

    with stage("merge"):  # the README's step, verbatim: DeepSpeed's own script inside the checkpoint folder
        subprocess.run([sys.executable, "zero_to_fp32.py", ".", "merged"], cwd=generator_ckpt, check=True,
                       capture_output=True)
        merged = generator_ckpt / "merged"

    test_entries = splits["test"]
    clips = []
    with stage("inference"):
        loaded = load_models(merged, device="cpu")
        for k, entry in enumerate(test_entries):
            audio_path, true_opening = driving[k]
            face = raw / f"{entry}.mp4"
            out = results / f"{entry.replace('/', '_')}_driven.mp4"
            lip_sync(loaded, face, audio_path, out, pads=PADS, progress=False, batch_size=32)
            clips.append(dict(name=entry, face=face, output_path=out, audio=audio_path, true=true_opening))

    with stage("evaluate"):
        for clip in clips:
            boxes = np.array(json.loads(clip["face"].with_suffix(".json").read_text())["boxes"])
            clip["output"] = measure_video(clip["output_path"], boxes)
            clip["input"] = measure_video(clip["face"], boxes)
            n = min(len(clip["true"]), len(clip["output"]), len(clip["input"]))
            for key in ("true", "output", "input"):
                clip[key] = clip[key][:n]
            clip["output_corr"] = pearson(clip["output"], clip["true"])
            clip["input_corr"] = pearson(clip["input"], clip["true"])
            log(f"demo: {clip['name']}: output r={clip['output_corr']:.3f}, input r={clip['input_corr']:.3f}")
        folders = [latents / entry for entry in test_entries]
        metrics = {
            "sync_corr": float(np.mean([clip["output_corr"] for clip in clips])),
            "baseline_corr": float(np.mean([clip["input_corr"] for clip in clips])),
            "sync_lag": best_lag([clip["output"] for clip in clips], [clip["true"] for clip in clips]),
            "syncnet_acc": syncnet_accuracy(syncnet_ckpt, folders, p.eval_windows, seed),
            "audio_gain": audio_gain(merged, folders, p.eval_windows, seed),
        }
        write_side_by_side(results / "demo.mp4", clips[0]["face"], clips[0]["output_path"], clips[0]["audio"])
        plot_openings(results / "mouth_opening.png", clips)

    metrics["seconds"] = stopwatch.total
    metrics["stage_seconds"] = {name: round(seconds, 1) for name, seconds in stopwatch.seconds.items()}
    metrics["profile"], metrics["seed"] = profile, seed
    from lipsync.files import atomic_path

    with atomic_path(results / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def format_metrics(metrics: dict) -> str:
    """The demo's last line."""
    return (f"demo: sync_corr={metrics['sync_corr']:.2f} baseline_corr={metrics['baseline_corr']:.2f} "
            f"syncnet_acc={metrics['syncnet_acc']:.2f} audio_gain={metrics['audio_gain']:.2f} "
            f"seconds={metrics['seconds']:.0f}")
