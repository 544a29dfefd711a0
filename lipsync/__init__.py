"""The library behind the scripts: timing, audio, video, faces, the latent codec, data, checkpoints, training,
inference (docs/ARCHITECTURE.md says where each piece lives)."""
