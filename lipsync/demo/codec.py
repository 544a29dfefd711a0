"""The demo's codec: a tiny AutoencoderKL fitted on rendered faces of people who are in no clip (a demo-only
stand-in for the SD VAE), saved with save_pretrained so it loads like a hub VAE."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lipsync import model_zoo
from lipsync.demo import synthetic
from lipsync.faces import crop_faces

VAE_STREAM = 7907  # seed stream of the codec's training faces: people who are in no clip


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
