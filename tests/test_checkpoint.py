"""The one loader: every checkpoint kind, strict loading, one-line errors; unet_loader.py --extract / --load."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

import unet_loader
from lipsync import model_zoo
from lipsync.checkpoint import encode_model_card, load_generator, load_syncnet, read_checkpoint
from lipsync.errors import UserError
from models.syncnet import SyncNet, SyncNetConfig
from models.unet import AUDIO_POSITIONS, audio_positions, build_unet, generate

ROOT = Path(__file__).resolve().parents[1]


def _generator_state(unet, card):
    state = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    return state


def _same_outputs(a, b):
    x = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16), torch.randn(1, 10, 32)
    with torch.no_grad():
        return torch.allclose(generate(a.eval(), *x), generate(b.eval(), *x), atol=1e-6)


@pytest.fixture()
def generator(tiny_models):
    config = dict(UNet2DConditionModel.load_config(tiny_models["unet"]))
    torch.manual_seed(1)
    unet = build_unet(config)
    card = {"kind": "generator", "unet_config": config, "audio_encoder": "x", "audio_hidden_size": 32,
            "audio_positions": AUDIO_POSITIONS}
    return unet, card


def test_lightning_file_safetensors_and_merged_folder_load_the_same_weights(tmp_path, generator):
    unet, card = generator
    state = _generator_state(unet, card)
    torch.save({"state_dict": {f"_forward_module.{k}": v for k, v in state.items()}, "epoch": 0},
               tmp_path / "a.ckpt")
    save_file(state, tmp_path / "b.safetensors")
    (tmp_path / "merged").mkdir()
    torch.save(state, tmp_path / "merged" / "pytorch_model.bin")
    for path, kind in [("a.ckpt", "lightning"), ("b.safetensors", "state_dict"), ("merged", "merged")]:
        loaded = load_generator(tmp_path / path)
        assert loaded.kind == kind and loaded.card["audio_hidden_size"] == 32
        assert _same_outputs(unet, loaded.unet)


def test_diffusers_folder_with_and_without_weights(tmp_path, tiny_models, generator):
    unet, _ = generator
    unet.save_pretrained(tmp_path / "weights")
    assert _same_outputs(unet, load_generator(tmp_path / "weights").unet)
    random_init = load_generator(tiny_models["unet"])  # config.json only
    assert random_init.kind == "diffusers" and not _same_outputs(unet, random_init.unet)


def test_bare_state_dict_needs_a_config_and_mismatches_are_one_line(tmp_path, generator, tiny_models):
    unet, card = generator
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp_path / "bare.safetensors")
    with pytest.raises(UserError, match="--unet_config"):
        load_generator(tmp_path / "bare.safetensors")
    assert _same_outputs(unet, load_generator(tmp_path / "bare.safetensors", unet_config=card["unet_config"]).unet)
    other = dict(card["unet_config"], block_out_channels=[32, 32])
    with pytest.raises(UserError, match="do not match the model config"):
        load_generator(tmp_path / "bare.safetensors", unet_config=other)


def test_wrong_kind_and_garbage_are_clear_errors(tmp_path, generator):
    unet, card = generator
    net = SyncNet(SyncNetConfig(audio_dim=32))
    sync_state = {f"syncnet.{k}": v for k, v in net.state_dict().items()}
    sync_state["model_card"] = encode_model_card({"kind": "syncnet", "syncnet": net.config.to_dict()})
    torch.save({"state_dict": sync_state}, tmp_path / "s.ckpt")
    with pytest.raises(UserError, match="not a generator"):
        load_generator(tmp_path / "s.ckpt")
    loaded = load_syncnet(tmp_path / "s.ckpt")
    assert not loaded.syncnet.training and loaded.syncnet.config.variant == "u"
    with pytest.raises(UserError, match="pass it with --syncnet"):
        load_syncnet(tmp_path / "s.ckpt", expect_variant="xl")
    torch.save({"state_dict": _generator_state(unet, card)}, tmp_path / "g.ckpt")
    with pytest.raises(UserError, match="not a SyncNet"):
        load_syncnet(tmp_path / "g.ckpt")
    old = {k: v for k, v in card.items() if k != "audio_positions"}  # trained before the audio position codes
    torch.save({"state_dict": _generator_state(unet, old)}, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match="without position codes on its audio window"):
        load_generator(tmp_path / "old.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a checkpoint"):
        read_checkpoint(tmp_path / "junk.ckpt")
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="none of"):
        read_checkpoint(tmp_path / "empty")


def test_extract_widens_conv_in_and_keeps_the_pretrained_function(tmp_path):
    # a tiny SD-style pipeline folder: unet/ with 4 input channels, pretrained (random) weights
    sd = dict(model_zoo.tiny_unet_config(), in_channels=4)
    model_zoo.save_unet(tmp_path / "pipe" / "unet", sd, seed=3)
    unet_loader.main(["--extract", "--pipe", str(tmp_path / "pipe"), "--ckpt", str(tmp_path / "sd"),
                      "--dtype", "float32"])
    original = UNet2DConditionModel.from_pretrained(tmp_path / "pipe", subfolder="unet").eval()
    widened = load_generator(tmp_path / "sd").unet.eval()
    assert widened.config.in_channels == 8
    assert (tmp_path / "sd" / "diffusion_pytorch_model.safetensors").is_file()
    masked, anything, audio = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 10, 32)
    with torch.no_grad():
        expected = original(masked, 0, encoder_hidden_states=audio + audio_positions(10, 32)).sample
        assert torch.allclose(generate(widened, masked, anything, audio), expected, atol=1e-5)


def test_unet_loader_load_prints_parameter_count_and_errors_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "unet_loader.py", "--load", "--ckpt", "customized_unet_small"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "23,524,772 parameters" in out.stdout
    bad = subprocess.run([sys.executable, "unet_loader.py", "--extract", "--pipe", str(tmp_path / "nope"),
                          "--ckpt", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "cannot load a UNet" in bad.stderr
    assert not (tmp_path / "o").exists()
