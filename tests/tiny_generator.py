"""A tiny generator checkpoint (Lightning layout, with its model card) over the session's tiny codec and audio
encoder: what the inference, avatar and server tests load through the user's code path."""
from __future__ import annotations

from pathlib import Path

import torch

from lipsync import model_zoo
from lipsync.checkpoint import encode_model_card
from models.unet import AUDIO_POSITIONS, build_unet

IMAGE_SIZE = 64  # tiny VAE: 4x down -> 16x16 latents, the tiny UNet's sample size


def write_tiny_generator(tiny_models: dict, path: Path, seed: int = 0) -> Path:
    config = model_zoo.tiny_unet_config()  # cross-attention 32 = the tiny Wav2Vec2's hidden size
    torch.manual_seed(seed)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": tiny_models["wav2vec2"],
            "audio_hidden_size": 32, "codec": tiny_models["vae"], "image_size": IMAGE_SIZE,
            "audio_positions": AUDIO_POSITIONS}
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    torch.save({"state_dict": state, "epoch": 0}, path)
    return path
