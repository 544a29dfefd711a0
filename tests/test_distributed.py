"""The multi-process path (--devices N, as on N GPUs) on CPU processes over gloo, as CI can run it: both
scripts train with 2 processes (the generator with DeepSpeed ZeRO-2, each process holding half of the optimizer
state; SyncNet with DDP), the 2-process ZeRO checkpoint merges with DeepSpeed's zero_to_fp32.py, loads for
inference, and resumes on 1 process and on 2 (2 nodes of 1 process, launched by torchrun as the README says).
Every multi-process run is the real script started as a user starts it."""
import socket
import subprocess
import sys

import pytest
import torch
from pytorch_lightning import Callback

import unet_syncnet_lightning
import unet_wav2lip_lightning
from lipsync.checkpoint import load_generator, read_checkpoint
from lipsync.inference import load_models
from lipsync.training.zero import universal_path, zero_world_size

from tiny_runs import REPO, save_expert, script_env, start_script, train_argv, write_latent_dataset

GENERATOR = ["--syncnet", "expert.safetensors", "--unet_ckpt", "unet"]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory, tiny_models):
    """3 steps of each script with --devices 2, started together: (workdir, {script: (returncode, stderr)}).
    Their C++ extensions go to a folder of their own (see the test of DeepSpeed's shared-memory op)."""
    root = write_latent_dataset(tmp_path_factory.mktemp("distributed"), tiny_models["vae"], tiny_models["wav2vec2"])
    save_expert(root / "expert.safetensors", tiny_models["vae"], tiny_models["wav2vec2"])
    (root / "unet").symlink_to(tiny_models["unet"])
    extensions = {"TORCH_EXTENSIONS_DIR": str(root / "torch_extensions")}
    procs = {"generator": start_script("unet_wav2lip_lightning", [*train_argv(root, 3, "--devices", "2"), *GENERATOR],
                                       root, **extensions),
             "syncnet": start_script("unet_syncnet_lightning", train_argv(root, 3, "--devices", "2"), root,
                                     **extensions)}
    done = {name: proc.communicate(timeout=600) for name, proc in procs.items()}
    return root, {name: (proc.returncode, done[name][1]) for name, proc in procs.items()}


def test_no_process_builds_deepspeeds_shared_memory_op(two_process_runs):
    """DeepSpeed's CPU backend JIT-compiles a shared-memory collective (a C++ build) that only DeepSpeed-inference
    uses: CPUDeepSpeedStrategy skips it, with 2 processes too (their all-reduces go through gloo)."""
    root, runs = two_process_runs
    assert runs["generator"][0] == 0
    folder = root / "torch_extensions"
    assert not folder.exists() or not any(folder.rglob("*.so"))


def last_ckpt(root, experiment, version):
    return root / "runs" / experiment / f"version_{version}" / "checkpoints" / "last.ckpt"


class RecordStart(Callback):
    """The trained weights and the optimizer's step counts as training starts (after a resume's restore)."""

    def on_train_start(self, trainer, module):
        self.weights = {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_generator_zero2_on_two_processes_merges_loads_and_resumes_on_one(two_process_runs, monkeypatch):
    root, runs = two_process_runs
    code, stderr = runs["generator"]
    assert code == 0, stderr[-3000:]
    last = last_ckpt(root, "generator", 0)
    shards = sorted(p.name for p in (last / "checkpoint").glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert zero_world_size(last) == 2

    # DeepSpeed's own merge script, run inside the checkpoint folder; the merged weights load for inference
    merge = subprocess.run([sys.executable, "zero_to_fp32.py", ".", "merged"], cwd=last, capture_output=True,
                           text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr[-2000:]
    merged = read_checkpoint(last / "merged")
    assert merged.card["kind"] == "generator"
    models = load_models(last / "merged", device="cpu")  # codec and audio encoder named by the model card
    unet = load_generator(last).unet.state_dict()  # the ZeRO folder itself, merged on the fly
    assert all(torch.equal(v, unet[k]) for k, v in models.unet.state_dict().items())

    # 1 process: DeepSpeed cannot re-partition ZeRO-2 state; the strategy goes through its universal format
    from lipsync.training import run

    start = RecordStart()
    make_trainer = run.make_trainer
    monkeypatch.setattr(run, "make_trainer", lambda *a, **k: _with(make_trainer(*a, **k), start))
    monkeypatch.chdir(root)
    resumed = unet_wav2lip_lightning.main([*train_argv(root, 5), *GENERATOR, "--ckpt", str(last)])
    assert resumed.global_step == 5 and resumed.world_size == 1
    trained = {k: v for k, v in merged.state_dict.items() if k.startswith("unet.")}
    assert trained and all(torch.equal(start.weights[k], v) for k, v in trained.items())  # both processes' halves
    adam = resumed.strategy.deepspeed_engine.optimizer.optimizer
    assert {int(state["step"]) for state in adam.state.values()} == {5}  # the moments came along (step 3 + 2)
    assert not universal_path(last).exists()  # the converted copy is gone again


def test_generator_two_process_checkpoint_resumes_on_two_nodes_launched_by_torchrun(two_process_runs):
    """The README's torchrun command, for 2 nodes of 1 process each (both on this machine): each node runs
    torchrun with its --node_rank, the script gets --devices 1 --num_nodes 2, and the 2-process checkpoint
    resumes as it is."""
    root, runs = two_process_runs
    assert runs["generator"][0] == 0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    argv = [*train_argv(root, 5, "--devices", "1", "--num_nodes", "2"), *GENERATOR, "--output_dir", str(root / "nodes"),
            "--ckpt", str(last_ckpt(root, "generator", 0))]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                               "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(REPO / "unet_wav2lip_lightning.py"), *argv], cwd=root, env=script_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, stderr = node.communicate(timeout=600)
        assert node.returncode == 0, stderr[-3000:]
    resumed = root / "nodes" / "generator" / "version_0" / "checkpoints" / "last.ckpt"
    assert zero_world_size(resumed) == 2
    states = torch.load(resumed / "checkpoint" / "mp_rank_00_model_states.pt", weights_only=False)
    assert states["global_step"] == 5


def test_syncnet_ddp_on_two_processes_resumes_on_one(two_process_runs, monkeypatch):
    root, runs = two_process_runs
    code, stderr = runs["syncnet"]
    assert code == 0, stderr[-3000:]
    last = last_ckpt(root, "syncnet", 0)
    saved = torch.load(last, weights_only=False)
    assert last.is_file() and saved["global_step"] == 3
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    monkeypatch.chdir(root)
    resumed = unet_syncnet_lightning.main([*train_argv(root, 5), "--ckpt", str(last)])
    assert resumed.global_step == 5 and resumed.world_size == 1


def _with(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer
