"""The latent codec: a diffusers AutoencoderKL used deterministically (posterior MEAN, never a sample).

Latents are always scaled: encode(x) = (mean - shift_factor) * scaling_factor, read from the VAE's own config
(0.18215 and no shift for stabilityai/sd-vae-ft-mse), so the UNet sees roughly unit-variance inputs.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

from lipsync.codec_upsample import use_subpixel_upsampling
from lipsync.compile_cache import use_persistent_compile_cache
from lipsync.errors import UserError

DEFAULT_CODEC = "stabilityai/sd-vae-ft-mse"


def mask_lower_half(images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] in [-1, 1] -> copy with rows H//2: set to 0 (mid grey), the generator's input."""
    masked = images.clone()
    masked[:, :, images.shape[2] // 2:] = 0
    return masked


def uint8_to_model(frames: np.ndarray, device, dtype) -> torch.Tensor:
    """frames uint8 [B, H, W, 3] RGB -> float [B, 3, H, W] in [-1, 1] on `device`."""
    return uint8_tensor_to_model(torch.from_numpy(np.ascontiguousarray(frames)).to(device, non_blocking=True), dtype)


def uint8_tensor_to_model(frames: torch.Tensor, dtype) -> torch.Tensor:
    """frames uint8 [B, H, W, 3] RGB (any device) -> float [B, 3, H, W] in [-1, 1] on the same device."""
    return frames.permute(0, 3, 1, 2).to(dtype).div_(127.5).sub_(1.0)


def model_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] RGB on the CPU."""
    return model_to_uint8_tensor(images).cpu().numpy()


def model_to_uint8_tensor(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] RGB on the same device, contiguous: the permute of an
    NCHW image is strided, and OpenCV on the CPU copies strided arrays (the paste stage ran much slower)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def padded_call(fn, rows: int | None, *tensors: torch.Tensor, pad: bool = True) -> torch.Tensor:
    """fn(*tensors) in calls of `rows` rows (dim 0), a short call zero-padded to `rows` and the padding cut from
    the result. A compiled module then sees one shape: no recompilation for a short last batch, no slower
    dynamic-shape kernels. pad=False (eager modules): the same calls of at most `rows` rows, a short one unpadded.
    Only for modules whose rows are independent (GroupNorm, attention within a sample: the VAE, the UNet)."""
    n = len(tensors[0])
    if rows is None or n == rows or (n < rows and not pad):
        return fn(*tensors)
    if n > rows:
        return torch.cat([padded_call(fn, rows, *(t[i:i + rows] for t in tensors), pad=pad)
                          for i in range(0, n, rows)])
    return fn(*(torch.cat([t, t.new_zeros((rows - n, *t.shape[1:]))]) for t in tensors))[:n]


class LatentCodec(torch.nn.Module):
    def __init__(self, vae: AutoencoderKL, model_id: str = ""):
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        use_subpixel_upsampling(self.vae.decoder)  # same images, fewer FLOPs (the codec is frozen: never saved)
        self.model_id = model_id
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        self.decoder_memory_format = torch.contiguous_format  # use_compiled_recipe: channels_last

    @classmethod
    def from_pretrained(cls, model_id: str = DEFAULT_CODEC, device="cpu", dtype=torch.float32):
        try:
            vae = AutoencoderKL.from_pretrained(model_id, torch_dtype=dtype)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load latent codec {model_id!r}: {str(err).splitlines()[0]}") from None
        return cls(vae, model_id).to(device)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def compile(self) -> None:
        """torch.compile encoder and decoder (CUDA) in the layout that compiles best (use_compiled_recipe): fuses
        the GroupNorm / SiLU / residual chains that dominate the SD VAE (BENCHMARKS.md, inference). ~40 s of
        compilation per shape, so callers pad their batches to one shape with padded_call."""
        use_persistent_compile_cache()
        self.use_compiled_recipe()
        self.vae.encoder = torch.compile(self.vae.encoder)
        self.vae.decoder = torch.compile(self.vae.decoder)

    def use_compiled_recipe(self) -> None:
        """What pays once compiled, and not in eager mode (same images up to float rounding; BENCHMARKS.md):
        - the decoder channels_last, its upsamplers as transposed convs (SubpixelUpsample); in eager mode
          channels_last loses (PyTorch's NHWC GroupNorm is a slow elementwise kernel);
        - attention as explicit matmuls and a float32 softmax (diffusers' AttnProcessor) instead of SDPA: the
          mid-blocks' one head of dim 512 over h x w tokens has no flash kernel; compiled, the softmax is one
          fused kernel. It holds a [B, h*w, h*w] score matrix: 2.7 GB in bf16 for 16 images of 768 px."""
        from diffusers.models.attention_processor import AttnProcessor

        self.vae.set_attn_processor(AttnProcessor())
        if self.vae.post_quant_conv is not None:
            self.vae.post_quant_conv.to(memory_format=torch.channels_last)
        self.vae.decoder.to(memory_format=torch.channels_last)
        self.decoder_memory_format = torch.channels_last

    def latent_size(self, image_size: int) -> int:
        if image_size % self.downsample_factor:
            raise UserError(f"image size {image_size} is not a multiple of the codec's {self.downsample_factor}")
        return image_size // self.downsample_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> scaled posterior-mean latents [B, C, H/f, W/f]."""
        mean = self.vae.encode(images.to(self.dtype)).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """scaled latents [B, C, h, w] -> images [B, 3, h*f, w*f] in about [-1, 1]."""
        latents = latents.to(self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents.contiguous(memory_format=self.decoder_memory_format)).sample
