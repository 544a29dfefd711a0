"""Preprocessing: raw videos -> dataset folders (video.py, video_preprocess.py), then the audio encoder's features
(audio.py, audio_preprocess.py); report.py: per-item outcomes and the summary."""
