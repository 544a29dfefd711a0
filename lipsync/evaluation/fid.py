"""FID with maintained libraries: torch-fidelity's InceptionV3 feature extractor (the TF-ported network and the
TF1-compatible bilinear resize to 299 px of the original FID code; 2048-d pool features of uint8 RGB images) and
torchmetrics' FrechetInceptionDistance for the statistics and the Frechet distance (float64).

Why this pair: pytorch-fid, clean-fid and torch-fidelity's own entry points all import torchvision, whose PyPI
wheels cannot load beside a CPU torch (their ops are CUDA-linked); torch-fidelity's feature extractor module needs
only torch. torch-fidelity is installed OUTSIDE the import path (the Makefile: `--target .venv/torch-fidelity`;
elsewhere point LIPSYNC_TORCH_FIDELITY at such a folder), because installed normally its package __init__ (which
imports torchvision) runs whenever torchmetrics is imported, and so breaks Lightning. This module imports only
`torch_fidelity.feature_extractor_inceptionv3` from there, under a package object whose __init__ is not run.

Features are computed per video and can be cached (they are what FID needs: mean and covariance of the set);
`frechet_distance(real, fake)` then gives the same number torchmetrics' FrechetInceptionDistance gives when fed the
images (tests/test_eval_fid.py).
"""
from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import torch

from lipsync.errors import UserError
from lipsync.evaluation.weights import WEIGHTS, weight_path

FEATURES = 2048
TORCH_FIDELITY_ENV = "LIPSYNC_TORCH_FIDELITY"
_MODULE = "torch_fidelity.feature_extractor_inceptionv3"


def torch_fidelity_folder() -> Path:
    """Where torch-fidelity's package folder `torch_fidelity/` lies when it is not importable normally."""
    return Path(os.environ.get(TORCH_FIDELITY_ENV) or Path(sys.prefix) / "torch-fidelity")


def inception_class():
    """torch-fidelity's FeatureExtractorInceptionV3, imported without running torch_fidelity/__init__.py."""
    if _MODULE in sys.modules:
        return sys.modules[_MODULE].FeatureExtractorInceptionV3
    spec = importlib.util.find_spec("torch_fidelity") if "torch_fidelity" not in sys.modules else None
    if spec is not None and spec.submodule_search_locations:
        location = Path(list(spec.submodule_search_locations)[0])
    else:
        location = torch_fidelity_folder() / "torch_fidelity"
    if "torch_fidelity" not in sys.modules:
        if not (location / "feature_extractor_inceptionv3.py").is_file():
            raise UserError(f"FID needs torch-fidelity's InceptionV3: pip install --no-deps --target "
                            f"{torch_fidelity_folder()} torch-fidelity==0.4.0 (or set {TORCH_FIDELITY_ENV})")
        spec = importlib.machinery.ModuleSpec("torch_fidelity", None, is_package=True)
        spec.submodule_search_locations = [str(location)]
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)  # __init__.py is never run
    return importlib.import_module(_MODULE).FeatureExtractorInceptionV3


def load_inception(weights_dir, check: str = "sha256", device="cpu") -> torch.nn.Module:
    """The FID Inception from `weights_dir`/pt_inception-2015-12-05-6726825d.pth (checked; strict load)."""
    path = weight_path(weights_dir, "inception", check)
    try:
        model = inception_class()("inception-v3-compat", [str(FEATURES)], feature_extractor_weights_path=str(path))
    except RuntimeError as err:  # strict load_state_dict: missing / unexpected keys, shape mismatches
        raise UserError(f"{path} does not hold {WEIGHTS['inception'].name}'s InceptionV3 weights: "
                        f"{str(err).splitlines()[0]}") from None
    except Exception as err:  # torch.load of a file that is no checkpoint
        raise UserError(f"{path} is not a state dict torch can read ({type(err).__name__})") from None
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """RGB uint8 images [N, H, W, 3] (any size: resized to 299 inside) -> float32 [N, 2048]."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device).permute(0, 3, 1, 2)
        out.append(model(batch.contiguous())[0].float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURES), np.float32)


class _Features(torch.nn.Module):
    """The 'feature extractor' that passes features through: FrechetInceptionDistance then works on cached ones."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two sets of Inception features [N, 2048] and [M, 2048] (N, M >= 2), torchmetrics' computation."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]))
    metric.update(torch.from_numpy(np.asarray(real, np.float32)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, np.float32)), real=False)
    return float(metric.compute())
