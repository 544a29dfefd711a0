"""Frozen speech encoder: any Hugging Face Wav2Vec2-family model (by hub id or local folder) -> [frames, hidden].

Long audio is cut into chunks that overlap by `context_s` on each side; only each chunk's central frames are
kept, so the output has exactly `timing.num_feature_frames(len(audio))` frames (what one pass gives: no drift,
no padding frames) while attention memory stays bounded on a 10-minute file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from lipsync.errors import UserError
from lipsync.timing import AUDIO_SAMPLE_RATE, FEATURE_HOP, FEATURE_RECEPTIVE_FIELD, num_feature_frames

DEFAULT_AUDIO_ENCODER = "facebook/wav2vec2-base-960h"


def _only_a_path(model_id: str) -> bool:
    """A name the hub would refuse as a repo id ('name' or 'org/name'), so it can only mean a local folder."""
    return model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id


class AudioEncoder:
    def __init__(self, model_id: str = DEFAULT_AUDIO_ENCODER, device="cpu", dtype=torch.float32,
                 chunk_s: float = 20.0, context_s: float = 2.0):
        local = Path(model_id).expanduser()
        if not local.exists() and _only_a_path(model_id):
            raise UserError(f"audio encoder folder {model_id} not found (a hub id is 'name' or 'org/name')")
        try:
            config = AutoConfig.from_pretrained(model_id)
            self.model = AutoModel.from_pretrained(model_id, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0].rstrip(".")
            where = "" if local.exists() else f"; there is no folder {local} either"
            raise UserError(f"cannot load audio encoder {model_id!r}: {reason}{where}") from None
        try:  # wav2vec2-base-960h normalises each input to zero mean / unit variance; some models do not
            self.normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(model_id), "do_normalize", True))
        except (OSError, ValueError):
            self.normalize = True
        self.model.eval().requires_grad_(False).to(device)
        self.model_id = model_id
        self.hidden_size = int(config.hidden_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_frames = int(chunk_s * AUDIO_SAMPLE_RATE / FEATURE_HOP)
        self.context_frames = int(context_s * AUDIO_SAMPLE_RATE / FEATURE_HOP)

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """audio float32 [S] at 16 kHz mono -> float32 [num_feature_frames(S), hidden] on the CPU."""
        audio = np.asarray(audio, dtype=np.float32)
        total = num_feature_frames(len(audio))
        if total == 0:
            raise UserError(f"audio too short: {len(audio)} samples (< {FEATURE_RECEPTIVE_FIELD} at 16 kHz)")
        if self.normalize:  # over the whole signal, so every chunk sees the same scaling
            audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        signal = torch.from_numpy(audio)
        out = []
        for first in range(0, total, self.chunk_frames):
            last = min(first + self.chunk_frames, total)  # keep frames [first, last)
            lo = max(0, first - self.context_frames)
            hi = min(total, last + self.context_frames)
            # feature frame j sees samples [320 j, 320 j + 400)
            piece = signal[lo * FEATURE_HOP: (hi - 1) * FEATURE_HOP + FEATURE_RECEPTIVE_FIELD]
            hidden = self.model(piece[None].to(self.device, self.dtype)).last_hidden_state[0]
            assert hidden.shape[0] == hi - lo, (hidden.shape, hi - lo)
            out.append(hidden[first - lo: last - lo].float().cpu())
        return torch.cat(out)
