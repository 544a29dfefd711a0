"""Audio stage: every finished dataset folder's audio.wav -> wav2vec2.pt (the audio encoder's features)."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from lipsync.audio import load_audio
from lipsync.audio_encoder import DEFAULT_AUDIO_ENCODER, AudioEncoder
from lipsync.data.folder import (
    AUDIO_FILE,
    FEATURES_FILE,
    META_FILE,
    features_model_id,
    find_video_folders,
    write_features,
)
from lipsync.errors import UserError
from lipsync.preprocess.report import Outcome, attempt


def find_dataset_folders(data_root) -> list[Path]:
    """Video folders of a dataset that the video stage finished (meta.json is its last file), sorted."""
    return [Path(data_root) / folder for folder in find_video_folders(data_root)]


def encode_folder_audio(encoder: AudioEncoder, folder: Path, name: str, overwrite: bool = False) -> Outcome:
    """folder/audio.wav -> folder/wav2vec2.pt, skipped when it already holds this encoder's features.

    Features of another encoder are recomputed only with `overwrite`: silently mixing encoders in one dataset
    is the classic train/test mismatch (the reference preprocessed with one Wav2Vec2 and inferred with another).
    """
    stored = features_model_id(folder)
    if stored is not None and not overwrite:
        if stored == encoder.model_id:
            return Outcome(name, "skipped")
        raise UserError(f"{FEATURES_FILE} holds features of {stored!r}, not {encoder.model_id!r} "
                        f"(pass --overwrite to recompute)")
    if not (folder / AUDIO_FILE).is_file():
        raise UserError(f"no {AUDIO_FILE} (run video_preprocess.py on its video again)")
    audio = load_audio(folder / AUDIO_FILE)  # float32 [S] at 16 kHz
    write_features(folder, encoder.encode(audio), encoder.model_id, len(audio))  # [num_feature_frames(S), hidden]
    return Outcome(name, "done")


def encode_dataset_audio(data_root, model_id: str = DEFAULT_AUDIO_ENCODER, device: str = "cpu",
                         overwrite: bool = False) -> list[Outcome]:
    """Run `encode_folder_audio` on every folder of the dataset with one encoder loaded once."""
    data_root = Path(data_root)
    folders = find_dataset_folders(data_root)
    if not folders:
        raise UserError(f"no finished dataset folders (with {META_FILE}) under {data_root}")
    encoder = AudioEncoder(model_id, device=device)
    outcomes = []
    for folder in tqdm(folders, unit="folder", desc="audio"):
        name = str(folder.relative_to(data_root))
        outcomes.append(attempt(name, lambda: encode_folder_audio(encoder, folder, name, overwrite)))
    return outcomes
