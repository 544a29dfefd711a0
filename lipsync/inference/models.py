"""Everything generation needs, loaded once: the UNet from any checkpoint kind, and the codec, audio encoder and
crop size its model card names."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER, AudioEncoder
from lipsync.checkpoint import check_unet_config, load_generator
from lipsync.errors import UserError
from lipsync.latent_codec import DEFAULT_CODEC, LatentCodec


@dataclass
class LipSyncModels:
    """Loaded once per run, per server, or per training run (validation)."""
    unet: UNet2DConditionModel
    codec: LatentCodec
    audio_encoder: AudioEncoder
    image_size: int
    device: torch.device
    compiled: bool = False  # torch.compile'd UNet and codec: calls are padded to one batch shape
    graphs: dict = field(default_factory=dict)  # recorded GraphedGeneration per (batch, audio dim, fixed ref)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but CUDA is not available")
    return device


def _read_unet_config(folder) -> dict:
    try:
        return dict(UNet2DConditionModel.load_config(str(folder)))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read a UNet config from {folder}: {str(err).splitlines()[0]}") from None


def load_models(checkpoint_path, unet_config=None, audio_encoder: str | None = None, codec: str | None = None,
                image_size: int | None = None, device: str = "auto", compile: bool = False) -> LipSyncModels:
    """UNet from any checkpoint kind; codec, audio encoder and crop size from its model card (arguments given
    here override it). CUDA: codec + UNet in bf16 (fp16 where bf16 is missing), SDPA attention, cuDNN autotuning;
    NCHW, not channels_last: both nets are GroupNorm-heavy and ran slower channels_last (BENCHMARKS.md);
    compiled, the codec takes its own recipe (LatentCodec.compile). CPU: fp32. The audio encoder stays fp32: it
    runs once per clip."""
    device = resolve_device(device)
    loaded = load_generator(checkpoint_path, _read_unet_config(unet_config) if unet_config else None)
    card = loaded.card
    dtype = torch.float32
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    latent_codec = LatentCodec.from_pretrained(codec or card.get("codec") or DEFAULT_CODEC, device, dtype)
    speech_encoder = AudioEncoder(audio_encoder or card.get("audio_encoder") or DEFAULT_AUDIO_ENCODER, device)
    check_unet_config(card["unet_config"], speech_encoder.hidden_size, latent_codec.latent_channels)
    # without a card entry, the crop size is the one the UNet's default latent size decodes to
    size = image_size or card.get("image_size") or card["unet_config"]["sample_size"] * latent_codec.downsample_factor
    latent_codec.latent_size(size)  # one-line error when the codec cannot encode that size
    # nn.Module.to: diffusers' own to() warns about keeping its (empty) list of fp32 modules when given a dtype
    unet = torch.nn.Module.to(loaded.unet, device, dtype).eval().requires_grad_(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # crops have one fixed size: autotuned kernels pay off
        unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA (flash / memory-efficient kernels)
        latent_codec.vae.set_attn_processor(AttnProcessor2_0())
    if compile and device.type == "cuda":  # fuses the GroupNorm / SiLU / residual chains that dominate the VAE
        # lip_sync pads every call to one shape, but a caller may use several batch sizes on the same models
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
        unet = torch.compile(unet)
        latent_codec.compile()
    return LipSyncModels(unet, latent_codec, speech_encoder, int(size), device,
                         compiled=compile and device.type == "cuda")
