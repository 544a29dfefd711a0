"""Frozen speech encoder: any Hugging Face Wav2Vec2-family model (by hub id or local folder) -> [frames, hidden].

Long audio is cut into chunks that overlap by `context_s` on each side; only each chunk's central frames are
kept, so the output has exactly `timing.num_feature_frames(len(audio))` frames (what one pass gives: no drift,
no padding frames) while attention memory stays bounded on a 10-minute file.

Normalisation (wav2vec2-base-960h's feature extractor: zero mean, unit variance) is computed from `Moments`, the
running count / sum / sum of squares of the samples in float64. A whole clip and a stream fed chunk by chunk
then normalise with the same numbers: sums of 16-bit PCM samples are exact in float64 whatever the chunking
(lipsync.realtime.streaming relies on it to reproduce this encoder exactly when it sees the whole clip).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from lipsync.cuda_graph import record
from lipsync.errors import UserError
from lipsync.timing import AUDIO_SAMPLE_RATE, FEATURE_HOP, FEATURE_RECEPTIVE_FIELD, num_feature_frames

DEFAULT_AUDIO_ENCODER = "facebook/wav2vec2-base-960h"
NORMALIZE_EPS = 1e-7  # added to the variance, as the Hugging Face feature extractor does


@dataclass
class Moments:
    """Count, sum and sum of squares (float64) of the samples seen so far: the normalisation statistics."""
    count: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, dtype=np.float64)
        self.count += samples.size
        self.total += float(samples.sum())
        self.squares += float(np.square(samples).sum())

    @classmethod
    def of(cls, samples: np.ndarray) -> "Moments":
        moments = cls()
        moments.add(samples)
        return moments

    def mean_std(self, min_std: float = 0.0) -> tuple[float, float]:
        """(mean, standard deviation); the deviation is at least `min_std` (a stream's floor for silence)."""
        mean = self.total / max(self.count, 1)
        variance = max(self.squares / max(self.count, 1) - mean * mean, 0.0)
        return mean, max(float(np.sqrt(variance + NORMALIZE_EPS)), min_std)


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
        # frozen: a reparametrised weight (Wav2Vec2's weight-normed positional convolution) is a constant, computed
        # once here with the same function instead of at every call (a kernel in every streaming window's step)
        for module in self.model.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self.model_id = model_id
        self.hidden_size = int(config.hidden_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk_frames = int(chunk_s * AUDIO_SAMPLE_RATE / FEATURE_HOP)
        self.context_frames = int(context_s * AUDIO_SAMPLE_RATE / FEATURE_HOP)

    def normalized(self, audio: np.ndarray, moments: Moments, min_std: float = 0.0) -> np.ndarray:
        """audio float32 [..., S] scaled by `moments` (mean 0, unit variance over the samples they counted);
        unchanged for encoders that do not normalise."""
        if not self.normalize:
            return np.asarray(audio, dtype=np.float32)
        mean, std = moments.mean_std(min_std)
        return (np.asarray(audio, dtype=np.float32) - np.float32(mean)) / np.float32(std)

    @torch.inference_mode()
    def hidden_states(self, windows: np.ndarray) -> torch.Tensor:
        """Normalised audio windows float32 [B, S] (S >= 400) -> hidden states [B, num_feature_frames(S), hidden]
        on the encoder's device, in one pass (the windows of several streams batched together)."""
        signal = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        # lengths vary (a clip's last chunk; a stream's windows while its context fills, batches of 1..N streams):
        # cuDNN's autotuning (cudnn.benchmark, on in the servers: load_models' autotune) would time the convolutions
        # again for every new shape, a stall of a tenth of a second each time
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                        deterministic=torch.backends.cudnn.deterministic,
                                        allow_tf32=torch.backends.cudnn.allow_tf32):
            return self.model(signal.to(self.device, self.dtype)).last_hidden_state

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """audio float32 [S] at 16 kHz mono -> float32 [num_feature_frames(S), hidden] on the CPU."""
        audio = np.asarray(audio, dtype=np.float32)
        total = num_feature_frames(len(audio))
        if total == 0:
            raise UserError(f"audio too short: {len(audio)} samples (< {FEATURE_RECEPTIVE_FIELD} at 16 kHz)")
        # over the whole signal, so every chunk sees the same scaling
        signal = self.normalized(audio, Moments.of(audio))
        out = []
        for first in range(0, total, self.chunk_frames):
            last = min(first + self.chunk_frames, total)  # keep frames [first, last)
            lo = max(0, first - self.context_frames)
            hi = min(total, last + self.context_frames)
            # feature frame j sees samples [320 j, 320 j + 400)
            piece = signal[lo * FEATURE_HOP: (hi - 1) * FEATURE_HOP + FEATURE_RECEPTIVE_FIELD]
            hidden = self.hidden_states(piece[None])[0]
            assert hidden.shape[0] == hi - lo, (hidden.shape, hi - lo)
            out.append(hidden[first - lo: last - lo].float().cpu())
        return torch.cat(out)


class GraphedHiddenStates:
    """AudioEncoder.hidden_states of up to `batch_size` windows of exactly `length` samples as ONE CUDA graph: a
    copy in, a replay, a copy out, none of Wav2Vec2's few hundred kernel launches from Python. A stream's windows
    all have one length once its context is full; a server's tick encodes one window per stream that moved on, so
    most calls are small, where the launches cost most (BENCHMARKS.md, real time). Rows past a short batch's end
    hold stale windows that are computed and ignored (rows are independent)."""

    def __init__(self, encoder: AudioEncoder, batch_size: int, length: int):
        # cuDNN autotunes this one fixed shape once here, if cudnn.benchmark is on (load_models' autotune)
        with torch.inference_mode():
            self.windows = torch.zeros(batch_size, length, dtype=encoder.dtype, device=encoder.device)
            self.graph, self.hidden = record(encoder.device, "the speech encoder",
                                             lambda: encoder.model(self.windows).last_hidden_state)

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> torch.Tensor:
        """Normalised windows float32 [B, length] (B <= batch_size) -> hidden states [B, num_feature_frames(length),
        hidden] on the device: a view that the next replay rewrites."""
        num = len(windows)
        self.windows[:num].copy_(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        self.graph.replay()
        return self.hidden[:num]
