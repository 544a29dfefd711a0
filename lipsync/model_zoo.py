"""Named architectures built from the real library classes, saved with save_pretrained so they load through
exactly the code path a user's hub id takes (`from_pretrained(folder)`).

- "tiny" models: milliseconds to build; tests and the CPU demo use them (diffusers' own tests use sizes like these).
- real-size architectures with random weights: what the GPU benchmarks time when pretrained weights cannot be
  downloaded (sd-vae-ft-mse's published config, Wav2Vec2-base defaults, the SD-1.5 UNet with 8 input channels).
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model


def unet_config(block_out_channels, layers_per_block=1, heads=4, cross_attention_dim=768, latent_channels=4,
                sample_size=96, norm_num_groups=32) -> dict:
    """Config of a generator UNet: cross-attention in every block but the lowest-resolution one."""
    n = len(block_out_channels)
    return dict(in_channels=2 * latent_channels, out_channels=latent_channels,
                cross_attention_dim=cross_attention_dim, sample_size=sample_size,
                block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
                attention_head_dim=heads, norm_num_groups=norm_num_groups,
                down_block_types=["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1))


def sd15_unet_config() -> dict:
    """SD-1.5's UNet (diffusers' default block layout, cross-attention 768, 8 heads), 8 input channels."""
    return dict(in_channels=8, out_channels=4, sample_size=96, cross_attention_dim=768, attention_head_dim=8,
                block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)


def tiny_unet_config(cross_attention_dim=32, latent_channels=4, sample_size=16) -> dict:
    return unet_config((32, 64), heads=2, cross_attention_dim=cross_attention_dim, latent_channels=latent_channels,
                       sample_size=sample_size, norm_num_groups=8)


def vae_config(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
               norm_num_groups=32, scaling_factor=0.18215) -> dict:
    """sd-vae-ft-mse's published architecture by default (8x downsampling)."""
    n = len(block_out_channels)
    return dict(in_channels=3, out_channels=3, latent_channels=latent_channels,
                block_out_channels=list(block_out_channels), layers_per_block=layers_per_block,
                down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                norm_num_groups=norm_num_groups, scaling_factor=scaling_factor, sample_size=256)


def tiny_vae_config() -> dict:
    """4x downsampling (three blocks), ~0.3M parameters: 64 px crops -> 16x16 latents."""
    return vae_config((16, 32, 32), layers_per_block=1, norm_num_groups=8, scaling_factor=1.0)


def wav2vec2_config(**overrides) -> Wav2Vec2Config:
    """Wav2Vec2-base by default (Wav2Vec2Config() defaults: 12 layers, hidden 768)."""
    return Wav2Vec2Config(**overrides)


def tiny_wav2vec2_config(hidden_size=32) -> Wav2Vec2Config:
    # same conv front-end strides/kernels as the real model (320-sample hop, 400-sample receptive field)
    return Wav2Vec2Config(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=4, mask_time_prob=0.0)


def save_unet(folder, config: dict, seed: int = 0, with_weights: bool = True) -> Path:
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(config)
    if with_weights:
        unet.save_pretrained(folder)
    else:
        unet.save_config(folder)
    return folder


def save_vae(folder, config: dict, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    AutoencoderKL.from_config(config).save_pretrained(folder)
    return Path(folder)


def save_wav2vec2(folder, config: Wav2Vec2Config, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    Wav2Vec2Model(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    return Path(folder)
