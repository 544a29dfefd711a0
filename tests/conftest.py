"""Shared fixtures: tiny real models saved with save_pretrained, loaded by the same path a hub id takes."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach the hub in tests
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lipsync import model_zoo  # noqa: E402

from media import GRID, GRID2, Clip, Media, make_media, real_speech  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For a whole module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`, so it is set before the
    module's own fixtures build anything): the tiny models gain nothing from intra-op threads; on a shared 2-core
    machine OpenMP's waits for a descheduled thread made one 3 s clip take 28 s instead of 2.3 s; and a reduction
    split over another number of threads rounds differently, so a module compares like with like."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """lipsync.compile_cache writes under LIPSYNC_CACHE_DIR (default ~/.cache/lipsync): a test folder instead."""
    folder = tmp_path_factory.mktemp("lipsync_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LIPSYNC_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> Media:
    """The clips made at test time (tests/media.py), written once per session."""
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="session")
def clips(media) -> dict[str, Clip]:
    """Every test video by name: the committed GRID clips and the synthetic talking faces."""
    return {"grid": GRID, "grid2": GRID2, "talking_mpeg4": media.talking_mpeg4, "talking_h264": media.talking_h264}


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """Real speech (GRID), 16 kHz mono float32, 5.96 s."""
    return real_speech()


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


@pytest.fixture(scope="session")
def generator_checkpoint(tiny_models):
    """A Lightning-style tiny generator checkpoint whose model card names the tiny codec and audio encoder."""
    from tiny_generator import write_tiny_generator

    return write_tiny_generator(tiny_models, tiny_models["root"] / "generator.ckpt")


@pytest.fixture(scope="session")
def trained_expert(tmp_path_factory):
    """A latent SyncNet expert trained in this session on synthetic talking faces (tests/eval_media.py)."""
    from eval_media import train_expert

    return train_expert(tmp_path_factory.mktemp("expert"))
