"""A nearest-2x upsample + 3x3 conv computed at the low resolution (`SubpixelUpsample`): the same images as the
SD VAE decoder's upsamplers with fewer FLOPs. lipsync.codec_upsample puts it into a diffusers decoder."""
from __future__ import annotations

import torch


class SubpixelUpsample(torch.nn.Module):
    """The VAE decoder's Upsample2D (nearest 2x, then a 3x3 conv with padding 1) computed at the LOW resolution.

    Output pixel (2i + a, 2j + b) of the conv over the upsampled map reads the 3x3 window of rows 2i + a - 1 ..
    2i + a + 1, which nearest upsampling maps to only two input rows (i - 1, i for a = 0; i, i + 1 for a = 1), the
    same for columns: each of the four phases (a, b) is a 2x2 conv of the input with summed taps. Same result up
    to float rounding, 16 instead of 36 multiply-adds per output pixel and channel pair, and the 4x larger
    upsampled input is never written. Two ways to run it, one per memory format, each the faster there
    (BENCHMARKS.md, inference):
    - NCHW: the four phases as ONE 2x2 conv with 4x the output channels over the input padded by 1
      ([B, 4 * O, H + 1, W + 1]), each phase cut from its own offset, then interleaved (in NCHW a transposed conv
      makes cuDNN transpose NCHW <-> NHWC around it);
    - channels_last: the same 16 taps as ONE transposed conv, stride 2, 4x4 kernel, padding 1 (input row i
      reaches output rows 2i - 1 .. 2i + 2 through taps 0 .. 3): cuDNN's strided kernel writes the
      interleaved NHWC output directly.
    """

    # per output phase, which 3x3 taps sum into each of its two input rows: phase 0 reads rows (i - 1, i),
    # phase 1 rows (i, i + 1)
    _TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
    # per tap k of the 4x4 transposed kernel (output row 2i - 1 + k of input row i), the 3x3 taps it sums
    _TRANSPOSED_TAPS = ((2,), (1, 2), (0, 1), (0,))

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach().float()  # [O, C, 3, 3]; taps summed in float32, then stored as the conv's
        # phase_taps[a, r, i] = 1 where 3x3 tap i sums into input row r of phase a (the same matrix for columns)
        phase_taps = torch.tensor([[[float(i in taps) for i in range(3)] for taps in rows] for rows in self._TAPS])
        transposed_taps = torch.tensor([[float(i in taps) for i in range(3)] for taps in self._TRANSPOSED_TAPS])
        phase_taps, transposed_taps = phase_taps.to(weight.device), transposed_taps.to(weight.device)
        phases = torch.einsum("ari,bsj,ocij->abocrs", phase_taps, phase_taps, weight)  # [2, 2, O, C, 2, 2]
        transposed = torch.einsum("ki,lj,ocij->ockl", transposed_taps, transposed_taps, weight)  # [O, C, 4, 4]
        self.out_channels = weight.shape[0]
        dtype = conv.weight.dtype
        self.weight = torch.nn.Parameter(phases.flatten(0, 2).to(dtype), requires_grad=False)  # [4 * O, C, 2, 2]
        self.transposed_weight = torch.nn.Parameter(transposed.transpose(0, 1).contiguous().to(dtype),
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
