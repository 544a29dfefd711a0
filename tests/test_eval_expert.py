"""The project's own expert as an evaluator (lipsync.evaluation.expert): a latent SyncNet trained in the test
session on synthetic people finds offsets planted in a person it never saw, through the public functions the demo
and evaluate.py call (video file in, SyncScores out)."""
import numpy as np
import pytest
import torch

from lipsync.audio import load_audio
from lipsync.checkpoint import encode_model_card
from lipsync.errors import UserError
from lipsync.evaluation.expert import audio_tower, expert_sync_scores, face_tower, load_expert, planted_offsets
from models.syncnet import SyncNet, SyncNetConfig

from eval_media import write_clip


@pytest.fixture(scope="module")
def held_out_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("held_out") / "person7.mp4", seed=7)


def test_planted_offsets_are_found(trained_expert, held_out_clip):
    """The same clip with its audio moved k = -3..3 frames: the expert reports offset k (within 1)."""
    results = planted_offsets(trained_expert.checkpoint, held_out_clip, pads=trained_expert.pads)
    found = {k: r.offset for k, r in results.items()}
    print("planted -> found:", found, {k: round(r.confidence, 3) for k, r in results.items()})
    assert all(abs(found[k] - k) <= 1 for k in range(-3, 4)), found
    assert all(r.confidence > 0 for r in results.values())


def test_expert_sync_scores_of_a_file_and_of_frames_agree(trained_expert, held_out_clip):
    from lipsync.video_io import iter_frames

    expert = load_expert(trained_expert.checkpoint)
    from_file = expert_sync_scores(expert, held_out_clip, pads=trained_expert.pads)  # the video's own audio track
    frames = np.stack(list(iter_frames(held_out_clip, target_fps=25)))
    from_frames = expert_sync_scores(expert, frames, load_audio(held_out_clip), pads=trained_expert.pads)
    assert from_file == from_frames
    assert abs(from_file.offset) <= 1 and from_file.windows == len(frames) - 5


def test_towers_are_syncnet_forward():
    torch.manual_seed(0)
    syncnet = SyncNet(SyncNetConfig(latent_channels=4, audio_dim=16)).eval()
    faces, audio = torch.randn(3, 5, 4, 8, 8), torch.randn(3, 10, 16)
    face, sound = syncnet(faces, audio)
    torch.testing.assert_close(face_tower(syncnet, faces), face)
    torch.testing.assert_close(audio_tower(syncnet, audio), sound)


def test_a_generator_checkpoint_is_not_an_expert(tmp_path):
    path = tmp_path / "generator.ckpt"
    torch.save({"state_dict": {"model_card": encode_model_card({"kind": "generator"})}}, path)
    with pytest.raises(UserError, match="not a SyncNet checkpoint"):
        load_expert(path)
