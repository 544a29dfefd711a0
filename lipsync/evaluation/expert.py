"""The project's own sync expert as an evaluator: AV offset, confidence and distance of any video + speech from a
trained latent SyncNet (models.syncnet), with syncnet_python's offset / confidence algorithm (evaluation.sync).

It needs no external weights: the checkpoint's model card names the codec, the audio encoder and the crop size.
Faces are cropped with the training recipe (lipsync.faces: RetinaFace, smoothed square boxes, `pads`), encoded by
the codec (posterior mean), cut into 5-frame windows; the speech goes through the same audio encoder and
timing.syncnet_audio_window. Distances are Euclidean between the expert's unit-norm embeddings (in [0, sqrt 2]).

    expert = load_expert("experiments/syncnet/version_0/checkpoints/last.ckpt")
    scores = expert_sync_scores(expert, "out.mp4")                 # the video's own audio track
    scores = expert_sync_scores(expert, "face.mp4", "speech.wav")  # or any speech; scores.offset / .confidence
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lipsync import timing
from lipsync.audio import load_audio
from lipsync.audio_encoder import AudioEncoder
from lipsync.checkpoint import load_syncnet
from lipsync.errors import UserError
from lipsync.evaluation.sync import VSHIFT, WINDOW, SyncScores, shift_audio, sync_scores
from lipsync.faces import FaceDetector, crop_boxes, crop_faces, face_boxes, nearest_found_boxes
from lipsync.latent_codec import LatentCodec, uint8_to_model
from lipsync.video_io import iter_frames

DEFAULT_PADS = (0, 10, 0, 0)  # video_preprocess.py's default crop recipe


@dataclass
class Expert:
    syncnet: torch.nn.Module
    codec: LatentCodec
    audio_encoder: AudioEncoder
    image_size: int
    card: dict
    device: torch.device


def load_expert(checkpoint, device="cpu", codec: str | None = None, audio_encoder: str | None = None) -> Expert:
    """A SyncNet checkpoint of any kind lipsync.checkpoint reads + the codec and audio encoder its card names."""
    loaded = load_syncnet(checkpoint)
    card = loaded.card
    for key in ("codec", "audio_encoder", "image_size"):
        if key not in card and not (key == "codec" and codec) and not (key == "audio_encoder" and audio_encoder):
            raise UserError(f"{checkpoint}: its model card does not name the {key.replace('_', ' ')}")
    device = torch.device(device)
    # the codec in the dtype video_preprocess.py encoded the expert's training latents with
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return Expert(loaded.syncnet.to(device).eval(), LatentCodec.from_pretrained(codec or card["codec"], device, dtype),
                  AudioEncoder(audio_encoder or card["audio_encoder"], device), int(card["image_size"]), card, device)


def _as_expert(expert, device="cpu") -> Expert:
    return expert if isinstance(expert, Expert) else load_expert(expert, device)


def face_crops(frames: np.ndarray, image_size: int, pads=DEFAULT_PADS, box=None,
               detector: FaceDetector | None = None, raw_boxes: np.ndarray | None = None) -> np.ndarray:
    """frames [N, H, W, 3] RGB uint8 -> crops [N, S, S, 3] with the training recipe; frames without a face take
    the nearest frame's box (UserError when no frame has one). raw_boxes: the detector's boxes [N, 4] of these
    frames, when the caller has them (lipsync.faces.detect_video)."""
    if raw_boxes is not None:
        boxes, found = crop_boxes(raw_boxes, pads)
    else:
        detector = detector if detector is not None or box is not None else FaceDetector()
        boxes, found = face_boxes(frames, detector, pads=pads, box=box)
    if not found.any():
        raise UserError("no face found in any frame")
    return crop_faces(frames, nearest_found_boxes(boxes, found), image_size)


@torch.no_grad()
def video_embeddings(expert: Expert, crops: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """Face crops [N, S, S, 3] RGB uint8 -> face embeddings of windows 0 .. N - 5 ([N - 4, E], CPU)."""
    codec, device = expert.codec, expert.device
    latents = torch.cat([codec.encode(uint8_to_model(crops[i:i + batch_size], device, codec.dtype)).float()
                         for i in range(0, len(crops), batch_size)])  # [N, C, h, w]
    windows = latents.unfold(0, WINDOW, 1).permute(0, 4, 1, 2, 3)  # [N - 4, T, C, h, w]
    return torch.cat([face_tower(expert.syncnet, windows[i:i + batch_size])
                      for i in range(0, len(windows), batch_size)]).cpu()


def face_tower(syncnet, faces: torch.Tensor) -> torch.Tensor:
    """SyncNet.forward's face half: faces [B, T, C, h, w] -> unit-norm [B, E] (one tower, not both)."""
    return F.normalize(syncnet.face_encoder(syncnet.face_input(faces)).flatten(1), dim=1)


def audio_tower(syncnet, audio: torch.Tensor) -> torch.Tensor:
    """SyncNet.forward's audio half: audio [B, 2T, D] -> unit-norm [B, E]."""
    return F.normalize(syncnet.audio_encoder(audio.transpose(1, 2)).flatten(1), dim=1)


@torch.no_grad()
def audio_embeddings(expert: Expert, audio: np.ndarray, windows: int, fps: float = timing.VIDEO_FPS,
                     batch_size: int = 64) -> torch.Tensor:
    """Speech float32 [S] at 16 kHz -> audio embeddings of windows 0 .. windows - 1 ([windows, E], CPU)."""
    features = expert.audio_encoder.encode(audio)  # [F, D]
    chunks = torch.stack([timing.syncnet_audio_window(features, v, fps=fps) for v in range(windows)])  # [W, 2T, D]
    return torch.cat([audio_tower(expert.syncnet, chunks[i:i + batch_size].to(expert.device))
                      for i in range(0, windows, batch_size)]).cpu()


def scores_from_crops(expert: Expert, crops: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT,
                      batch_size: int = 64) -> SyncScores:
    """Face crops [N, S, S, 3] (25 fps) + speech float32 [S'] at 16 kHz -> SyncScores, with the reference's window
    count: min(N, frames of audio) - 5."""
    windows = min(len(crops), timing.num_video_frames(len(audio))) - WINDOW
    if windows < 1:
        raise UserError(f"too short to score: {len(crops)} frames, {len(audio) / timing.AUDIO_SAMPLE_RATE:.2f} s")
    video = video_embeddings(expert, crops[:windows + WINDOW - 1], batch_size)[:windows]
    return sync_scores(video, audio_embeddings(expert, audio, windows, batch_size=batch_size), vshift)


def _read(video, audio) -> tuple[np.ndarray, np.ndarray]:
    frames = np.stack(list(iter_frames(video, target_fps=timing.VIDEO_FPS)))
    speech = load_audio(video if audio is None else audio) if audio is None or isinstance(audio, (str, Path)) \
        else np.asarray(audio, np.float32)
    return frames, speech


def expert_sync_scores(expert, video, audio=None, pads=DEFAULT_PADS, box=None, vshift: int = VSHIFT,
                       batch_size: int = 64, detector: FaceDetector | None = None,
                       raw_boxes: np.ndarray | None = None) -> SyncScores:
    """AV offset / confidence (LSE-C) / distance (LSE-D) of `video` (path; or frames [N, H, W, 3] RGB uint8 at 25
    fps) against `audio` (None: the video's own track; a path; or float32 [S] at 16 kHz) by the expert (`Expert`
    or a checkpoint path). pads / box: the crop recipe the expert was trained with (video_preprocess.py's).
    detector: the caller's FaceDetector (default: a new one on the expert's device); raw_boxes: its boxes of these
    frames, when the caller has them."""
    expert = _as_expert(expert)
    if isinstance(video, (str, Path)):
        frames, speech = _read(video, audio)
    else:
        if audio is None:
            raise ValueError("frames given without audio")
        frames, speech = np.asarray(video), _read_audio(audio)
    if raw_boxes is None:
        detector = detector or _detector(expert, box)
    crops = face_crops(frames, expert.image_size, pads, box, detector, raw_boxes)
    return scores_from_crops(expert, crops, speech, vshift, batch_size)


def _detector(expert: Expert, box) -> FaceDetector | None:
    """A detector on the expert's device (its GPU, not the CPU), unless a fixed box makes it unneeded."""
    return None if box is not None else FaceDetector(device=expert.device)


def _read_audio(audio) -> np.ndarray:
    return load_audio(audio) if isinstance(audio, (str, Path)) else np.asarray(audio, np.float32)


def planted_offsets(expert, video, audio=None, shifts=range(-3, 4), pads=DEFAULT_PADS, box=None,
                    vshift: int = VSHIFT, detector: FaceDetector | None = None) -> dict[int, SyncScores]:
    """The planted-offset check: the same clip with its audio moved k frames earlier (evaluation.sync.shift_audio)
    for each k in `shifts` -> {k: SyncScores}. A working expert reports offset k (within 1) for each. The faces are
    cropped and encoded once."""
    expert = _as_expert(expert)
    if isinstance(video, (str, Path)):
        frames, speech = _read(video, audio)
    else:
        frames, speech = np.asarray(video), _read_audio(audio)
    crops = face_crops(frames, expert.image_size, pads, box, detector or _detector(expert, box))
    windows = min(len(crops), timing.num_video_frames(len(speech))) - WINDOW
    if windows < 1:
        raise UserError(f"too short to score: {len(crops)} frames")
    faces = video_embeddings(expert, crops[:windows + WINDOW - 1])[:windows]
    return {k: sync_scores(faces, audio_embeddings(expert, shift_audio(speech, k), windows), vshift) for k in shifts}
