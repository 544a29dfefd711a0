"""Shared fixtures: tiny real models saved with save_pretrained, loaded by the same path a hub id takes."""
import importlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from lipsync import model_zoo  # noqa: E402

# One process only: skip DeepSpeed's 40-55 s JIT build of its shared-memory comm op (useless with 1 rank).
# importlib, because `import deepspeed.comm.torch as m` binds the real torch package.
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

torch.set_num_threads(2)
CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "clips"


@pytest.fixture(scope="session")
def clips_dir():
    assert CLIPS.is_dir(), f"test clips missing at {CLIPS}"
    return CLIPS


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of a tiny VAE (4x down, 4 latent channels), Wav2Vec2 (hidden 32) and UNet (cross-attn 32)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "vae": str(model_zoo.save_vae(root / "vae", model_zoo.tiny_vae_config())),
        "wav2vec2": str(model_zoo.save_wav2vec2(root / "wav2vec2", model_zoo.tiny_wav2vec2_config())),
        "unet": str(model_zoo.save_unet(root / "unet", model_zoo.tiny_unet_config(), with_weights=False)),
        "root": root,
    }
