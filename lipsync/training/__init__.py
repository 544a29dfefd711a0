"""Training of the SyncNet expert and the generator (used by unet_syncnet_lightning.py, unet_wav2lip_lightning.py).

    options.py           the options both scripts share, OptimConfig
    optim.py             AdamW + warm-up / cosine schedule
    run.py               a run: defaults, seeding, data module, trainer, run folder, checkpoints, resume
    progress.py          the progress bar (losses shown without waiting for the GPU)
    zero.py              DeepSpeed ZeRO-2 strategies (GPUs, and CPU processes for CI), whole-folder checkpoints,
                         resuming on another number of processes: every private hook
    syncnet_module.py    LightningModule of the expert
    generator_module.py  LightningModule of the generator
"""
