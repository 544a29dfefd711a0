"""Everything generation needs, loaded once: the UNet from any checkpoint kind, and the codec, audio encoder and
crop size its model card names."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER, AudioEncoder
from lipsync.checkpoint import check_unet_config, load_generator
from lipsync.compile_cache import compiled_before, use_persistent_compile_cache
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
                image_size: int | None = None, device: str = "auto", compile: bool = False,
                autotune: bool = False) -> LipSyncModels:
    """UNet from any checkpoint kind; codec, audio encoder and crop size from its model card (arguments given
    here override it). CUDA: codec + UNet in bf16 (fp16 where bf16 is missing), SDPA attention; NCHW, not
    channels_last: both nets are GroupNorm-heavy and ran slower channels_last (BENCHMARKS.md); compile:
    `compile_models`. autotune: cuDNN times every convolution shape at its first call (cudnn.benchmark): on in
    the avatar server (fixed shapes, recorded once at start-up), off for clips, whose first batch it delayed by
    seconds for no faster frames (BENCHMARKS.md); LIPSYNC_CUDNN_BENCHMARK=1 / 0 overrides it. CPU: fp32. The
    audio encoder stays fp32."""
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
        override = os.environ.get("LIPSYNC_CUDNN_BENCHMARK")
        torch.backends.cudnn.benchmark = autotune if override is None else override != "0"
        unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA (flash / memory-efficient kernels)
        latent_codec.vae.set_attn_processor(AttnProcessor2_0())
    models = LipSyncModels(unet, latent_codec, speech_encoder, int(size), device)
    if compile:
        compile_models(models)
    return models


def compile_models(models: LipSyncModels) -> None:
    """torch.compile the UNet and the codec in place (CUDA; elsewhere nothing changes): fuses the GroupNorm /
    SiLU / residual chains that dominate the VAE. Compiles at the first call of each shape (lip_sync pads every
    call to one shape), into the persistent cache of lipsync.compile_cache: a configuration compiled before on
    the machine loads its kernels instead."""
    if models.device.type != "cuda" or models.compiled:
        return
    use_persistent_compile_cache()
    # lip_sync pads every call to one shape, but a caller may use several batch sizes on the same models
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    models.unet = torch.compile(models.unet)
    models.codec.compile()
    models.compiled = True


COMPILE_RECIPE = 1  # bump when what compile_models compiles changes: older markers then no longer count


def compile_key(models: LipSyncModels, batch_size: int) -> dict:
    """What decides whether compiled kernels of an earlier run fit these models: versions, the GPU, the
    architectures (not the weights: they are inputs of the compiled graphs) and the shapes."""
    unet = getattr(models.unet, "_orig_mod", models.unet)  # the module under torch.compile's wrapper
    device = models.device
    return {"recipe": COMPILE_RECIPE, "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(device) if torch.cuda.is_available() and device.type == "cuda"
            else device.type,
            "dtype": str(models.dtype), "unet": dict(unet.config), "codec": dict(models.codec.vae.config),
            "audio_dim": models.audio_encoder.hidden_size, "image_size": models.image_size,
            "batch_size": batch_size}


# Compiling pays once the time it saves over a clip's frames outweighs its fixed cost: compilation into an empty
# cache (about a minute), or tracing the code and loading the kernels of an earlier run (seconds). In frames of
# 768 px crops: the codec's work, which compilation speeds up, grows with the crop's area.
COLD_COMPILE_PAYS_AFTER = 1500
WARM_COMPILE_PAYS_AFTER = 200


def compile_pays(models: LipSyncModels, batch_size: int, frames: int) -> bool:
    """lip_sync's default (--compile auto): compile on CUDA when `frames` output frames amortise it, counting on
    the kernels of an earlier run of the same configuration where this machine has them (compiled_before)."""
    if models.device.type != "cuda" or models.compiled:
        return False
    work = frames * (models.image_size / 768) ** 2
    warm = compiled_before(compile_key(models, batch_size))
    return work >= (WARM_COMPILE_PAYS_AFTER if warm else COLD_COMPILE_PAYS_AFTER)
