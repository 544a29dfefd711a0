"""FID: this project's path (per-video cached Inception features, then the distance) equals torchmetrics'
FrechetInceptionDistance entry point fed the same images, with the same random Inception weights saved in the
pt_inception-2015-12-05-6726825d.pth format (torch-fidelity's / pytorch-fid's state dict)."""
import numpy as np
import pytest
import torch

from lipsync.errors import UserError
from lipsync.evaluation import fid
from lipsync.video_io import iter_frames

from eval_media import random_inception_weights

IMAGES = 8  # per set: a covariance of rank > 1, and cheap: every image costs one InceptionV3 pass at 299 px


@pytest.fixture(scope="module")
def image_sets(clips):
    real = np.stack(list(iter_frames(clips["grid"].path)))[:IMAGES]  # 360 x 288 real faces
    fake = np.stack(list(iter_frames(clips["talking_h264"].path)))[:IMAGES]  # 200 x 200 synthetic ones
    return real, fake


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, image_sets):
    folder = tmp_path_factory.mktemp("fid_weights")
    real, fake = image_sets
    random_inception_weights(folder / fid.WEIGHTS["inception"].name, real[:6], fake[:6])
    return folder


class FirstOutput(torch.nn.Module):
    """torch-fidelity's extractor returns a tuple of feature sets; torchmetrics takes a module returning one tensor."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = fid.FEATURES

    def forward(self, images):
        return self.extractor(images)[0]


def test_fid_equals_torchmetrics_on_the_same_images(image_sets, weights_dir):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = image_sets
    model = fid.load_inception(weights_dir, check="architecture")
    # ours: features per "video" (each set in two parts, as they are cached per video), then the distance
    real_features = np.concatenate([fid.inception_features(model, real[:3]), fid.inception_features(model, real[3:])])
    fake_features = np.concatenate([fid.inception_features(model, fake[:5]), fid.inception_features(model, fake[5:])])
    ours = fid.frechet_distance(real_features, fake_features)
    # the library's entry point: images in, FID out, the same network and weights
    metric = FrechetInceptionDistance(feature=FirstOutput(fid.load_inception(weights_dir, check="architecture")))
    metric.update(torch.from_numpy(real).permute(0, 3, 1, 2).contiguous(), real=True)
    metric.update(torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous(), real=False)
    reference = float(metric.compute())
    print(f"FID ours {ours:.6f} torchmetrics {reference:.6f}")
    assert ours == pytest.approx(reference, rel=1e-4)
    assert reference > 1e-3  # random features that do tell GRID from synthetic faces apart


def test_torchmetrics_still_imports_without_torch_fidelity_on_the_path():
    """torch-fidelity lives outside sys.path: importing torchmetrics (hence Lightning) must not try to import it."""
    import subprocess
    import sys

    code = "import torchmetrics, pytorch_lightning; from torchmetrics.utilities.imports import " \
           "_TORCH_FIDELITY_AVAILABLE as a; print(bool(a))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_wrong_inception_weights_are_one_line_errors(tmp_path):
    name = fid.WEIGHTS["inception"].name
    with pytest.raises(UserError, match=f"{name} not found in --weights_dir"):
        fid.load_inception(tmp_path)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(UserError, match="does not hold .*InceptionV3 weights"):
        fid.load_inception(tmp_path, check="architecture")
