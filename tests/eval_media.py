"""What the evaluation tests need beyond tests/media.py: a latent SyncNet expert trained here, in the test session,
on synthetic talking faces (real training of the real model on real renders, about half a minute on 2 cores), and
held-out talking-face clips it never saw.

The recipe is the demo's (lipsync.demo.pipeline) scaled down: 128 px frames, nose-to-chin crops of 32 px (PADS),
a tiny random AutoencoderKL (4x down: 8x8 latents) and a tiny random Wav2Vec2 (hidden 64), both frozen; the "u"
SyncNet trained on every face x audio pair of each batch (models.syncnet.all_pairs_sync_loss), half the labelled
windows in sync, half with faces from another time of the same clip. Measured on a quiet 2-core machine: 200 steps
of batch 64 about 25 s; the planted offsets -3..3 of a held-out person then come out exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipsync import model_zoo, timing
from lipsync.checkpoint import encode_model_card
from lipsync.demo import synthetic
from lipsync.video_writer import write_video

PADS = (-15, -4, -3, -3)  # the demo's crop recipe for its 128 px synthetic faces (lipsync/demo/pipeline.py)
FRAME_SIZE, IMAGE_SIZE = 128, 32
TRAIN_PEOPLE, CLIP_SECONDS, STEPS, BATCH, LR = 12, 4.0, 200, 64, 1e-3


@dataclass
class TrainedExpert:
    checkpoint: Path  # Lightning-style .ckpt: {"state_dict": {"syncnet.*", "model_card"}}
    codec: Path
    wav2vec2: Path
    pads: tuple[int, int, int, int]


def talking_clip(seed: int, seconds: float = CLIP_SECONDS, size: int = FRAME_SIZE):
    """(frames [N, size, size, 3] RGB uint8 at 25 fps, speech float32 [S]) of synthetic person `seed`."""
    rng = np.random.default_rng([seed, 4242])
    identity = synthetic.random_identity(rng)
    audio, opening = synthetic.synth_speech(seconds, rng)
    frames = np.stack([synthetic.render_frame(identity, o, k / timing.VIDEO_FPS, size) for k, o in enumerate(opening)])
    return frames, audio


def write_clip(path, seed: int, seconds: float = CLIP_SECONDS) -> Path:
    """An H.264 + AAC mp4 written by lipsync.video_io.write_video. (Not tests/media.write_media: its AAC track
    decodes through lipsync.audio 1,030 samples late, the encoder's priming kept: 64 ms, an AV offset of -2 frames
    that the expert duly reports.)"""
    frames, audio = talking_clip(seed, seconds)
    write_video(path, frames, timing.VIDEO_FPS, audio=audio)
    return Path(path)


def train_expert(root: Path, seed: int = 0) -> TrainedExpert:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared 2-core machine OpenMP's waits for a descheduled thread cost more
    try:
        return _train_expert(root, seed)
    finally:
        torch.set_num_threads(threads)


def _train_expert(root: Path, seed: int) -> TrainedExpert:
    from lipsync.audio_encoder import AudioEncoder
    from lipsync.evaluation.expert import face_crops
    from lipsync.faces import FaceDetector
    from lipsync.latent_codec import LatentCodec, uint8_to_model
    from models.syncnet import SyncNet, SyncNetConfig, all_pairs_sync_loss

    codec_dir = model_zoo.save_vae(root / "vae", model_zoo.tiny_vae_config(), seed=seed)
    config = model_zoo.tiny_wav2vec2_config(hidden_size=64)
    config.conv_dim = (64,) * len(config.conv_dim)  # the demo's: random features that follow the mouth better
    w2v_dir = model_zoo.save_wav2vec2(root / "wav2vec2", config, seed=seed)
    codec, encoder, detector = LatentCodec.from_pretrained(str(codec_dir)), AudioEncoder(str(w2v_dir)), FaceDetector()
    clips = []
    for person in range(TRAIN_PEOPLE):
        frames, audio = talking_clip(1000 + person)
        crops = face_crops(frames, IMAGE_SIZE, PADS, detector=detector)
        with torch.no_grad():
            latents = codec.encode(uint8_to_model(crops, "cpu", torch.float32))  # [N, 4, 8, 8]
        clips.append((latents, encoder.encode(audio)))

    torch.manual_seed(seed)
    syncnet_config = SyncNetConfig(variant="s", latent_channels=4, audio_dim=64)
    syncnet = SyncNet(syncnet_config)
    optimizer = torch.optim.AdamW(syncnet.parameters(), lr=LR)
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        faces, audios, labels = [], [], []
        for b in range(BATCH):
            latents, features = clips[rng.integers(len(clips))]
            s = int(rng.integers(0, len(latents) - 5))
            audios.append(timing.syncnet_audio_window(features, s))
            w = s
            while b % 2 and abs(w - s) < 5:  # odd rows: faces of another time of the clip (off sync)
                w = int(rng.integers(0, len(latents) - 5))
            faces.append(latents[w:w + 5])
            labels.append(1.0 - b % 2)
        face, audio = syncnet(torch.stack(faces), torch.stack(audios))
        loss = all_pairs_sync_loss(face, audio, torch.tensor(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    card = {"kind": "syncnet", "syncnet": syncnet_config.to_dict(), "audio_encoder": str(w2v_dir),
            "audio_hidden_size": 64, "codec": str(codec_dir), "image_size": IMAGE_SIZE,
            "latent_size": IMAGE_SIZE // 4}
    state = {f"syncnet.{k}": v for k, v in syncnet.state_dict().items()}
    state["model_card"] = encode_model_card(card)
    checkpoint = root / "syncnet.ckpt"
    torch.save({"state_dict": state}, checkpoint)
    return TrainedExpert(checkpoint, codec_dir, w2v_dir, PADS)


# ------------------------------------------------------------------------ random weights in the published formats

def calibrate_batchnorm(model: torch.nn.Module, *inputs_and_calls) -> None:
    """Set BatchNorm statistics from data (train-mode forward, cumulative average), so that random weights give
    activations of a sane size. inputs_and_calls: (callable, input) pairs run once each."""
    for layer in model.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.momentum = None
    model.train()
    with torch.no_grad():
        for call, x in inputs_and_calls:
            call(x)
    model.eval()


def random_inception_weights(path, *image_sets: np.ndarray) -> Path:
    """Random InceptionV3 weights in the FID weights format (the state dict of torch-fidelity's / pytorch-fid's
    pt_inception-2015-12-05-6726825d.pth). torch-fidelity's constructor always loads weights, so the load is
    skipped while the network is built; BatchNorm statistics come from the image sets (each [N, H, W, 3] uint8)."""
    import sys
    from unittest import mock

    from lipsync.evaluation import fid

    cls = fid.inception_class()
    torch.manual_seed(0)
    with mock.patch.object(sys.modules[cls.__module__], "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None):
        model = cls("inception-v3-compat", ["2048"])
    calibrate_batchnorm(model, *[(model, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
                                 for images in image_sets])
    torch.save(model.state_dict(), path)
    return Path(path)


def random_syncnet_v2_weights(path, seed: int = 0) -> Path:
    """Random SyncNet v2 weights in the syncnet_v2.model format (a flat state dict, reference layer names)."""
    from models.syncnet_v2 import SyncNetV2

    torch.manual_seed(seed)
    torch.save(SyncNetV2().state_dict(), path)
    return Path(path)


def random_s3fd_weights(path, seed: int = 0) -> Path:
    """Random S3FD weights in the sfd_face.pth format (syncnet_python's S3FDNet state dict)."""
    from syncnet_python.detectors.s3fd.nets import S3FDNet

    torch.manual_seed(seed)
    torch.save(S3FDNet(device="cpu").state_dict(), path)
    return Path(path)


def random_arcface_onnx(path, seed: int = 0) -> Path:
    """A random face-recognition network in the ArcFace ONNX format insightface ships: input 'input.1'
    [N, 3, 112, 112] (RGB, (x - 127.5) / 127.5), one 512-d output (conv + BatchNorm + PReLU stages, as IResNet)."""
    from torch import nn

    torch.manual_seed(seed)

    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)]

    model = nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64), *stage(64, 64), nn.Flatten(),
                          nn.Linear(64 * 7 * 7, 512), nn.BatchNorm1d(512)).eval()
    for module in model.modules():  # trained-looking statistics and slopes, so every exported op does something
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.2, 0.2)
        elif isinstance(module, nn.PReLU):
            module.weight.data.uniform_(0.0, 0.5)
    torch.onnx.export(model, torch.zeros(1, 3, 112, 112), str(path), dynamo=False, input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "n"}, "embedding": {0: "n"}})
    return Path(path)
