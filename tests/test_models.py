"""Generator configs, the SyncNet expert, the codec and the audio encoder: build, run, backprop, save, reload."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.upsampling import Upsample2D

from lipsync.audio_encoder import AudioEncoder, Moments
from lipsync.checkpoint import check_unet_config
from lipsync.codec_upsample import use_subpixel_upsampling
from lipsync.errors import UserError
from lipsync.latent_codec import LatentCodec, mask_lower_half, model_to_uint8_tensor, padded_call
from lipsync.timing import num_feature_frames
from models.subpixel import SubpixelUpsample
from models.syncnet import SyncNet, SyncNetConfig, all_pairs_sync_loss, conv_over_live_taps, sync_loss
from models.unet import audio_positions, build_unet, count_parameters, generate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("folder,millions", [("customized_unet_small", 24), ("customized_unet", 80),
                                             ("customized_unet_large", 140)])
def test_shipped_unet_configs_have_the_advertised_size(folder, millions):
    config = json.loads((ROOT / folder / "config.json").read_text())
    assert config["in_channels"] == 8 and config["out_channels"] == 4
    assert config["cross_attention_dim"] == 768 and config["sample_size"] == 96
    assert config["down_block_types"][0] == "CrossAttnDownBlock2D"  # attention at the highest resolution
    with torch.device("meta"):  # count without allocating
        unet = UNet2DConditionModel.from_config(config)
    assert abs(count_parameters(unet) / 1e6 - millions) / millions < 0.05


@pytest.mark.parametrize("variant,millions", [("u", 14.8), ("xl", 21.9)])
def test_syncnet_variants_match_the_reference_sizes(variant, millions):
    net = SyncNet(SyncNetConfig(variant=variant))
    assert abs(count_parameters(net) / 1e6 - millions) < 0.1


@pytest.mark.parametrize("size", [96, 32, 16])
@pytest.mark.parametrize("region", ["full", "lower"])
def test_syncnet_runs_at_any_latent_size_and_backprops(size, region):
    net = SyncNet(SyncNetConfig(variant="u", face_region=region, audio_dim=32))
    faces = torch.randn(2, 5, 4, size, size, requires_grad=True)
    p = net.sync_probability(faces, torch.randn(2, 10, 32))
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all())
    sync_loss(p, torch.tensor([1.0, 0.0])).backward()
    assert faces.grad is not None and net.face_encoder[0].conv.weight.grad is not None
    if region == "lower":  # the upper half of the face must not matter
        assert faces.grad[..., : size // 2, :].abs().max() == 0


@pytest.mark.parametrize("dims,kernel,stride,padding,size", [
    (2, 3, 1, 1, (1, 1)), (2, 3, 2, 1, (1, 1)), (2, 3, 2, 1, (1, 2)), (2, 3, 1, 1, (2, 1)), (2, 5, 2, 2, (1, 4)),
    (2, 1, 1, 0, (1, 1)), (2, 3, 1, 1, (4, 4)), (2, 3, 1, 0, (3, 3)), (1, 10, 1, 0, (10,)), (1, 1, 1, 0, (1,)),
    (1, 3, 1, 1, (1,)), (1, 3, 1, 1, (6,))])
def test_conv_over_live_taps_equals_the_full_conv_and_its_gradients(dims, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d)(6, 5, kernel, stride, padding).double()
    x = torch.randn(3, 6, *size, dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (conv, lambda x: conv_over_live_taps(conv, x)):
        conv.zero_grad()
        x.grad = None
        y = fn(x)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    for full, live in zip(*results):
        assert full.shape == live.shape and torch.allclose(full, live, atol=1e-12)
    # the full kernel runs only where no axis of length 1 has "same" padding and the kernel does not cover x
    calls = []
    conv.register_forward_hook(lambda *_: calls.append(1))
    conv_over_live_taps(conv, x)
    shortcut = any(n == 1 and padding == kernel // 2 and kernel > 1 for n in size) or (padding, kernel) == (0, size[-1])
    assert len(calls) == (0 if shortcut else 1)


def test_all_pairs_sync_loss_scores_every_pair_with_balanced_classes():
    face = torch.eye(3, 4)  # three orthogonal unit embeddings
    label = torch.tensor([1.0, 1.0, 0.0])
    # audio i == face i: the two labelled in-sync pairs are right (cos 1), the labelled off-sync pair (2, 2) is
    # wrong (cos 1), and the six pairs across rows are right (cos 0)
    wrong = -torch.log(1 - torch.tensor(1.0).clamp(max=1 - 1e-6))  # BCE of cos 1 for an off-sync pair, ~13.8
    assert torch.allclose(all_pairs_sync_loss(face, face, label), 0.5 * wrong / 7, atol=1e-4)
    # every audio the same: the cross pairs are now in sync, which the loss must punish
    same = face[:1].expand(3, 4)
    assert all_pairs_sync_loss(face, same, torch.ones(3)) > 5
    # one item: exactly the labelled pair's BCE
    for y in (0.0, 1.0):
        assert torch.allclose(all_pairs_sync_loss(torch.tensor([[0.6]]), torch.ones(1, 1), torch.tensor([y])),
                              sync_loss(torch.tensor([0.6]), torch.tensor([y])))


def test_tiny_unet_forward_backward_save_reload(tmp_path, tiny_models):
    config = UNet2DConditionModel.load_config(tiny_models["unet"])
    check_unet_config(config, audio_hidden_size=32, latent_channels=4)
    unet = build_unet(config)
    masked, ref, audio = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 10, 32)
    out = generate(unet, masked, ref, audio)
    assert out.shape == (2, 4, 16, 16)
    out.abs().mean().backward()
    assert unet.conv_in.weight.grad is not None
    unet.save_pretrained(tmp_path / "u")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "u")
    with torch.no_grad():
        assert torch.allclose(generate(unet.eval(), masked, ref, audio), generate(again.eval(), masked, ref, audio))


def test_audio_window_order_reaches_the_unet(tiny_models):
    """Cross-attention alone treats the window's feature frames as an unordered set (reversing the window
    would not change the output); the position codes make the order, i.e. which audio is the frame's own,
    visible to the UNet."""
    codes = audio_positions(10, 32)
    assert codes.shape == (10, 32) and codes.abs().max() <= 1
    assert torch.cdist(codes, codes).add(torch.eye(10)).min() > 0.1  # every place has its own code
    unet = build_unet(UNet2DConditionModel.load_config(tiny_models["unet"])).eval()
    masked, ref, audio = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16), torch.randn(2, 10, 32)
    with torch.no_grad():
        plain = [unet(torch.cat([masked, ref], 1), 0, encoder_hidden_states=a).sample for a in (audio, audio.flip(1))]
        coded = [generate(unet, masked, ref, a) for a in (audio, audio.flip(1))]
    assert torch.allclose(*plain, atol=1e-5)  # what the UNet saw without the codes
    assert (coded[0] - coded[1]).abs().max() > 1e-3


def test_unet_config_mismatch_is_a_clear_error(tiny_models):
    config = UNet2DConditionModel.load_config(tiny_models["unet"])
    with pytest.raises(UserError, match="cross_attention_dim 32 != audio encoder hidden size 768"):
        check_unet_config(config, audio_hidden_size=768, latent_channels=4)


def test_codec_uses_the_posterior_mean_and_its_own_scaling(tiny_models):
    codec = LatentCodec.from_pretrained(tiny_models["vae"])
    assert codec.downsample_factor == 4 and codec.latent_channels == 4 and codec.latent_size(64) == 16
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    a, b = codec.encode(images), codec.encode(images)
    assert torch.equal(a, b)  # deterministic: the mean, never a sample
    mean = codec.vae.encode(images).latent_dist.mean
    assert torch.allclose(a, mean * codec.scaling_factor)
    assert codec.decode(a).shape == (2, 3, 64, 64)
    masked = mask_lower_half(images)
    assert masked[:, :, 32:].abs().max() == 0 and torch.equal(masked[:, :, :32], images[:, :, :32])
    with pytest.raises(UserError):
        codec.latent_size(66)


@pytest.mark.parametrize("height, width", [(5, 7), (1, 3), (8, 8)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])  # phase conv, transposed
def test_subpixel_upsample_equals_nearest_upsample_then_conv(height, width, memory_format):
    torch.manual_seed(0)
    upsample = Upsample2D(8, use_conv=True, out_channels=6)
    x = torch.randn(2, 8, height, width).contiguous(memory_format=memory_format)
    with torch.no_grad():
        torch.testing.assert_close(SubpixelUpsample(upsample.conv)(x), upsample(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="doubles"):  # Upsample2D's other sizes are not computed here
            SubpixelUpsample(upsample.conv)(x, output_size=(2 * height + 1, 2 * width))


def test_codec_decodes_as_the_plain_vae(tiny_models):
    """LatentCodec swaps the decoder's upsamplers for SubpixelUpsample: the same images as diffusers' VAE."""
    codec = LatentCodec.from_pretrained(tiny_models["vae"])
    plain = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    levels = len(plain.config.block_out_channels)
    assert sum(isinstance(m, SubpixelUpsample) for m in codec.modules()) == levels - 1
    latents = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(codec.vae.decode(latents).sample, plain.decode(latents).sample,
                                   atol=1e-5, rtol=1e-4)


def test_upsample_adapter_leaves_a_changed_diffusers_upsampler_alone(tiny_models):
    """lipsync.codec_upsample reads Upsample2D's attributes; an Upsample2D without one of them (a future diffusers)
    is left in place with a warning, so the decoder still gives diffusers' own images."""
    plain = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    changed = AutoencoderKL.from_pretrained(tiny_models["vae"]).eval()
    for module in changed.decoder.modules():
        if isinstance(module, Upsample2D):
            del module.interpolate
    with pytest.warns(UserWarning, match="Upsample2D changed"):
        assert use_subpixel_upsampling(changed.decoder) == 0
    assert not any(isinstance(m, SubpixelUpsample) for m in changed.modules())
    assert use_subpixel_upsampling(plain.decoder) == len(plain.config.block_out_channels) - 1


def test_compiled_recipe_codes_as_the_plain_vae(tiny_models):
    """What LatentCodec.compile sets up before torch.compile (channels_last decoder, transposed-conv upsamplers,
    explicit-matmul attention) gives the plain VAE's latents and images."""
    codec = LatentCodec.from_pretrained(tiny_models["vae"])
    plain = LatentCodec.from_pretrained(tiny_models["vae"])
    codec.use_compiled_recipe()
    images = torch.rand(2, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(images)
        torch.testing.assert_close(latents, plain.encode(images), atol=1e-5, rtol=1e-4)
        decoded = codec.decode(latents)
        assert decoded.is_contiguous(memory_format=torch.channels_last)  # the transposed-conv path ran
        torch.testing.assert_close(decoded, plain.decode(latents), atol=1e-5, rtol=1e-4)


def test_uint8_faces_are_contiguous_rgb():
    images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 4, 5)
    faces = model_to_uint8_tensor(images)
    assert faces.shape == (2, 4, 5, 3) and faces.is_contiguous()  # what the CPU paste receives, copy-free
    assert faces[0, 0, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("rows", [5, 8, 2])  # padded, exact, split into chunks of 2
def test_padding_to_one_shape_leaves_each_row_unchanged(tiny_models, rows):
    """What compiled encode / decode / UNet calls go through: rows are independent, so zero padding (or
    splitting) changes no output row."""
    codec = LatentCodec.from_pretrained(tiny_models["vae"])
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    latents = padded_call(codec.encode, rows, images)
    assert latents.shape == (5, 4, 8, 8)
    torch.testing.assert_close(latents, codec.encode(images), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded_call(codec.decode, rows, latents), codec.decode(latents), atol=1e-5, rtol=1e-4)


def test_unpadded_calls_split_without_padding():
    """pad=False (eager modules): calls of at most `rows` rows, the short last one left short."""
    seen = []

    def rows_of(x):
        seen.append(len(x))
        return x * 2

    x = torch.arange(10.0)
    torch.testing.assert_close(padded_call(rows_of, 4, x, pad=False), x * 2)
    assert seen == [4, 4, 2]
    seen.clear()
    torch.testing.assert_close(padded_call(rows_of, 4, x), x * 2)
    assert seen == [4, 4, 4]  # padded: one shape


def test_audio_encoder_chunking_equals_one_pass_on_30_seconds(tiny_models):
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0) +
             0.05 * rng.standard_normal(t.size)).astype(np.float32)
    one_pass = AudioEncoder(tiny_models["wav2vec2"], chunk_s=60.0).encode(audio)
    chunked = AudioEncoder(tiny_models["wav2vec2"], chunk_s=7.0, context_s=2.0).encode(audio)
    assert one_pass.shape == chunked.shape == (num_feature_frames(audio.size), 32)
    cos = torch.nn.functional.cosine_similarity(one_pass, chunked, dim=1)
    assert cos.min() > 0.99, cos.min()


def test_normalisation_moments_of_pcm16_chunks_equal_the_whole_clips_exactly(speech):
    """A stream accumulates its normalisation statistics chunk by chunk; for 16-bit PCM the float64 sums are
    exact, so any chunking gives the whole clip's numbers bit for bit (what streaming relies on to reproduce the
    offline encoder). The normalised signal is the Hugging Face extractor's (x - mean) / sqrt(var + 1e-7)."""
    pcm = (np.round(speech * 32767).astype(np.int16).astype(np.float32) / 32768)[:50_000]
    whole = Moments.of(pcm)
    for size in (320, 641, 1600):
        chunked = Moments()
        for start in range(0, len(pcm), size):
            chunked.add(pcm[start:start + size])
        assert chunked == whole
    mean, std = whole.mean_std()
    assert mean == pytest.approx(float(pcm.astype(np.float64).mean()), abs=1e-12)
    assert std == pytest.approx(float(np.sqrt(pcm.astype(np.float64).var() + 1e-7)), rel=1e-9)
    assert whole.mean_std(min_std=1.0)[1] == 1.0  # a stream's floor for silence


def test_audio_encoder_is_frozen_and_in_eval_mode(tiny_models):
    enc = AudioEncoder(tiny_models["wav2vec2"])
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    assert enc.hidden_size == 32
    with pytest.raises(UserError, match="too short"):
        enc.encode(np.zeros(100, np.float32))
    with pytest.raises(UserError, match=r"^audio encoder folder /nonexistent/model not found \(a hub id is"):
        AudioEncoder("/nonexistent/model")  # a path, not a hub id: said so, not the hub's repo-id rules
    with pytest.raises(UserError, match=r"cannot load audio encoder 'no_org/no_model': .*no folder no_org/no_model"):
        AudioEncoder("no_org/no_model")  # either could be meant (offline: the hub cannot have it)


def test_bf16_generation_stays_within_bf16_tolerance_of_fp32(tiny_models):
    """The GPU recipe (codec and UNet in bf16, what load_models uses on CUDA) against the plain fp32 path, on the
    CPU: encode -> generate -> decode of the same faces. bf16 keeps 8 mantissa bits (~0.4 % per rounding); through
    ~30 random layers that is ~5 % relative error (measured: 2.4 % on latents, 5.4 % on images). The bound must
    also be meaningful: a real change (another frame's audio) moves the output ~33 %."""
    def relative(a, b):
        return float((a - b).norm() / b.norm())

    torch.manual_seed(0)
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    audio = torch.randn(3, 10, 32)
    outputs = {}
    for dtype in (torch.float32, torch.bfloat16):
        codec = LatentCodec.from_pretrained(tiny_models["vae"], dtype=dtype)
        torch.manual_seed(1)
        unet = build_unet(UNet2DConditionModel.load_config(tiny_models["unet"])).to(dtype).eval()
        with torch.no_grad():
            masked, reference = codec.encode(mask_lower_half(images)), codec.encode(images)
            latents = generate(unet, masked, reference, audio)
            outputs[dtype] = latents.float(), codec.decode(latents).float()
            if dtype == torch.float32:
                other_audio = codec.decode(generate(unet, masked, reference, audio.roll(1, dims=0))).float()
    (latents32, images32), (latents16, images16) = outputs[torch.float32], outputs[torch.bfloat16]
    assert relative(latents16, latents32) < 0.06
    assert relative(images16, images32) < 0.12
    assert relative(other_audio, images32) > 0.2


def test_audio_encoder_computes_its_weight_norm_once_with_the_same_numbers(tiny_models):
    """The positional convolution's weight norm is folded into a plain weight at load: the hidden states are the
    Hugging Face model's (its parametrised weight recomputed at every call) bit for bit."""
    from torch.nn.utils import parametrize
    from transformers import AutoModel

    enc = AudioEncoder(tiny_models["wav2vec2"])
    assert not any(parametrize.is_parametrized(m) for m in enc.model.modules())
    stock = AutoModel.from_pretrained(tiny_models["wav2vec2"]).eval()
    assert any(parametrize.is_parametrized(m) for m in stock.modules())  # the fold above had work to do
    windows = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)
    with torch.inference_mode():
        expected = stock(torch.from_numpy(windows)).last_hidden_state
    assert torch.equal(enc.hidden_states(windows), expected)
