"""THE generation step on the device: face crops + audio windows -> generated faces, and its CUDA graph.

    generate_faces(models, crops, repeat, audio, reference, pad_to)   # uint8 crops in, uint8 faces out
      = encode_faces (what does not depend on the speech) + faces_from_latents (UNet + decode)

Used by lip_sync (batch after batch, eager or replayed as one CUDA graph) and by anything else that makes faces
from crops (a streaming avatar, a server)."""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from lipsync import timing
from lipsync.cuda_graph import record, recording
from lipsync.faces import crop_faces
from lipsync.inference.models import LipSyncModels
from lipsync.latent_codec import (
    mask_lower_half,
    model_to_uint8_tensor,
    padded_call,
    uint8_tensor_to_model,
    uint8_to_model,
)
from models.unet import generate


def encode_faces(models: LipSyncModels, crops: torch.Tensor, reference: torch.Tensor | None,
                 pad_to: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Face crops uint8 [U, S, S, 3] (on the models' device) -> (masked latents [U, C, h, w], each crop's own
    latent [U, C, h, w] as its reference, or None when a fixed `reference` is given): what generation needs that
    does not depend on the speech (an avatar caches it)."""
    x = uint8_tensor_to_model(crops, models.dtype)  # [U, 3, S, S] in [-1, 1]
    # latents leave in one layout (NCHW, as load_models lays the UNet out) whatever the codec's last kernel wrote
    # (oneDNN writes channels_last on the CPU): the UNet picks its kernels by layout, so latents from here and
    # latents read back from an avatar's cache give the same faces
    if reference is not None:
        return padded_call(models.codec.encode, pad_to, mask_lower_half(x)).contiguous(), None
    # each frame's own face: one codec call for masked + reference, in calls of pad_to rows like every other codec
    # call (one compiled shape; half the activations and attention scores of one 2 x pad_to call)
    masked, own = padded_call(models.codec.encode, pad_to, torch.cat([mask_lower_half(x), x])).chunk(2)
    return masked.contiguous(), own.contiguous()


def faces_from_latents(models: LipSyncModels, masked: torch.Tensor, references: torch.Tensor, audio: torch.Tensor,
                       pad_to: int | None, stage=None) -> torch.Tensor:
    """Masked latents [F, C, h, w] + reference latents [F, C, h, w] + audio windows [F, 10, D] -> UNet -> decoded
    faces uint8 [F, S, S, 3], on the models' device."""
    stage = stage or (lambda name: contextlib.nullcontext())
    with stage("unet"):
        latents = padded_call(lambda *t: generate(models.unet, *t), pad_to, masked, references, audio)
    with stage("vae_decode"):
        images = padded_call(models.codec.decode, pad_to, latents)  # [F, 3, S, S] in about [-1, 1]
        return model_to_uint8_tensor(images)


def generate_faces(models: LipSyncModels, crops: torch.Tensor, repeat: torch.Tensor, audio: torch.Tensor,
                   reference: torch.Tensor | None, pad_to: int | None, stage=None) -> torch.Tensor:
    """Distinct face crops uint8 [U, S, S, 3] -> masked (+ own reference) latents, repeated to the F output rows
    by `repeat` [F] (index into the crops) -> UNet on the rows' audio windows [F, 10, D] -> decoded faces uint8
    [F, S, S, 3], all on the models' device.

    reference: one fixed scaled latent [1, C, h, w], or None (each crop is its own reference). pad_to: compiled
    models get every codec / UNet call padded to this many rows. stage(name): context manager timing each part.
    """
    stage = stage or (lambda name: contextlib.nullcontext())
    with stage("vae_encode"):
        masked, own = encode_faces(models, crops, reference, pad_to)
        masked = masked[repeat]  # [F, C, h, w]
        references = own[repeat] if own is not None else reference.expand(len(repeat), -1, -1, -1)
    return faces_from_latents(models, masked, references, audio, pad_to, stage)


def reference_latent(models: LipSyncModels, frame: np.ndarray, box: np.ndarray, pad_to: int | None) -> torch.Tensor:
    """The scaled latent [1, C, h, w] of the face in `frame` (RGB uint8 [H, W, 3]) inside square `box` [4]: a
    fixed reference for every generated frame (--ref_frame), encoded once (padded to `pad_to` rows)."""
    crop = crop_faces([frame], box[None], models.image_size)  # [1, S, S, 3]
    return padded_call(models.codec.encode, pad_to, uint8_to_model(crop, models.device, models.dtype))


class GraphedGeneration:
    """generate_faces for batches of up to `batch_size` rows as ONE CUDA graph: a batch is a copy in, one replay
    and a copy out, so the GPU never waits for Python to launch each kernel while other threads hold the GIL
    (BENCHMARKS.md, inference). Inputs live in fixed buffers; rows past a short batch's end hold stale data that
    is computed and ignored (rows are independent). Recorded once per (models, crop size, batch size, audio dim,
    fixed reference or not) and kept on the models, with its memory pool (one batch's activations)."""

    def __init__(self, models: LipSyncModels, batch_size: int, audio_dim: int, fixed_reference: bool):
        size, device = models.image_size, models.device
        self._lock = threading.Lock()
        self.crops = torch.zeros(batch_size, size, size, 3, dtype=torch.uint8, device=device)
        self.repeat = torch.arange(batch_size, device=device)
        self.audio = torch.zeros(batch_size, timing.GENERATOR_AUDIO_FRAMES, audio_dim, device=device)
        latent = models.codec.latent_size(size)
        self.reference = torch.zeros(1, models.codec.latent_channels, latent, latent, dtype=models.dtype,
                                     device=device) if fixed_reference else None

        # faces: [batch_size, S, S, 3] uint8, rewritten by every replay
        self.graph, self.faces = record(device, "the generation step", lambda: generate_faces(
            models, self.crops, self.repeat, self.audio, self.reference, None))

    @classmethod
    def for_models(cls, models: LipSyncModels, batch_size: int, audio_dim: int,
                   fixed_reference: bool) -> "GraphedGeneration":
        """The models' graph for this batch size and reference kind, recorded on first use."""
        key = (models.image_size, batch_size, audio_dim, fixed_reference)  # models may be replace()d with a size
        with recording:
            if key not in models.graphs:
                models.graphs[key] = cls(models, batch_size, audio_dim, fixed_reference)
        return models.graphs[key]

    def __call__(self, crops: np.ndarray, inverse: np.ndarray, audio: torch.Tensor,
                 reference: torch.Tensor | None = None) -> np.ndarray:
        """crops uint8 [U, S, S, 3], inverse [F] (row of each frame among the crops), audio [F, 10, D], the
        run's fixed reference latent [1, C, h, w] (graphs recorded with one) -> faces uint8 [F, S, S, 3] (CPU)."""
        num = len(inverse)
        with self._lock:  # buffers and output are shared by every run on these models (e.g. a server's threads)
            if self.reference is not None:
                self.reference.copy_(reference)
            self.crops[:len(crops)].copy_(torch.from_numpy(crops))
            self.repeat[:num].copy_(torch.from_numpy(inverse))
            self.audio[:num].copy_(audio)
            self.graph.replay()
            return self.faces[:num].cpu().numpy()


class GraphedLatentGeneration:
    """faces_from_latents for batches of exactly `batch_size` rows as ONE CUDA graph (UNet + decode): the step of
    a streaming avatar, whose masked and reference latents were encoded once when it was prepared. Inputs are
    fixed device buffers that the caller fills (rows past its own are computed and ignored); recorded once per
    (models, batch size, audio dim) and kept on the models. Callers hold `lock` from filling to reading."""

    def __init__(self, models: LipSyncModels, batch_size: int, audio_dim: int):
        size, device = models.image_size, models.device
        latent = models.codec.latent_size(size)
        shape = (batch_size, models.codec.latent_channels, latent, latent)
        self.lock = threading.Lock()
        self.masked = torch.zeros(shape, dtype=models.dtype, device=device)
        self.references = torch.zeros(shape, dtype=models.dtype, device=device)
        self.audio = torch.zeros(batch_size, timing.GENERATOR_AUDIO_FRAMES, audio_dim, device=device)
        # faces: [batch_size, S, S, 3] uint8, rewritten by every replay
        self.graph, self.faces = record(device, "the generation step", lambda: faces_from_latents(
            models, self.masked, self.references, self.audio, None))

    @classmethod
    def for_models(cls, models: LipSyncModels, batch_size: int, audio_dim: int) -> "GraphedLatentGeneration":
        """The models' graph for this batch size, recorded on first use."""
        key = ("latents", batch_size, audio_dim)
        with recording:
            if key not in models.graphs:
                models.graphs[key] = cls(models, batch_size, audio_dim)
        return models.graphs[key]

    def __call__(self, masked: torch.Tensor, references: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """masked, references [F, C, h, w], audio [F, 10, D] (F <= batch_size) -> faces uint8 [F, S, S, 3], a
        copy on the models' device."""
        num = len(masked)
        with self.lock:
            self.masked[:num].copy_(masked)
            self.references[:num].copy_(references)
            self.audio[:num].copy_(audio)
            self.graph.replay()
            return self.faces[:num].clone()
