"""Shared code of Latent Wav2Lip: timing, audio, latent codec, faces, video I/O, data, checkpoints, inference."""
