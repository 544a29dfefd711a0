"""Sync scores of dataset folders and the filter that uses them (score_sync.py, make_filelists.py --min_sync_conf).

Scoring: per folder, the AV offset (video frames at 25 fps; > 0: the sound comes early) and confidence with
syncnet_python's algorithm (lipsync.evaluation.sync.sync_scores), on embeddings of
- the project's latent expert (`LatentScorer`): its face tower on the folder's own latents (windows of 5
  consecutive frames) and its audio tower on wav2vec2.pt (timing.syncnet_audio_window): no pixels, no codec; the
  folder's codec and audio encoder must be the ones the expert's model card names;
- or SyncNet v2 (`PixelScorer`, user weights, evaluate.py's scorer): 224 px crops of the source video cut with the
  folder's own boxes, MFCCs of audio.wav.
Only the longest run of consecutive frames with a face is scored (frames without a face are gaps in the latents,
and the shifts of the algorithm must be shifts in time). Results go to sync.json (lipsync.data.folder); a folder
already scored by the same scorer (fingerprint) with the same max offset is skipped, so a run resumes.
"""
from __future__ import annotations

import filecmp
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from lipsync import timing
from lipsync.data.folder import (
    AUDIO_FILE,
    FEATURES_FILE,
    LATENTS_FILE,
    find_video_folders,
    read_meta,
    read_sync,
    write_sync,
)
from lipsync.errors import UserError
from lipsync.evaluation.sync import VSHIFT, WINDOW, sync_scores
from lipsync.preprocess.report import Outcome, attempt


def _fingerprint(state: dict, card: dict) -> str:
    digest = hashlib.sha256(json.dumps(card, sort_keys=True).encode())
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def longest_run(frame_index: np.ndarray) -> tuple[int, int]:
    """Rows [a, b) of the longest run of consecutive frames in a strictly increasing frame_index [N]."""
    if len(frame_index) == 0:
        return 0, 0
    breaks = np.flatnonzero(np.diff(frame_index) != 1) + 1
    edges = np.concatenate([[0], breaks, [len(frame_index)]])
    k = int(np.argmax(np.diff(edges)))
    return int(edges[k]), int(edges[k + 1])


def _same_model(a, b) -> bool:
    """Two model ids (hub ids or folders) name the same model: the same id or folder, or two folders holding
    byte-identical files (one model saved twice, e.g. fitted twice from one seed)."""
    if a is None or b is None or str(a) == str(b):
        return True
    return _same_folder_model(str(a), str(b))


@functools.cache  # once per pair of folders, not once per scored dataset folder
def _same_folder_model(a: str, b: str) -> bool:
    first, second = Path(a), Path(b)
    if not (first.exists() and second.exists()):
        return False
    if first.resolve() == second.resolve():
        return True
    if not (first.is_dir() and second.is_dir()):
        return False
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file()) and all(
        filecmp.cmp(first / name, second / name, shallow=False) for name in files)


def _scoring_rows(folder: Path, audio_frames: int | None = None) -> tuple[np.ndarray, int, int]:
    """(frame_index [N], a, b): the rows [a, b) to score, checked to hold at least one window."""
    with safe_open(str(folder / LATENTS_FILE), framework="pt") as f:
        frame_index = f.get_tensor("frame_index").numpy()
    if audio_frames is not None:  # frames whose expert window starts inside the audio
        frame_index = frame_index[[timing.syncnet_window_start(int(k)) < audio_frames for k in frame_index]]
    a, b = longest_run(frame_index)
    if b - a < WINDOW + 1:
        raise UserError(f"shorter than the scoring window: {b - a} consecutive frames with a face and audio, "
                        f"scoring needs {WINDOW + 1}")
    return frame_index, a, b


@dataclass
class LatentScorer:
    """The project's trained latent SyncNet as a dataset scorer."""
    syncnet: torch.nn.Module
    card: dict
    fingerprint: str
    name: str = "latent_expert"
    batch_size: int = 256

    @classmethod
    def load(cls, checkpoint) -> "LatentScorer":
        from lipsync.checkpoint import load_syncnet

        loaded = load_syncnet(checkpoint)
        return cls(loaded.syncnet, loaded.card, _fingerprint(loaded.syncnet.state_dict(), loaded.card))

    @torch.no_grad()
    def embeddings(self, folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(video, audio) embeddings [W, E] of the folder's scored windows, and [first, end) frames scored."""
        from lipsync.evaluation.expert import audio_tower, face_tower

        meta = read_meta(folder)
        if not (folder / FEATURES_FILE).is_file():
            raise UserError(f"no audio features ({FEATURES_FILE}): run audio_preprocess.py on its data root")
        audio = torch.load(folder / FEATURES_FILE, map_location="cpu", weights_only=True)
        for what, have, want in (("codec", meta.get("codec"), self.card.get("codec")),
                                 ("audio encoder", audio.get("model_id"), self.card.get("audio_encoder"))):
            if not _same_model(have, want):
                raise UserError(f"made with the {what} {have}, the expert was trained with {want}")
        features = audio["features"].float()  # [F, D]
        frame_index, a, b = _scoring_rows(folder, len(features))
        with safe_open(str(folder / LATENTS_FILE), framework="pt") as f:
            all_index = f.get_tensor("frame_index").numpy()
            first = int(np.searchsorted(all_index, frame_index[a]))
            latents = f.get_slice("full")[first:first + b - a].float()  # [n, C, h, w]
        windows = latents.unfold(0, WINDOW, 1).permute(0, 4, 1, 2, 3)  # [n - 4, T, C, h, w]
        frames = frame_index[a:b - WINDOW + 1]
        chunks = torch.stack([timing.syncnet_audio_window(features, int(k)) for k in frames])  # [W, 2T, D]
        step = self.batch_size
        video = torch.cat([face_tower(self.syncnet, windows[i:i + step]) for i in range(0, len(windows), step)])
        sound = torch.cat([audio_tower(self.syncnet, chunks[i:i + step]) for i in range(0, len(chunks), step)])
        return video, sound, [int(frame_index[a]), int(frame_index[b - 1]) + 1]


@dataclass
class PixelScorer:
    """SyncNet v2 (syncnet_python's network, user weights) on 224 px crops of the source video."""
    model: torch.nn.Module
    fingerprint: str
    name: str = "syncnet_v2"
    device: str = "cpu"

    @classmethod
    def load(cls, weights, device="cpu") -> "PixelScorer":
        from lipsync.evaluation.weights import load_state_strict
        from models.syncnet_v2 import SyncNetV2

        model = load_state_strict(SyncNetV2(), Path(weights), "SyncNet v2").to(device).eval()
        return cls(model, _fingerprint(model.state_dict(), {"kind": "syncnet_v2"}), device=device)

    def embeddings(self, folder: Path) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        from lipsync.audio import load_audio
        from lipsync.evaluation.sync import SYNCNET_V2_SIZE, syncnet_v2_embeddings, to_pcm16
        from lipsync.faces import crop_faces
        from lipsync.video_io import iter_frames

        meta = read_meta(folder)
        if not (folder / AUDIO_FILE).is_file():
            raise UserError(f"no audio ({AUDIO_FILE})")
        frame_index, a, b = _scoring_rows(folder)
        start = meta.get("shot", {}).get("start_frame", 0)  # shot folders index frames from their shot's start
        boxes = np.asarray(meta["boxes"], np.float32)  # one per latent row
        wanted = {int(k) + start: row for row, k in enumerate(frame_index) if a <= row < b}
        crops = []
        for k, frame in enumerate(iter_frames(meta["source"], target_fps=meta.get("fps", timing.VIDEO_FPS))):
            if k in wanted:
                crops.append(crop_faces(frame[None], boxes[wanted[k]][None], SYNCNET_V2_SIZE)[0, ..., ::-1])
            if k >= start + frame_index[b - 1]:
                break
        if len(crops) != b - a:
            raise UserError(f"the source {meta['source']} gave {len(crops)} of the {b - a} frames to score")
        audio = load_audio(folder / AUDIO_FILE)
        s0 = round(frame_index[a] * timing.AUDIO_SAMPLE_RATE / timing.VIDEO_FPS)
        pcm = to_pcm16(audio[s0:s0 + round((b - a) * timing.AUDIO_SAMPLE_RATE / timing.VIDEO_FPS)])
        video, sound = syncnet_v2_embeddings(self.model, np.ascontiguousarray(np.stack(crops)), pcm,
                                             device=self.device)
        return video, sound, [int(frame_index[a]), int(frame_index[b - 1]) + 1]


def score_folder(scorer, folder, max_offset: int = VSHIFT) -> dict:
    """One folder -> its sync record (written to sync.json by the caller)."""
    video, audio, frames = scorer.embeddings(Path(folder))
    scores = sync_scores(video, audio, max_offset)
    return {"scorer": scorer.name, "fingerprint": scorer.fingerprint, "max_offset": max_offset,
            "offset": scores.offset, "confidence": round(scores.confidence, 5),
            "distance": round(scores.distance, 5), "windows": scores.windows, "frames": frames}


def score_dataset(data_root, scorer, max_offset: int = VSHIFT, force: bool = False, progress: bool = True):
    """Score every finished folder under data_root (writing sync.json) -> [Outcome]; a folder already scored by
    this scorer with this max_offset is skipped unless `force`. A bad folder is one failed Outcome."""
    from tqdm import tqdm

    root = Path(data_root)
    outcomes = []
    for entry in tqdm(find_video_folders(root), unit="folder", desc="sync", disable=not progress):
        folder = root / entry
        done = read_sync(folder)
        if not force and done and (done.get("fingerprint"), done.get("max_offset")) == (scorer.fingerprint,
                                                                                       max_offset):
            outcomes.append(Outcome(entry, "skipped"))
            continue

        def work(folder=folder, entry=entry):
            record = score_folder(scorer, folder, max_offset)
            write_sync(folder, record)
            return Outcome(entry, "done", frames=record["frames"][1] - record["frames"][0])

        outcomes.append(attempt(entry, work))
    return outcomes


def curate(data_root, entries: list[str], min_conf: float | None, max_offset: int | None):
    """Entries (folders relative to data_root) -> (kept, dropped [(entry, reason)]): a folder is dropped when it
    was never scored, its confidence is below min_conf or its |offset| is above max_offset (None: no limit)."""
    kept, dropped = [], []
    for entry in entries:
        record = read_sync(Path(data_root) / entry)
        if record is None:
            dropped.append((entry, "not scored (run score_sync.py)"))
        elif min_conf is not None and record["confidence"] < min_conf:
            dropped.append((entry, f"confidence {record['confidence']:.2f} < {min_conf:g} "
                                   f"(offset {record['offset']})"))
        elif max_offset is not None and abs(record["offset"]) > max_offset:
            dropped.append((entry, f"offset {record['offset']} beyond +-{max_offset} "
                                   f"(confidence {record['confidence']:.2f})"))
        else:
            kept.append(entry)
    return kept, dropped
