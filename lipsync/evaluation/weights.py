"""The external weight files of the evaluation, all in ONE folder (`evaluate.py --weights_dir DIR`).

None can be downloaded here; most users have them already. Each file is checked before use: by default its size
and sha256 must be the published file's (numbers comparable with published tables); `check="architecture"`
accepts any file whose contents load strictly into the network (same keys and shapes; for the ONNX model, the
same input and output shapes): re-saved copies, or the random weights the tests write.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lipsync.errors import UserError

FLAG = "--weights_dir"
CHECKS = ("sha256", "architecture")


@dataclass(frozen=True)
class WeightFile:
    name: str  # file name inside the weights folder
    size: int  # bytes
    sha256: str
    source: str  # where to get it
    used_for: str


WEIGHTS = {
    "syncnet_v2": WeightFile(
        "syncnet_v2.model", 54_573_114, "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442",
        "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model (syncnet_python's download_model.sh)",
        "LSE-C, LSE-D, AV offset"),
    "s3fd": WeightFile(
        "sfd_face.pth", 89_844_381, "d54a87c2b7543b64729c9a25eafd188da15fd3f6e02f0ecec76ae1b30d86c491",
        "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/sfd_face.pth (syncnet_python's download_model.sh)",
        "--face_detector s3fd (the reference face tracks)"),
    "inception": WeightFile(
        "pt_inception-2015-12-05-6726825d.pth", 95_628_359,
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth "
        "(pytorch-fid's; torch-fidelity's weights-inception-2015-12-05-6726825d.pth is the same file)", "FID"),
    "arcface": WeightFile(
        "w600k_r50.onnx", 174_383_860, "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        "insightface's buffalo_l.zip (https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip)",
        "CSIM"),
}

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, hashed once per process


def sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def weight_path(weights_dir, key: str, check: str = "sha256") -> Path:
    """The checked path of WEIGHTS[key] in `weights_dir`; a missing or wrong file is one UserError line naming the
    file, where to get it and the flag."""
    spec = WEIGHTS[key]
    if check not in CHECKS:
        raise UserError(f"--weights_check {check!r}: use one of {', '.join(CHECKS)}")
    if weights_dir is None:
        raise UserError(f"{spec.used_for} needs {spec.name}: pass {FLAG} DIR holding it (get it from {spec.source})")
    path = Path(weights_dir) / spec.name
    if not path.is_file():
        raise UserError(f"{spec.name} not found in {FLAG} {weights_dir} (needed for {spec.used_for}): "
                        f"get it from {spec.source}")
    if check == "sha256":
        size = path.stat().st_size
        if size != spec.size or sha256_of(path) != spec.sha256:
            what = f"{size} bytes, not {spec.size}" if size != spec.size else "its sha256 is not the published one"
            raise UserError(f"{path} is not the published {spec.name} ({what}): get it from {spec.source}, or pass "
                            f"--weights_check architecture to accept a file that loads into the same network")
    return path


def load_state_strict(module: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """torch.load a flat state dict and load it strictly; any mismatch is one UserError line naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors come in many types
        raise UserError(f"{path} is not a {what} state dict torch can read ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} holds no {what} state dict")
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
        parts += [f"{len(wrong)} of another shape (e.g. {wrong[0]})"] if wrong else []
        raise UserError(f"{path} does not hold {what} weights: {', '.join(parts)}")
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def load_syncnet_v2(weights_dir, check: str = "sha256", device="cpu"):
    """SyncNet v2 from `weights_dir`/syncnet_v2.model (checked), eval mode."""
    from models.syncnet_v2 import SyncNetV2

    path = weight_path(weights_dir, "syncnet_v2", check)
    return load_state_strict(SyncNetV2(), path, "SyncNet v2").to(device)
