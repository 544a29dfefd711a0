"""The whole workflow on synthetic talking faces, on a CPU, in minutes; numbers that show lip sync was learned.

    run_demo(output_root, scripts, profile="full" | "ci", seed=0) -> metrics   (demo.py passes the scripts)

Stages (each writes under output_root; the training, preprocessing and inference stages are the project's own
scripts and functions, called exactly as the README's commands call them):
 1. data       raw/idNNN/clip00.mp4 (+ .json truth) from lipsync.demo.synthetic, and held-out driving speech
               data/driving/driveNN.wav (+ .npy true opening), synthesised from another seed stream
 2. codec      models/vae: a tiny AutoencoderKL fitted on faces of OTHER random people (demo/codec.py);
               models/wav2vec2: a tiny random Wav2Vec2, frozen, used exactly as a pretrained one
 3. preprocess video_preprocess.py (RetinaFace boxes, 32 px crops -> 8x8 latents), audio_preprocess.py, and
               filelists_synthetic/ (whole identities split train / val / test)
 4. syncnet    unet_syncnet_lightning.py (DeepSpeed ZeRO-2 on the CPU) -> experiments/syncnet
 5. generator  unet_wav2lip_lightning.py with a small UNet config -> experiments/generator
 6. merge      `python zero_to_fp32.py . merged` inside the generator's last ZeRO checkpoint folder
 7. inference  lipsync.inference.lip_sync: each held-out (test split) video driven by held-out speech
 8. evaluate   on the test split only (identities and speech never seen in training; demo/evaluate.py):
               sync_corr     Pearson r of the mouth opening measured in the OUTPUT video's pixels with the driving
                             speech's true opening (mean over test videos)
               baseline_corr the same for the input video unchanged (its mouth follows other speech)
               syncnet_acc   the expert's accuracy on fixed in-sync / off-sync test windows
               audio_gain    mouth-region latent L1 of the generator with shuffled audio / with the true audio
               sync_lag      the frame shift that best aligns the output's mouth with the driving speech (0)
               lse_c / lse_d the expert's sync confidence / distance of the input and the output video with the
                             driving speech (lipsync.evaluation.expert, syncnet_python's algorithm)
               ssim / psnr   of the output's face and mouth against the ground truth (the same person rendered
                             with the driving speech's true mouth), and of the input as the floor
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

from lipsync import model_zoo
from lipsync.audio import write_wav
from lipsync.demo import synthetic
from lipsync.demo.codec import fit_codec, render_codec_faces
from lipsync.demo.evaluate import (
    audio_gain,
    best_lag,
    measure_video,
    pearson,
    plot_openings,
    quality_crops,
    render_truth,
    syncnet_accuracy,
    write_side_by_side,
)
from lipsync.stopwatch import Stopwatch

DATASET = "synthetic"  # filelists_synthetic/ inside output_root
DRIVING_STREAM = 7919  # seed stream of the held-out driving speech: default_rng([seed, DRIVING_STREAM, k])


@dataclasses.dataclass(frozen=True)
class Curation:
    """The curation experiment (bench/bench_curation.py): training people whose clips are corrupted
    (lipsync.demo.corrupt: fractions shifted / swapped / cut; val and test people stay clean), and optionally the
    data scored by an expert (`score_with`, a checkpoint) and filtered (make_filelists' min_sync_conf / max_offset)
    before training, which then also shifts the audio of the kept folders by their measured offset."""
    shifted: float = 0.3
    swapped: float = 0.15
    cut: float = 0.15
    score_with: str | None = None
    min_sync_conf: float | None = None
    max_offset: int | None = 6


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
    eval_windows: int  # fixed held-out windows for audio_gain
    # ... and for syncnet_acc: more, as they cost little (an accuracy from 512 windows has a standard error of
    # 0.013 at 0.9, more than the margin of its target)
    expert_eval_windows: int


PROFILES = {
    # Many short clips rather than a few long ones: the expert and the generator must generalise to faces they
    # never saw, and what varies between people (skin, lips, face size) is learned from the number of people
    # (how the sizes were chosen: docs/log.md, demo history).
    "full": Profile(identities=480, val_identities=2, test_identities=8, clip_seconds=3.0, frame_size=128,
                    image_size=32, vae_steps=600, vae_pool=2048, syncnet_steps=3000, syncnet_batch=64,
                    syncnet_lr=1e-3, generator_steps=700, generator_batch=8, generator_lr=2e-3, eval_windows=512,
                    expert_eval_windows=4096),
    "ci": Profile(identities=80, val_identities=1, test_identities=2, clip_seconds=4.0, frame_size=128,
                  image_size=32, vae_steps=300, vae_pool=1024, syncnet_steps=400, syncnet_batch=64,
                  syncnet_lr=1e-3, generator_steps=400, generator_batch=8, generator_lr=2e-3, eval_windows=256,
                  expert_eval_windows=256),
}

# The tiny random speech encoder: more conv channels and a wider hidden state than model_zoo's "tiny" (16 / 32):
# random frozen features of that size predict the synthetic mouth opening better (docs/log.md).
WAV2VEC2_HIDDEN, WAV2VEC2_CONV = 64, 64
UNET_CHANNELS, UNET_HEADS = (64, 128), 4
# The narrow expert: on 8x8 latents its deep layers run at 1x1, where "u" spends 1.7x the time for no better
# held-out accuracy (BENCHMARKS.md, CPU).
SYNCNET_VARIANT = "s"
# Wav2Lip's expert weight (0.03) rather than the script's default 0.1: at the demo's high learning rate, 0.1 made
# the generator diverge once the sync loss switched on (docs/log.md).
SYNC_WEIGHT = 0.03
# Crop recipe (detector box + pads, top bottom left right, in pixels of the 128 px frames): tighter than the
# default (0, 10, 0, 0) and centred lower, so the crop is nose-to-chin and the mouth fills ~3x more of it:
# the mouth is the only part of the lower half that the audio explains, so its share of the lower-half latents
# sets how strong the lip-sync signal is for both the expert and the generator's L1. Preprocessing, the codec's
# training crops and inference all use it.
PADS = (-15, -4, -3, -3)
# Processes for the CPU-bound data stages (rendering, preprocessing): one per core, at most 4.
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


def run_demo(output_root, scripts: dict[str, Callable], profile: str = "full", seed: int = 0, log=print,
             curation: Curation | None = None) -> dict:
    """The whole workflow into output_root (data/, models/, filelists_synthetic/, experiments/, results/);
    returns the metrics (and `seconds`, `stage_seconds`). scripts: the `main(argv)` of each of SCRIPTS (demo.py
    passes the top-level scripts' own), called exactly as their command lines would be. curation: corrupt the
    training people's clips (and curate them) first; `Curation`."""
    from lipsync.data.filelists import _group_splits, make_filelists
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
        if curation:  # the people make_filelists will put in train: the split of the same group names and seed
            planned, _ = _group_splits([f"id{i:03d}/clip00" for i in range(p.identities)], p.val_identities,
                                       p.test_identities, seed, 1, None)
            from lipsync.demo.corrupt import corrupt_people

            truths = corrupt_people(raw, [int(e[2:5]) for e in planned["train"]], seed, p.clip_seconds,
                                    p.frame_size, curation.shifted, curation.swapped, curation.cut)
            (root / "data" / "corruption.json").write_text(json.dumps(truths, indent=0))

    with stage("codec"):
        crops = render_codec_faces(p.vae_pool, p.frame_size, p.image_size, seed, PADS)
        error = fit_codec(models / "vae", crops, p.vae_steps, seed, log=log)
        log(f"demo: codec held-out L1 {error:.4f}")
        model_zoo.save_wav2vec2(models / "wav2vec2", wav2vec2_config(), seed=seed)

    with stage("preprocess"):
        scripts["video_preprocess"](["--data_root", str(raw), "--output_root", str(latents),
                                     "--codec", str(models / "vae"), "--image_size", str(p.image_size),
                                     "--pads", *map(str, PADS), "--devices", "0", "--batch_size", "64",
                                     "--num_workers", str(CPU_WORKERS)])
        scripts["audio_preprocess"](["--data_root", str(latents), "--audio_encoder", str(models / "wav2vec2"),
                                     "--device", "cpu"])
        sync_filter = {}
        if curation and curation.score_with:  # what `score_sync.py --data_root D --syncnet CKPT` does
            from lipsync.data.curation import LatentScorer, score_dataset

            outcomes = score_dataset(latents, LatentScorer.load(curation.score_with), progress=False)
            log(f"demo: sync scored {sum(o.status == 'done' for o in outcomes)} of {len(outcomes)} folders")
            sync_filter = dict(min_sync_conf=curation.min_sync_conf, max_offset=curation.max_offset)
        # what `make_filelists.py --data_root D --name synthetic --val V --test T` does, into output_root
        command = shlex.join(["python", "make_filelists.py", "--data_root", str(latents), "--name", DATASET,
                              "--val", str(p.val_identities), "--test", str(p.test_identities), "--seed", str(seed),
                              *[f"--{k}={v}" for k, v in sync_filter.items() if v is not None]])
        splits = make_filelists(latents, root / f"filelists_{DATASET}", p.val_identities,
                                p.test_identities, seed, command=command, **sync_filter)
        log("demo: filelists " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    common = ["--data_root", str(latents), "--dataset_name", DATASET, "--num_workers", "0", "--devices", "1",
              "--output_dir", str(experiments), "--seed", str(seed), "--save_top_k", "1", "--log_every_n_steps", "10",
              "--val_samples", "256"]
    with contextlib.chdir(root):  # the training scripts find filelists_<name>/ in the current directory
        with stage("syncnet"):
            trainer = scripts["unet_syncnet_lightning"]([
                *common, "--variant", SYNCNET_VARIANT, "--face_region", "lower", "--batch_size", str(p.syncnet_batch),
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
        from lipsync.evaluation.expert import expert_sync_scores, load_expert
        from lipsync.evaluation.quality import ssim_psnr
        from lipsync.faces import FaceDetector
        from lipsync.video_io import iter_frames

        expert, detector = load_expert(syncnet_ckpt), FaceDetector()
        for clip in clips:
            face_json = json.loads(clip["face"].with_suffix(".json").read_text())
            boxes = np.array(face_json["boxes"])
            for key, video in (("output", clip["output_path"]), ("input", clip["face"])):
                clip[f"lse_{key}"] = expert_sync_scores(expert, video, clip["audio"], pads=PADS, detector=detector)
            clip["output"] = measure_video(clip["output_path"], boxes)
            clip["input"] = measure_video(clip["face"], boxes)
            n = min(len(clip["true"]), len(clip["output"]), len(clip["input"]))
            for key in ("true", "output", "input"):
                clip[key] = clip[key][:n]
            truth = quality_crops(render_truth(face_json, clip["true"]), boxes)
            for key, video in (("output", clip["output_path"]), ("input", clip["face"])):
                frames = np.stack(list(iter_frames(video)))[:n]
                clip[f"quality_{key}"] = ssim_psnr(quality_crops(frames, boxes), truth)
            clip["output_corr"] = pearson(clip["output"], clip["true"])
            clip["input_corr"] = pearson(clip["input"], clip["true"])
            log(f"demo: {clip['name']}: output r={clip['output_corr']:.3f}, input r={clip['input_corr']:.3f}")
        folders = [latents / entry for entry in test_entries]
        metrics = {
            "sync_corr": float(np.mean([clip["output_corr"] for clip in clips])),
            "baseline_corr": float(np.mean([clip["input_corr"] for clip in clips])),
            "sync_lag": best_lag([clip["output"] for clip in clips], [clip["true"] for clip in clips]),
            "syncnet_acc": syncnet_accuracy(syncnet_ckpt, folders, p.expert_eval_windows, seed),
            "audio_gain": audio_gain(merged, folders, p.eval_windows, seed),
        }
        for key in ("input", "output"):  # means over the test clips
            metrics[f"lse_c_{key}"] = float(np.mean([clip[f"lse_{key}"].confidence for clip in clips]))
            metrics[f"lse_d_{key}"] = float(np.mean([clip[f"lse_{key}"].distance for clip in clips]))
            for name in ("ssim_face", "psnr_face", "ssim_mouth", "psnr_mouth"):
                metrics[f"{name}_{key}"] = float(np.mean([clip[f"quality_{key}"][name] for clip in clips]))
        log(f"demo: expert LSE-C input {metrics['lse_c_input']:.2f} -> output {metrics['lse_c_output']:.2f}, "
            f"LSE-D {metrics['lse_d_input']:.3f} -> {metrics['lse_d_output']:.3f}; against the ground truth: "
            f"mouth SSIM {metrics['ssim_mouth_input']:.3f} -> {metrics['ssim_mouth_output']:.3f}, "
            f"PSNR {metrics['psnr_mouth_input']:.1f} -> {metrics['psnr_mouth_output']:.1f} dB")
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
