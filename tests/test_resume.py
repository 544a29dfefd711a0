"""Training survives being killed: a kill while a checkpoint is written leaves the previous last.ckpt whole, and
a run killed mid-epoch and resumed with --ckpt reaches the weights of an uninterrupted run, bit for bit (CPU,
fp32). The kills are real: the training script runs as its own process and SIGKILLs itself."""
import signal

import pytest
import torch
from pytorch_lightning import Callback

import unet_syncnet_lightning
import unet_wav2lip_lightning
from lipsync.checkpoint import load_generator, read_checkpoint
from lipsync.files import old_path, temp_path

from tiny_runs import run_script, save_expert, train_argv, write_latent_dataset


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models):
    root = write_latent_dataset(tmp_path_factory.mktemp("resume"), tiny_models["vae"])
    save_expert(root / "expert.safetensors", tiny_models["vae"])
    (root / "unet").symlink_to(tiny_models["unet"])  # the generator's init: a config-only UNet folder
    return root


class RecordLosses(Callback):
    """The training losses of every global step."""

    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = {k: v.item() for k, v in module.losses_to_show.items()}


def train(script, args, monkeypatch, workdir):
    """Run a script's main in this process, recording the losses of every step."""
    from lipsync.training import run

    record = RecordLosses()
    make_trainer = run.make_trainer

    def recording_trainer(*a, **k):
        trainer = make_trainer(*a, **k)
        trainer.callbacks.append(record)
        return trainer

    with monkeypatch.context() as patch:
        patch.setattr(run, "make_trainer", recording_trainer)
        patch.chdir(workdir)
        trainer = script.main(args)
    return trainer, record.losses


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}


SCRIPTS = {
    # generator: DeepSpeed ZeRO-2 (the default strategy; checkpoints are folders), --max_steps 7, no top-k
    # checkpoints (last.ckpt is written at every validation all the same)
    "generator": (unet_wav2lip_lightning, ["--max_steps", "7", "--save_top_k", "0", "--syncnet", "expert.safetensors",
                                           "--unet_ckpt", "unet"]),
    # SyncNet: Lightning's single-device strategy (its default "ddp" on one device; checkpoints are files), loading
    # in the main process, --max_epochs 2 (8 steps: Lightning then reads the loader's length before the resumed
    # run's checkpoint is loaded, and must still restore the loader's position)
    "syncnet": (unet_syncnet_lightning, ["--max_steps", "-1", "--max_epochs", "2"]),
}


@pytest.mark.parametrize("name", ["generator", "syncnet"])
def test_killed_run_resumes_to_the_uninterrupted_weights_and_a_torn_checkpoint_is_never_read(workdir, monkeypatch,
                                                                                               name):
    """4 batches per epoch, checkpoints (last.ckpt, then top-k ones) at steps 3 and 6. The killed run writes half
    of a file of its step-6 last.ckpt and dies (SIGKILL, in epoch 1). last.ckpt is still the whole step-3 one
    (mid-epoch 0); resumed from it, the run goes through the epoch boundary and a validation, and every step's
    losses and the final weights equal the uninterrupted run's exactly (CPU, fp32)."""
    script, extra = SCRIPTS[name]
    out = workdir / f"out_{name}"
    args = [*train_argv(workdir, 7), *extra, "--output_dir", str(out), "--lr_schedule", "cosine"]
    uninterrupted, losses = train(script, args, monkeypatch, workdir)
    assert sorted(losses) == list(range(1, 9 if name == "syncnet" else 8))

    # checkpoint files written: the generator's step-3 last.ckpt (ZeRO: model states, then this process's
    # optimizer shard), SyncNet's step-3 last.ckpt and top-k file; the 3rd is the step-6 last.ckpt's first
    killed = run_script(script.__name__, args, workdir, kill_in_save=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = out / name / "version_1" / "checkpoints" / "last.ckpt"
    assert temp_path(last).exists() and not old_path(last).exists()  # the torn write went to the temp name
    if name == "generator":
        assert read_checkpoint(last).kind == "zero"
        load_generator(last)  # merged on the fly, as inference loads it
        state = torch.load(last / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False)
    else:
        state = torch.load(last, weights_only=False)
    assert state["global_step"] == 3

    resumed, resumed_losses = train(script, [*args, "--ckpt", str(last)], monkeypatch, workdir)
    assert resumed.global_step == uninterrupted.global_step
    assert resumed_losses == {step: losses[step] for step in losses if step > 3}  # the same batches, in order
    final, expected = weights(resumed), weights(uninterrupted)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)
