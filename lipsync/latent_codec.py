"""The latent codec: a diffusers AutoencoderKL used deterministically (posterior MEAN, never a sample).

Latents are always scaled: encode(x) = (mean - shift_factor) * scaling_factor, read from the VAE's own config
(0.18215 and no shift for stabilityai/sd-vae-ft-mse), so the UNet sees roughly unit-variance inputs.
"""
from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

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
    NCHW image is strided, and OpenCV on the CPU copies strided arrays (768 px: the paste stage ran 124 -> 218 /s
    once decoded faces arrived contiguous)."""
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


class SubpixelUpsample(torch.nn.Module):
    """The VAE decoder's Upsample2D (nearest 2x, then a 3x3 conv with padding 1) computed at the LOW resolution.

    Output pixel (2i + a, 2j + b) of the conv over the upsampled map reads the 3x3 window of rows 2i + a - 1 ..
    2i + a + 1, which nearest upsampling maps to only two input rows (i - 1, i for a = 0; i, i + 1 for a = 1), the
    same for columns: each of the four phases (a, b) is a 2x2 conv of the input with summed taps. Same result up
    to float rounding, 16 instead of 36 multiply-adds per output pixel and channel pair, and the 4x larger
    upsampled input is never written. Two ways to run it, one per memory format (each the faster there; H200,
    bf16, SD VAE decoder at 768 px):
    - NCHW: the four phases as ONE 2x2 conv with 4x the output channels over the input padded by 1
      ([B, 4 * O, H + 1, W + 1]), each phase cut from its own offset, then interleaved (eager 42.8 img/s; the
      transposed conv below runs at 30.5 there, cuDNN transposing NCHW <-> NHWC around it).
    - channels_last: the same 16 taps as ONE transposed conv, stride 2, 4x4 kernel, padding 1 (input row i
      reaches output rows 2i - 1 .. 2i + 2 through taps 0 .. 3): cuDNN's strided kernel writes the
      interleaved NHWC output directly (compiled channels_last decoder 76-79 img/s; the interleave above in
      NHWC: 31).
    """

    # per output phase, which 3x3 taps sum into each of its two input rows: phase 0 reads rows (i - 1, i),
    # phase 1 rows (i, i + 1)
    _TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
    # per tap k of the 4x4 transposed kernel (output row 2i - 1 + k of input row i), the 3x3 taps it sums
    _TRANSPOSED_TAPS = ((2,), (1, 2), (0, 1), (0,))

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()  # [O, C, 3, 3]
        phases = []
        for a in (0, 1):
            for b in (0, 1):
                rows = torch.stack([weight[:, :, list(taps)].sum(2) for taps in self._TAPS[a]], 2)  # [O, C, 2, 3]
                phases.append(torch.stack([rows[..., list(taps)].sum(-1) for taps in self._TAPS[b]], -1))
        rows = torch.stack([weight[:, :, list(taps)].sum(2) for taps in self._TRANSPOSED_TAPS], 2)  # [O, C, 4, 3]
        transposed = torch.stack([rows[..., list(taps)].sum(-1) for taps in self._TRANSPOSED_TAPS], -1)
        self.out_channels = weight.shape[0]
        self.weight = torch.nn.Parameter(torch.cat(phases), requires_grad=False)  # [4 * O, C, 2, 2]
        self.transposed_weight = torch.nn.Parameter(transposed.transpose(0, 1).contiguous(),
                                                    requires_grad=False)  # [C, O, 4, 4]
        bias = None if conv.bias is None else conv.bias.detach()
        self.bias = None if bias is None else torch.nn.Parameter(bias.clone(), requires_grad=False)  # [O]
        self.phase_bias = None if bias is None else torch.nn.Parameter(bias.repeat(4), requires_grad=False)  # [4 * O]

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        """x [B, C, H, W] -> [B, O, 2H, 2W]. output_size: Upsample2D's argument; only exactly 2x is computed here."""
        height, width = x.shape[-2:]
        if output_size is not None and tuple(output_size) != (2 * height, 2 * width):
            raise ValueError(f"SubpixelUpsample doubles {height}x{width}: cannot give {tuple(output_size)}")
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return torch.nn.functional.conv_transpose2d(x, self.transposed_weight, self.bias, stride=2, padding=1)
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), self.weight, self.phase_bias)
        y = y.unflatten(1, (2, 2, self.out_channels))  # [B, a, b, O, H + 1, W + 1]
        phases = [[y[:, a, b, :, a:a + height, b:b + width] for b in (0, 1)] for a in (0, 1)]
        y = torch.stack([torch.stack(row, -1) for row in phases], -3)  # [B, O, H, a, W, b]
        return y.reshape(y.shape[0], self.out_channels, 2 * height, 2 * width)


def use_subpixel_upsampling(decoder: torch.nn.Module) -> int:
    """Replace every nearest-2x + 3x3-conv Upsample2D of a diffusers decoder by SubpixelUpsample; returns how
    many were replaced (3 in the SD VAE)."""
    from diffusers.models.upsampling import Upsample2D

    replaced = 0
    for module in list(decoder.modules()):
        for name, child in list(module.named_children()):
            conv = getattr(child, "conv", None)
            if (isinstance(child, Upsample2D) and child.use_conv and child.interpolate and child.norm is None
                    and not child.use_conv_transpose and isinstance(conv, torch.nn.Conv2d)
                    and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
                    and conv.dilation == (1, 1) and conv.groups == 1):
                setattr(module, name, SubpixelUpsample(conv).to(conv.weight.device, conv.weight.dtype))
                replaced += 1
    return replaced


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
        the GroupNorm / SiLU / residual chains that dominate the SD VAE. H200, bf16, 768 px, batch 16, images/s:
        encode 77 eager -> 131 compiled -> 146 with the recipe; decode (sub-pixel upsampling) 43 -> 69 -> 85.
        ~40 s of compilation per shape, so callers pad their batches to one shape with padded_call."""
        self.use_compiled_recipe()
        self.vae.encoder = torch.compile(self.vae.encoder)
        self.vae.decoder = torch.compile(self.vae.decoder)

    def use_compiled_recipe(self) -> None:
        """What pays once compiled, and not in eager mode (same images up to float rounding):
        - the decoder channels_last, its upsamplers as transposed convs (SubpixelUpsample): 69 -> 76 img/s; in
          eager mode channels_last loses (PyTorch's NHWC GroupNorm is a slow elementwise kernel: 43 -> 25);
        - attention as explicit matmuls and a float32 softmax (diffusers' AttnProcessor) instead of SDPA: the
          mid-blocks' one head of dim 512 over h x w tokens has no flash kernel, and the memory-efficient one
          was 9 % of the decode; compiled, the softmax is one fused kernel (encode 131 -> 146, decode 76 -> 85).
          It holds a [B, h*w, h*w] score matrix: 2.7 GB in bf16 for 16 images of 768 px."""
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
