"""Reconstruction quality: SSIM and PSNR (torchmetrics) of the generated face against the reference video's face,
over the whole face crop and over the mouth region.

Both videos are cropped with the SAME boxes (the reference video's, lipsync.faces' recipe), so the numbers measure
the pixels, not the detector. Mouth region: the rectangle around the lower-face region that inference pastes back
(lipsync.faces MASK_TOP..MASK_BOTTOM rows, MASK_HALF_WIDTH either side of the centre). SSIM is Wang et al.'s
(Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) on RGB uint8 values (data range 255); per-frame values are
averaged over the video's frames.
"""
from __future__ import annotations

import numpy as np
import torch

from lipsync.faces import MASK_BOTTOM, MASK_HALF_WIDTH, MASK_TOP


def mouth_slice(size: int) -> tuple[slice, slice]:
    """(rows, cols) of the mouth region of a size x size face crop."""
    return (slice(int(round(MASK_TOP * size)), int(round(MASK_BOTTOM * size))),
            slice(int(round((0.5 - MASK_HALF_WIDTH) * size)), int(round((0.5 + MASK_HALF_WIDTH) * size))))


@torch.no_grad()
def ssim_psnr(generated: np.ndarray, reference: np.ndarray, batch_size: int = 64, device="cpu") -> dict[str, float]:
    """Face crops [N, S, S, 3] uint8 (frame i of each compared) -> mean SSIM / PSNR over frames, face and mouth:
    {"ssim_face", "psnr_face", "ssim_mouth", "psnr_mouth"}."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if generated.shape != reference.shape or generated.ndim != 4:
        raise ValueError(f"need two [N, S, S, 3] crop stacks of one shape, got {generated.shape}, {reference.shape}")
    rows, cols = mouth_slice(generated.shape[1])
    sums = {"ssim_face": 0.0, "psnr_face": 0.0, "ssim_mouth": 0.0, "psnr_mouth": 0.0}
    for i in range(0, len(generated), batch_size):
        pair = [torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device).permute(0, 3, 1, 2).float()
                for x in (generated, reference)]
        for region, (fake, real) in (("face", pair), ("mouth", [x[:, :, rows, cols] for x in pair])):
            ssim = structural_similarity_index_measure(fake, real, data_range=255.0, reduction="none")
            psnr = peak_signal_noise_ratio(fake, real, data_range=255.0, reduction="none", dim=(1, 2, 3))
            sums[f"ssim_{region}"] += float(ssim.sum())
            sums[f"psnr_{region}"] += float(psnr.clamp(max=100.0).sum())  # identical frames: inf -> 100 dB
    return {key: value / len(generated) for key, value in sums.items()}
