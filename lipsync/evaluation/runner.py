"""evaluate.py's work: score videos (this project's lip-synced outputs or any system's) with every metric, one row
per video, cached per video so an interrupted run resumes, and the tables written at the end
(lipsync.evaluation.report).

    score_systems({"ours": generated_dir_or_paths, ...}, references, options) -> results dict
    generate(checkpoint, jobs, out_dir) -> paths of this project's outputs (lipsync.inference.lip_sync)

A row holds, for the generated video against its driving audio (its own audio track):
  lse_d, lse_c, av_offset            SyncNet v2 (syncnet_python's numbers; weights syncnet_v2.model)
  expert_d, expert_c, expert_offset  the project's latent SyncNet (--expert CKPT), same algorithm
and, when a reference video is given (reconstruction):
  ssim_face, psnr_face, ssim_mouth, psnr_mouth   against the reference's frames, same crop boxes
  csim                               ArcFace cosine with the reference's identity
FID (face crops and whole frames) is a property of a SET: per system, from the cached Inception features of all
its videos against those of all reference videos.
"""
from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lipsync import timing
from lipsync.audio import load_audio
from lipsync.errors import UserError
from lipsync.files import atomic_path
from lipsync.stopwatch import Stopwatch
from lipsync.video_io import iter_frames

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".mpg", ".mpeg", ".webm")
METRICS = ("lse", "expert", "fid", "quality", "csim")  # "quality": SSIM / PSNR
SYNC_METRICS = ("lse", "expert")
FACE_CROP_SIZE = 256  # face crops for SSIM / PSNR and face FID (lipsync.faces recipe)
CACHE_VERSION = 1


@dataclass
class EvalOptions:
    weights_dir: str | None = None
    weights_check: str = "sha256"  # or "architecture"
    metrics: tuple[str, ...] = ("lse", "fid", "quality", "csim")  # "expert" is added when an expert is given
    face_detector: str = "retinaface"  # or "s3fd" (the reference's, weights sfd_face.pth) for LSE tracks
    expert: str | None = None  # latent SyncNet checkpoint
    expert_pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # the crop recipe the expert was trained with
    min_track: int = 50  # reference tracking: frames a face track must exceed
    min_face_size: float = 100.0  # reference tracking: mean box side (px) a track must exceed
    device: str = "auto"
    batch_size: int = 20  # SyncNet v2 windows per call (the reference's)
    fid_stride: int = 1  # FID features of every k-th frame (1: all frames)
    cache: bool = True

    def key(self) -> str:
        """What a cached row depends on (not the device, batch size or caching itself)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("device", "batch_size", "cache")}
        key = json.dumps([CACHE_VERSION, fields], sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ inputs

def list_videos(source, root=None) -> dict[str, Path]:
    """A folder (its video files) or a list file (one path or name per line; # comments) -> {name: path}, name =
    file stem, in order. Names in a list resolve against `root` (default: the list's folder), any video suffix."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
        if not paths:
            raise UserError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) in {source}")
    elif source.is_file():
        base = Path(root) if root else source.parent
        paths = []
        for number, line in enumerate(source.read_text().splitlines(), 1):
            entry = line.split("#")[0].strip()
            if entry:
                paths.append(_resolve(entry, base, source, number))
        if not paths:
            raise UserError(f"{source} lists no videos")
    else:
        raise UserError(f"no such folder or list file: {source}")
    videos: dict[str, Path] = {}
    for path in paths:
        if path.stem in videos:
            raise UserError(f"two videos named {path.stem!r}: {videos[path.stem]} and {path}")
        videos[path.stem] = path
    return videos


def _resolve(entry: str, base: Path, source: Path, number: int) -> Path:
    path = Path(entry) if Path(entry).is_absolute() else base / entry
    if path.is_file():
        return path
    for suffix in VIDEO_EXTENSIONS:
        if path.with_name(path.name + suffix).is_file():
            return path.with_name(path.name + suffix)
    raise UserError(f"{source}:{number}: no video {entry!r} under {base}")


def cross_pairs(names: list[str], pairs_file=None, seed: int = 0) -> dict[str, str]:
    """{video name: name of the clip whose speech drives it}: from a pairs file ("video audio" per line) or a
    seeded derangement (every video gets another clip's speech)."""
    if pairs_file is not None:
        pairs = {}
        for number, line in enumerate(Path(pairs_file).read_text().splitlines(), 1):
            entry = line.split("#")[0].split()
            if not entry:
                continue
            if len(entry) != 2 or entry[0] not in names or entry[1] not in names:
                raise UserError(f"{pairs_file}:{number}: expected 'VIDEO AUDIO', two names of the test list")
            pairs[entry[0]] = entry[1]
        return pairs
    if len(names) < 2:
        raise UserError("the cross protocol needs at least two videos (each is driven by another's speech)")
    rng = np.random.default_rng(seed)
    order = list(names)
    while True:
        shuffled = list(rng.permutation(order))
        if all(a != b for a, b in zip(order, shuffled)):
            return dict(zip(order, shuffled))


def generate(checkpoint, jobs: dict[str, tuple[Path, Path]], out_dir, device: str = "auto",
             progress: bool = True, **lip_sync_options) -> dict[str, Path]:
    """This project's outputs: {name: (face video, driving audio)} -> {name: out_dir/name.mp4}, made with
    lipsync.inference.lip_sync unless already there (resume)."""
    from tqdm import tqdm

    from lipsync.inference import lip_sync, load_models

    out_dir = Path(out_dir)
    _check_same_checkpoint(checkpoint, out_dir, lip_sync_options)
    outputs = {name: out_dir / f"{name}.mp4" for name in jobs}
    todo = [name for name in jobs if not outputs[name].is_file()]
    if todo:
        models = load_models(checkpoint, device=device)
        for name in tqdm(todo, desc="lip sync", unit="video", disable=None if progress else True):
            face, audio = jobs[name]
            lip_sync(models, face, audio, outputs[name], progress=False, **lip_sync_options)
    return outputs


def _check_same_checkpoint(checkpoint, out_dir: Path, lip_sync_options: dict) -> None:
    """Outputs kept for resuming must come from the same checkpoint and lip_sync options: out_dir/checkpoint.json
    records them."""
    path = Path(checkpoint)
    record = {"checkpoint": str(path.resolve()), "mtime_ns": path.stat().st_mtime_ns if path.exists() else None,
              "options": {k: repr(v) for k, v in sorted(lip_sync_options.items())}}
    marker = out_dir / "checkpoint.json"
    if marker.is_file():
        if json.loads(marker.read_text()) != record:
            raise UserError(f"{out_dir} holds outputs of another checkpoint or other lip-sync options ({marker}): "
                            f"choose a new --output_dir or delete that folder")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------ models

@dataclass
class Scorers:
    """Everything scoring needs, loaded once."""
    options: EvalOptions
    device: str
    syncnet_v2: object = None
    track_detector: object = None
    expert: object = None
    inception: object = None
    arcface: object = None
    face_detector: object = None  # lipsync.faces.FaceDetector: crops for SSIM / PSNR / FID, landmarks for CSIM
    track_options: object = None
    # seconds per stage over every video scored: decode, detect, and each metric (bench/bench_evaluate.py prints it)
    stopwatch: Stopwatch = field(default_factory=Stopwatch)

    @classmethod
    def load(cls, options: EvalOptions, references: bool) -> Scorers:
        import torch

        from lipsync.evaluation import tracks
        from lipsync.faces import FaceDetector

        device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        unknown = sorted(set(options.metrics) - set(METRICS))
        if unknown:
            raise UserError(f"unknown metric(s) {', '.join(unknown)}: use {', '.join(METRICS)}")
        scorers = cls(options, device, face_detector=FaceDetector(device=device))
        scorers.track_options = tracks.TrackOptions(min_track=options.min_track, min_face_size=options.min_face_size)
        metrics = set(options.metrics)
        if "lse" in metrics:
            from lipsync.evaluation.weights import load_syncnet_v2, weight_path

            scorers.syncnet_v2 = load_syncnet_v2(options.weights_dir, options.weights_check, device)
            if options.face_detector == "s3fd":
                scorers.track_detector = tracks.S3FDDetector(
                    weight_path(options.weights_dir, "s3fd", options.weights_check), device, scorers.track_options)
            elif options.face_detector == "retinaface":
                scorers.track_detector = tracks.RetinaFaceDetector(detector=scorers.face_detector)
            else:
                raise UserError(f"--face_detector {options.face_detector!r}: use retinaface or s3fd")
        if "expert" in metrics:
            if not options.expert:
                raise UserError("the expert metric needs --expert CKPT (a latent SyncNet checkpoint of this project)")
            from lipsync.evaluation.expert import load_expert

            scorers.expert = load_expert(options.expert, device)
        if references and "fid" in metrics:
            from lipsync.evaluation.fid import load_inception

            scorers.inception = load_inception(options.weights_dir, options.weights_check, device)
        if references and "csim" in metrics:
            from lipsync.evaluation.identity import load_arcface

            scorers.arcface = load_arcface(options.weights_dir, options.weights_check, device)
        return scorers


# ------------------------------------------------------------------------------------------------ scoring

def _frames(path) -> np.ndarray:
    frames = list(iter_frames(path, target_fps=timing.VIDEO_FPS))
    if not frames:
        raise UserError(f"{path} has no frames")
    return np.stack(frames)


def _face_crops(frames: np.ndarray, boxes=None, raw_boxes=None) -> tuple[np.ndarray, np.ndarray]:
    """(crops [N, 256, 256, 3], boxes) with lipsync.faces' recipe from the detector's `raw_boxes` [N, 4] (or the
    crop `boxes` given); frames without a face take the nearest box."""
    from lipsync.faces import crop_boxes, crop_faces, nearest_found_boxes

    if boxes is None:
        boxes, found = crop_boxes(raw_boxes)
        if not found.any():
            raise UserError("no face found")
        boxes = nearest_found_boxes(boxes, found)
    return crop_faces(frames, boxes[:len(frames)], FACE_CROP_SIZE), boxes


def _lse(scorers: Scorers, frames: np.ndarray, audio: np.ndarray, raw_boxes: np.ndarray | None) -> dict:
    """raw_boxes: the evaluator's detections of these frames (the RetinaFace recipe's tracks start from them), or
    None: the track detector's own (S3FD)."""
    from lipsync.evaluation import sync, tracks

    detections = (scorers.track_detector(frames) if raw_boxes is None
                  else tracks.RetinaFaceDetector.per_frame(raw_boxes))
    track = tracks.face_track(detections, scorers.track_options)
    if track is None:
        return {"lse_note": f"no face track longer than {scorers.track_options.min_track} frames with faces over "
                            f"{scorers.track_options.min_face_size:g} px"}
    crops = np.ascontiguousarray(tracks.track_crops(frames, track)[..., ::-1])  # BGR, as the reference reads them
    first = int(track["frame"][0])
    pcm = sync.to_pcm16(audio[first * sync.SAMPLES_PER_FRAME:(int(track["frame"][-1]) + 1) * sync.SAMPLES_PER_FRAME])
    try:
        scores = sync.syncnet_v2_scores(scorers.syncnet_v2, crops, pcm, scorers.options.batch_size, scorers.device)
    except ValueError as err:
        return {"lse_note": str(err)}
    return {"lse_d": scores.distance, "lse_c": scores.confidence, "av_offset": scores.offset}


def score_video(scorers: Scorers, generated: Path, reference: Path | None, cache_dir: Path | None) -> dict:
    """One video's row (metric name -> number; notes as strings). With cache_dir: read / write
    cache_dir/<name>.json (+ .npz with the FID features)."""
    options = scorers.options
    source = {"generated": _file_id(generated), "reference": _file_id(reference) if reference else None,
              "options": options.key()}
    cached = cache_dir / f"{generated.stem}.json" if cache_dir else None
    if cached is not None and cached.is_file() and options.cache:
        entry = json.loads(cached.read_text())
        if entry.get("source") == source:
            return entry["row"]
    metrics = set(options.metrics)
    watch = scorers.stopwatch
    compared = reference is not None and metrics & {"fid", "quality", "csim"}
    with ThreadPoolExecutor(1) as pool:
        # the reference decodes on a thread (PyAV and OpenCV let go of the GIL) while the sync metrics run
        ref_decoding = pool.submit(_frames, reference) if compared else None
        with watch.stage("decode"):
            frames = _frames(generated)
            audio = load_audio(generated)  # the driving speech: the output's own audio track
        row = _score_frames(scorers, frames, audio, ref_decoding)
        features = row.pop("_features", {})
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        if features:
            with atomic_path(cached.with_suffix(".npz")) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **features)
        with atomic_path(cached) as tmp:
            tmp.write_text(json.dumps({"source": source, "row": row}, indent=1))
    elif features:
        row["_features"] = features
    return row


def _score_frames(scorers: Scorers, frames: np.ndarray, audio: np.ndarray, ref_decoding: Future | None) -> dict:
    """score_video's row from the decoded generated video, its audio and the reference's decoding (None: no
    comparison metrics); FID features under "_features"."""
    options, watch = scorers.options, scorers.stopwatch
    metrics = set(options.metrics)
    row: dict = {"frames": len(frames)}
    detected = {}  # one detector pass per video, shared by every metric: (raw boxes [N, 4], landmarks [N, 5, 2])

    def detections(which: str, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from lipsync.faces import detect_video

        if which not in detected:
            with watch.stage("detect", len(video)):
                detected[which] = detect_video(video, scorers.face_detector)
        return detected[which]

    if "lse" in metrics:
        with watch.stage("lse"):
            shared = scorers.track_detector.name == "retinaface"  # the evaluator's detector: its pass serves LSE
            row.update(_lse(scorers, frames, audio, detections("generated", frames)[0] if shared else None))
    if "expert" in metrics:
        from lipsync.evaluation.expert import expert_sync_scores

        with watch.stage("expert"):
            scores = expert_sync_scores(scorers.expert, frames, audio, pads=options.expert_pads,
                                        raw_boxes=detections("generated", frames)[0])
        row.update({"expert_d": scores.distance, "expert_c": scores.confidence, "expert_offset": scores.offset})
    if ref_decoding is not None:
        with watch.stage("decode"):
            ref_frames = ref_decoding.result()
        if metrics & {"quality", "fid"}:  # CSIM aligns faces by their landmarks instead
            with watch.stage("reference crops"):
                ref_crops, ref_boxes = _face_crops(ref_frames, raw_boxes=detections("reference", ref_frames)[0])
        if "quality" in metrics:
            from lipsync.evaluation.quality import ssim_psnr

            with watch.stage("quality"):
                n = min(len(frames), len(ref_frames))
                gen_crops, _ = _face_crops(frames[:n], ref_boxes[:n])  # the reference's boxes
                row.update(ssim_psnr(gen_crops, ref_crops[:n], device=scorers.device))
            row["compared_frames"] = n
        if "csim" in metrics:
            from lipsync.evaluation.identity import csim, face_embeddings

            with watch.stage("csim"):
                row["csim"] = csim(
                    face_embeddings(scorers.arcface, None, frames, landmarks=detections("generated", frames)[1]),
                    face_embeddings(scorers.arcface, None, ref_frames,
                                    landmarks=detections("reference", ref_frames)[1]))
        if "fid" in metrics:
            from lipsync.evaluation.fid import inception_features

            with watch.stage("fid"):
                k = max(1, options.fid_stride)
                # its own boxes, found and smoothed as the reference's
                own_crops, _ = _face_crops(frames, raw_boxes=detections("generated", frames)[0])
                row["_features"] = {"gen_face": inception_features(scorers.inception, own_crops[::k]),
                                    "gen_frame": inception_features(scorers.inception, frames[::k]),
                                    "ref_face": inception_features(scorers.inception, ref_crops[::k]),
                                    "ref_frame": inception_features(scorers.inception, ref_frames[::k])}
    return row


def _file_id(path: Path) -> list:
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _features(row: dict, cache_dir: Path | None, name: str) -> dict | None:
    if "_features" in row:
        return row["_features"]
    path = cache_dir / f"{name}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    return None


def score_systems(systems: dict[str, dict[str, Path]], references: dict[str, Path] | None, options: EvalOptions,
                  cache_root=None, progress: bool = True) -> dict:
    """{system: {name: generated video}} (+ {name: reference video}) -> results:
    {"systems": {system: {"videos": {name: row}, "mean": {...}, "std": {...}, "fid_face", "fid_frame"}},
     "options": ...}."""
    from tqdm import tqdm

    if references is not None:
        for system, videos in systems.items():
            missing = [name for name in references if name not in videos]
            if missing:
                raise UserError(f"{system}: no generated video for {len(missing)} of the {len(references)} reference "
                                f"videos (e.g. {missing[0]!r}); names must match the reference file names")
            systems[system] = {name: videos[name] for name in references}
    elif any(m in options.metrics for m in ("fid", "quality", "csim")):
        options.metrics = tuple(m for m in options.metrics if m in SYNC_METRICS)  # nothing to compare with
    scorers = Scorers.load(options, references is not None)
    results = {"options": asdict(options), "systems": {}}
    for system, videos in systems.items():
        cache_dir = Path(cache_root) / system if cache_root is not None and options.cache else None
        rows = {}
        for name, path in tqdm(videos.items(), desc=f"scoring {system}", unit="video",
                               disable=None if progress else True):
            reference = references[name] if references is not None else None
            try:
                rows[name] = score_video(scorers, path, reference, cache_dir)
            except UserError as err:
                raise UserError(f"{path}: {err}") from None
        entry = {"videos": {name: {k: v for k, v in row.items() if k != "_features"} for name, row in rows.items()}}
        entry.update(summarize(entry["videos"]))
        if "fid" in options.metrics and references is not None:
            entry.update(_fid(rows, cache_dir))
        results["systems"][system] = entry
    return results


def _fid(rows: dict, cache_dir: Path | None) -> dict:
    from lipsync.evaluation.fid import frechet_distance

    sets: dict[str, list] = {"gen_face": [], "gen_frame": [], "ref_face": [], "ref_frame": []}
    for name, row in rows.items():
        features = _features(row, cache_dir, name)
        if features is None:
            raise UserError(f"no cached FID features for {name}: run again without --no_cache")
        for key in sets:
            sets[key].append(features[key])
    stacked = {key: np.concatenate(value) for key, value in sets.items()}
    return {"fid_face": frechet_distance(stacked["ref_face"], stacked["gen_face"]),
            "fid_frame": frechet_distance(stacked["ref_frame"], stacked["gen_frame"])}


def summarize(videos: dict[str, dict]) -> dict:
    """Mean and std (population) over videos of every numeric metric (NaN and missing values left out)."""
    keys = []
    for row in videos.values():
        keys += [k for k, v in row.items() if isinstance(v, (int, float)) and k not in keys]
    mean, std = {}, {}
    for key in keys:
        values = np.array([row[key] for row in videos.values() if isinstance(row.get(key), (int, float))
                           and not (isinstance(row[key], float) and math.isnan(row[key]))], np.float64)
        mean[key] = float(values.mean()) if len(values) else float("nan")
        std[key] = float(values.std()) if len(values) else float("nan")
    return {"mean": mean, "std": std}
