"""LSE-C / LSE-D / AV offset exactly as joonson/syncnet_python computes them, and the same algorithm for any expert.

The algorithm (`SyncNetInstance.evaluate` + `calc_pdist`): one embedding per 5-frame video window and per matching
audio window; for every window i and shift d in -vshift..vshift the Euclidean distance between video window i and
audio window i + d (audio windows past either end are zero vectors); the mean over windows of each shift's
distance; LSE-D = the smallest mean distance, AV offset = -(the shift that gives it), LSE-C = median of the mean
distances minus LSE-D.

Sign of the offset: a positive offset means the sound comes EARLY (the speech is heard `offset` frames before the
lips move); `shift_audio(audio, k)` makes a clip whose offset is k.

SyncNet v2 windows (the reference's, at 25 fps and 16 kHz): video frames [v, v + 5) <-> MFCC columns
[4v, 4v + 20) (100 MFCC frames per second); windows v = 0 .. min(frames, samples // 640) - 6 (the reference stops
one window short of the last full one; kept, so the numbers match).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lipsync.timing import AUDIO_SAMPLE_RATE, VIDEO_FPS

VSHIFT = 15  # frames each way (syncnet_python's default --vshift)
WINDOW = 5  # video frames per SyncNet window
MFCC_PER_FRAME = 4  # MFCC columns per video frame (100 / 25)
SAMPLES_PER_FRAME = int(AUDIO_SAMPLE_RATE / VIDEO_FPS)  # 640
SYNCNET_V2_SIZE = 224  # face crop side the network takes


@dataclass
class SyncScores:
    offset: int  # AV offset in frames (> 0: the sound comes early)
    confidence: float  # LSE-C (higher is better)
    distance: float  # LSE-D (lower is better)
    windows: int  # 5-frame windows scored
    mean_distances: list[float]  # [2 vshift + 1] mean distance per shift, shift -vshift first

    def to_dict(self) -> dict:
        return asdict(self)


def sync_scores(video_embeddings: torch.Tensor, audio_embeddings: torch.Tensor, vshift: int = VSHIFT) -> SyncScores:
    """video_embeddings, audio_embeddings [N, E] (window i of each covers the same time) -> SyncScores.

    Computed as syncnet_python's calc_pdist + evaluate do (float32, torch.pairwise_distance with its eps), so equal
    embeddings give equal numbers."""
    video = video_embeddings.float().cpu()
    audio = audio_embeddings.float().cpu()
    if video.shape != audio.shape or video.dim() != 2 or len(video) == 0:
        raise ValueError(f"need [N, E] embeddings of equal shape with N > 0, got {tuple(video.shape)} and "
                         f"{tuple(audio.shape)}")
    span = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # [N + 2 vshift, E]
    windows = padded.unfold(0, span, 1).transpose(1, 2)  # [N, span, E]: audio windows i - vshift .. i + vshift
    dists = F.pairwise_distance(video[:, None, :].expand_as(windows), windows)  # [N, span]
    mean = dists.mean(0)  # [span]
    minval, minidx = torch.min(mean, 0)
    return SyncScores(offset=int(vshift - minidx), confidence=float(torch.median(mean) - minval),
                      distance=float(minval), windows=len(video), mean_distances=[float(v) for v in mean])


def shift_audio(audio: np.ndarray, frames: int, fps: float = VIDEO_FPS,
                sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """A planted offset: the audio moved `frames` video frames EARLIER (frames > 0; later for frames < 0), same
    length, silence where nothing is left. sync_scores of the shifted clip then gives offset `frames`."""
    audio = np.asarray(audio)
    shift = int(round(frames * sample_rate / fps))
    out = np.zeros_like(audio)
    if shift >= 0:
        out[:len(audio) - shift] = audio[shift:]
    else:
        out[-shift:] = audio[:len(audio) + shift]
    return out


# ---------------------------------------------------------------------------------------------- SyncNet v2

def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16, as FFmpeg's pcm_s16le writes it (x * 32768, rounded, clipped): the sample
    scale the reference's MFCCs (log energy in the first coefficient) are computed at."""
    return np.clip(np.rint(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def mfcc(audio_pcm16: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """int16 [S] -> float64 [13, M]: python_speech_features.mfcc with its defaults, transposed, as the reference."""
    import python_speech_features

    return np.ascontiguousarray(python_speech_features.mfcc(audio_pcm16, sample_rate).T)


@torch.no_grad()
def syncnet_v2_embeddings(model, crops_bgr: np.ndarray, audio_pcm16: np.ndarray, batch_size: int = 20,
                          device="cpu", dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """crops_bgr uint8 [N, 224, 224, 3] (BGR, one per 25-fps frame), audio int16 [S] at 16 kHz ->
    (video, audio) embeddings [W, 1024] float32 on the CPU, W = min(N, S // 640) - 5 windows."""
    crops = np.asarray(crops_bgr)
    if crops.ndim != 4 or crops.shape[1:] != (SYNCNET_V2_SIZE, SYNCNET_V2_SIZE, 3):
        raise ValueError(f"SyncNet v2 takes [N, {SYNCNET_V2_SIZE}, {SYNCNET_V2_SIZE}, 3] crops, got {crops.shape}")
    cepstra = torch.from_numpy(mfcc(audio_pcm16)).float()  # [13, M]
    windows = min(len(crops), len(audio_pcm16) // SAMPLES_PER_FRAME) - WINDOW
    if windows < 1:
        raise ValueError(f"too short for one SyncNet window: {len(crops)} frames, {len(audio_pcm16)} samples")
    model = model.to(device).eval()
    video_out, audio_out = [], []
    for start in range(0, windows, batch_size):
        idx = range(start, min(windows, start + batch_size))
        # [B, 5, H, W, 3] uint8 -> [B, 3, 5, H, W] float (0..255, BGR, as cv2.imread gives the reference)
        lips = torch.from_numpy(np.stack([crops[v:v + WINDOW] for v in idx])).to(device)
        lips = lips.permute(0, 4, 1, 2, 3).to(dtype)
        sound = torch.stack([cepstra[:, v * MFCC_PER_FRAME:v * MFCC_PER_FRAME + 20] for v in idx])[:, None]
        video_out.append(model.forward_lip(lips).float().cpu())
        audio_out.append(model.forward_aud(sound.to(device, dtype)).float().cpu())
    return torch.cat(video_out), torch.cat(audio_out)


def syncnet_v2_scores(model, crops_bgr: np.ndarray, audio_pcm16: np.ndarray, batch_size: int = 20, device="cpu",
                      vshift: int = VSHIFT) -> SyncScores:
    """LSE-C / LSE-D / offset of face crops and their audio with SyncNet v2 (syncnet_python's evaluate())."""
    video, audio = syncnet_v2_embeddings(model, crops_bgr, audio_pcm16, batch_size, device)
    return sync_scores(video, audio, vshift)
