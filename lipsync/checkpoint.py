"""ONE loader for every checkpoint kind, used by training (UNet init, frozen expert), validation and inference.

Accepted for `path`:
- a Lightning `.ckpt` file                              {"state_dict": {...}, ...}
- a DeepSpeed ZeRO checkpoint folder (Lightning writes `x.ckpt/` with `latest`, `checkpoint/`): merged on the fly
- the output of DeepSpeed's `zero_to_fp32.py`: a folder (pytorch_model.bin / model.safetensors, maybe sharded)
  or a file
- a diffusers UNet folder (config.json [+ diffusion_pytorch_model.safetensors]): config only = random init
- a safetensors or torch file holding a flat state dict

Every module of this project stores a `model_card` buffer (uint8 JSON: kind, model configs, audio encoder,
codec, image size) in its state dict, so a checkpoint describes itself wherever its weights travel, including
zero_to_fp32.py output. Weights load strictly; anything unexpected is one clear UserError line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors

from lipsync.errors import UserError
from lipsync.files import recover

MODEL_CARD_KEY = "model_card"
WRAPPER_PREFIXES = ("_forward_module.", "module.")  # added by DeepSpeed / DDP wrappers
MERGED_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                       "pytorch_model.bin.index.json")
DIFFUSERS_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def encode_model_card(card: dict) -> torch.Tensor:
    """dict -> uint8 tensor, registered as a buffer so it travels inside every state dict."""
    return torch.tensor(list(json.dumps(card, sort_keys=True).encode()), dtype=torch.uint8)


def decode_model_card(tensor: torch.Tensor) -> dict:
    return json.loads(bytes(tensor.to(torch.uint8).tolist()).decode())


@dataclass
class Checkpoint:
    state_dict: dict  # flat, wrapper prefixes removed, model_card removed
    card: dict | None  # the model card, when the checkpoint has one
    kind: str  # what was found, for messages: "lightning", "zero", "merged", "diffusers", "state_dict"
    diffusers_config: dict | None = None  # for diffusers folders


def read_checkpoint(path) -> Checkpoint:
    """Read any supported checkpoint into a flat CPU state dict (no model is built here)."""
    path = recover(path)  # a checkpoint folder whose replacement was cut short between its two renames
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / "latest").is_file() or any(path.glob("checkpoint/*model_states.pt")):
            return _finish(_read_zero_folder(path), "zero")
        for name in MERGED_WEIGHT_FILES:
            if (path / name).is_file():
                return _finish(_read_merged_folder(path), "merged")
        if (path / "config.json").is_file():
            return _read_diffusers_folder(path)
        raise UserError(f"{path} is a folder but none of: a DeepSpeed ZeRO checkpoint, zero_to_fp32.py output "
                        f"({', '.join(MERGED_WEIGHT_FILES)}), or a diffusers folder (config.json)")
    if path.suffix == ".safetensors":
        return _finish(_load_safetensors(path), "state_dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # pickle/zip errors come in many types; the user only needs the one line
        raise UserError(f"{path} is not a checkpoint torch can read ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return _finish(obj["state_dict"], "lightning")
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):  # DeepSpeed model-states file
        return _finish(obj["module"], "zero")
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return _finish(obj, "state_dict")
    raise UserError(f"{path} holds no state dict (found {type(obj).__name__})")


def _finish(state: dict, kind: str) -> Checkpoint:
    flat = {}
    for key, value in state.items():
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        flat[key] = value
    card = flat.pop(MODEL_CARD_KEY, None)
    return Checkpoint(flat, decode_model_card(card) if card is not None else None, kind)


def _load_safetensors(path: Path) -> dict:
    try:
        return load_safetensors(str(path))
    except Exception as err:
        raise UserError(f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})") from None


def _read_zero_folder(path: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        return get_fp32_state_dict_from_zero_checkpoint(str(path))
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise UserError(f"{path} looks like a DeepSpeed ZeRO folder but cannot be merged: {err}") from None


def _read_merged_folder(path: Path) -> dict:
    state = {}
    for index_name, loader in (("model.safetensors.index.json", _load_safetensors),
                               ("pytorch_model.bin.index.json", _torch_state)):
        index = path / index_name
        if index.is_file():
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                state.update(loader(path / shard))
            return state
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    return _torch_state(path / "pytorch_model.bin")


def _torch_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_diffusers_folder(path: Path) -> Checkpoint:
    config = json.loads((path / "config.json").read_text())
    if config.get("_class_name") != "UNet2DConditionModel":
        raise UserError(f"{path}/config.json is not a UNet2DConditionModel config "
                        f"(_class_name={config.get('_class_name')!r})")
    state = {}
    for name in DIFFUSERS_WEIGHT_FILES:
        if (path / name).is_file():
            state = _load_safetensors(path / name) if name.endswith(".safetensors") else _torch_state(path / name)
            break
    return Checkpoint(state, None, "diffusers", diffusers_config=config)


def submodule_state(checkpoint: Checkpoint, prefix: str, source) -> dict:
    """Keys under `prefix.` with the prefix stripped; a flat dict without prefixes is taken whole."""
    lead = prefix + "."
    sub = {k[len(lead):]: v for k, v in checkpoint.state_dict.items() if k.startswith(lead)}
    if sub:
        return sub
    if any("." in k and k.split(".")[0] in {"unet", "syncnet", "model"} for k in checkpoint.state_dict):
        found = sorted({k.split(".")[0] for k in checkpoint.state_dict})
        raise UserError(f"{source} holds no '{prefix}' weights (it has: {', '.join(found[:5])}): "
                        f"is it the right kind of checkpoint?")
    return dict(checkpoint.state_dict)


def load_strict(module: torch.nn.Module, state: dict, source, assign: bool = False) -> None:
    """load_state_dict(strict=True) with a one-line error that says what did not match. assign: the module's
    tensors become the state's (for modules built on the meta device: `build_loaded`)."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"weights in {source} do not match the model config: {', '.join(parts)}")
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as err:  # shape mismatches
        line = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err).splitlines()[0])
        raise UserError(f"weights in {source} do not match the model config: {line}") from None


def build_loaded(build, state: dict, source) -> torch.nn.Module:
    """`build()` with the weights of `state`, strictly, without first filling every parameter with random
    values (an 80M-parameter UNet's initialisation costs more than loading it): the module is built on the meta
    device and takes the state's tensors (floating ones as float32, the dtype a freshly built module has)."""
    with torch.device("meta"):
        module = build()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_strict(module, state, source, assign=True)
    return module


def check_unet_config(config: dict, audio_hidden_size: int, latent_channels: int) -> None:
    """A UNet config must fit the audio encoder and the latents: fail early, in one line, not deep inside
    cross-attention."""
    if config.get("cross_attention_dim") != audio_hidden_size:
        raise UserError(f"UNet cross_attention_dim {config.get('cross_attention_dim')} != audio encoder hidden "
                        f"size {audio_hidden_size}: pick a UNet config or audio encoder that match")
    if config.get("in_channels") != 2 * latent_channels or config.get("out_channels") != latent_channels:
        raise UserError(f"UNet in/out channels {config.get('in_channels')}/{config.get('out_channels')} do not "
                        f"fit {latent_channels}-channel latents (need {2 * latent_channels}/{latent_channels})")


@dataclass
class LoadedGenerator:
    unet: torch.nn.Module
    card: dict  # unet_config, audio_encoder, audio_hidden_size, codec, image_size, ... (what is known)
    kind: str


def load_generator(path, unet_config: dict | None = None) -> LoadedGenerator:
    """A UNet from any checkpoint kind. `unet_config` overrides the checkpoint's own (needed only when the
    weights come without a model card, e.g. a bare safetensors state dict)."""
    from models.unet import AUDIO_POSITIONS, build_unet

    checkpoint = read_checkpoint(path)
    card = dict(checkpoint.card or {})
    if card and card.get("kind") != "generator":
        raise UserError(f"{path} is a {card.get('kind')} checkpoint, not a generator (UNet) checkpoint")
    if card and card.get("audio_positions") != AUDIO_POSITIONS:
        raise UserError(f"{path} was trained without position codes on its audio window ({AUDIO_POSITIONS!r}, "
                        "models/unet.py), which every generator now gets: train it again")
    config = unet_config or checkpoint.diffusers_config or card.get("unet_config")
    if config is None:
        raise UserError(f"{path} does not say which UNet it holds (no model card): pass --unet_config FOLDER")
    card["unet_config"] = {k: v for k, v in config.items()}
    if checkpoint.kind == "diffusers" and not checkpoint.state_dict:  # a config-only diffusers folder: random init
        unet = build_unet(config)
    else:
        unet = build_loaded(lambda: build_unet(config), submodule_state(checkpoint, "unet", path), path)
    return LoadedGenerator(unet, card, checkpoint.kind)


@dataclass
class LoadedSyncNet:
    syncnet: torch.nn.Module
    card: dict
    kind: str


def load_syncnet(path, expect_variant: str | None = None) -> LoadedSyncNet:
    """The SyncNet expert from any checkpoint kind that carries its model card; frozen and in eval mode."""
    from models.syncnet import SyncNet, SyncNetConfig

    checkpoint = read_checkpoint(path)
    card = checkpoint.card
    if card is None or card.get("kind") != "syncnet":
        what = "no model card" if card is None else f"a {card.get('kind')} checkpoint"
        raise UserError(f"{path} is not a SyncNet checkpoint of this project ({what})")
    config = SyncNetConfig(**card["syncnet"])
    if expect_variant and config.variant != expect_variant:
        flag = "--syncnet_xl" if config.variant == "xl" else "--syncnet"
        raise UserError(f"{path} holds a '{config.variant}' SyncNet, not '{expect_variant}': pass it with {flag}")
    syncnet = build_loaded(lambda: SyncNet(config), submodule_state(checkpoint, "syncnet", path), path)
    return LoadedSyncNet(syncnet.eval().requires_grad_(False), card, checkpoint.kind)
