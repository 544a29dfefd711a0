"""Inference: lip-sync a face video or image to speech.

    models.py      load_models(): the generator and the codec, audio encoder and crop size its model card names
    generation.py  generate_faces(): THE generation step on the device (crops + audio windows -> faces), and
                   GraphedGeneration, the same step replayed as one CUDA graph
    pipeline.py    lip_sync(): the streaming pipeline (decode, detect, crop, generate, paste, write)
    options.py     LipSyncOptions, the run summary
"""
from lipsync.inference.models import LipSyncModels, load_models
from lipsync.inference.options import DEFAULT_OUTFILE, STAGES, LipSyncOptions, format_summary
from lipsync.inference.pipeline import lip_sync

__all__ = ["DEFAULT_OUTFILE", "STAGES", "LipSyncModels", "LipSyncOptions", "format_summary", "lip_sync",
           "load_models"]
