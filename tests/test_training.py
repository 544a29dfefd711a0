"""Both training scripts end to end on tiny data through the DeepSpeed ZeRO-2 path (CPUDeepSpeedStrategy):
checkpoint folders, exact resume, the persisted sync switch, the frozen expert, zero_to_fp32 merge -> loader."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from pytorch_lightning import Callback

import unet_syncnet_lightning
import unet_wav2lip_lightning
from lipsync import model_zoo
from lipsync.checkpoint import load_generator, load_syncnet, read_checkpoint
from lipsync.errors import UserError
from models.unet import generate

from tiny_runs import DIM, SIZE, C, train_argv, write_latent_dataset


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_models):
    """cwd with filelists_lrs2/ and a data root of 4 random videos (16x16 latents, 32-d features, tiny codec)."""
    return write_latent_dataset(tmp_path_factory.mktemp("train"), tiny_models["vae"])


argv = train_argv


def run_folder(workdir, experiment, version):
    return workdir / "runs" / experiment / f"version_{version}"


@pytest.fixture(scope="module")
def syncnet_run(workdir):
    """3 steps of unet_syncnet_lightning.py; validation (and so a top-k checkpoint) at step 3."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        trainer = unet_syncnet_lightning.main(argv(workdir, 3, "--strategy", "deepspeed_stage_2"))
    return trainer, run_folder(workdir, "syncnet", 0)


def test_syncnet_zero2_checkpoint_resume_and_load(workdir, syncnet_run, monkeypatch):
    trainer, run = syncnet_run
    assert trainer.global_step == 3
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and (last / "zero_to_fp32.py").is_file() and (last / "latest").is_file()
    assert len(list((run / "checkpoints").glob("syncnet-u-3-*.ckpt"))) == 1  # top-k by val/loss
    assert (run / "options.json").is_file()

    monkeypatch.chdir(workdir)
    resumed = unet_syncnet_lightning.main(argv(workdir, 5, "--strategy", "deepspeed_stage_2", "--ckpt", str(last)))
    assert resumed.global_step == 5
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == 5  # the schedule continued
    adam = resumed.strategy.deepspeed_engine.optimizer.optimizer  # ZeRO-2 wraps torch's AdamW
    assert {int(state["step"]) for state in adam.state.values()} == {5}  # so did the optimizer moments

    final = run_folder(workdir, "syncnet", 1) / "checkpoints" / "last.ckpt"
    loaded = load_syncnet(final, expect_variant="u")
    assert loaded.kind == "zero" and loaded.card["kind"] == "syncnet" and loaded.card["audio_hidden_size"] == DIM
    trained = resumed.lightning_module.syncnet.cpu().state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in loaded.syncnet.state_dict().items())
    with pytest.raises(UserError, match="pass it with --syncnet"):
        load_syncnet(final, expect_variant="xl")


@pytest.mark.parametrize("flag, mode", [(["--compile"], None), (["--compile", "reduce-overhead"], "reduce-overhead")])
def test_compiled_training_step_equals_the_eager_one(workdir, syncnet_run, tiny_models, monkeypatch, flag, mode):
    """--compile [MODE] compiles the UNet and the frozen expert in place with that torch.compile mode; the
    checkpoint keys stay the eager ones, and a training step's losses and UNet gradients are the eager step's.
    The compiler backend here is torch's aot_eager: the same graph capture and forward / backward split that
    inductor then compiles (inductor's own CPU code generation takes minutes per graph on a 2-core machine; its
    kernels, and reduce-overhead's CUDA graphs, are measured on the GPU: bench/gpu_speed.sh)."""
    built, modes = {}, []
    compile_module = torch.nn.Module.compile

    def compile_with_aot_eager(module, *args, mode=None, **kwargs):
        modes.append(mode)
        return compile_module(module, *args, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    monkeypatch.setattr(unet_wav2lip_lightning, "fit", lambda args, module, *rest, **kw: built.update(m=module))
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(workdir / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.chdir(workdir)
    common = ["--syncnet", str(syncnet_run[1] / "checkpoints" / "last.ckpt"), "--unet_ckpt", tiny_models["unet"],
              "--sync_start_step", "0"]
    unet_wav2lip_lightning.main(argv(workdir, 1, *common))
    eager = built["m"]
    unet_wav2lip_lightning.main(argv(workdir, 1, *common, *flag))
    compiled = built["m"]
    assert modes == [mode, mode]  # the UNet and the expert
    assert compiled.unet._compiled_call_impl is not None and compiled.expert._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())

    gen = torch.Generator().manual_seed(1)
    batch = {name: torch.randn(2, 5, C, SIZE, SIZE, generator=gen) for name in ("masked", "reference", "gt")}
    batch.update(audio=torch.randn(2, 5, 10, DIM, generator=gen), sync_audio=torch.randn(2, 10, DIM, generator=gen))
    results = []
    for module in (eager, compiled):
        module.on_train_batch_start(batch, 0)  # --sync_start_step 0: the sync loss is on
        recon, sync, total, _ = module.losses(batch)
        total.backward()
        results.append((torch.stack([recon, sync, total]).detach(), [p.grad for p in module.unet.parameters()]))
    (losses, grads), (compiled_losses, compiled_grads) = results
    assert losses[1] > 0 and torch.allclose(compiled_losses, losses, rtol=1e-5, atol=1e-6)
    assert all(g is not None and torch.allclose(c, g, rtol=1e-4, atol=1e-6) for c, g in zip(compiled_grads, grads))
    # compiled work goes to the persistent cache folder
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(workdir / "cache" / "torch_compile")


def test_generator_trains_under_zero2_with_the_compiled_unet_and_expert(workdir, syncnet_run, tiny_models,
                                                                        monkeypatch):
    """Two steps of --compile reduce-overhead through the script, DeepSpeed ZeRO-2 and its gradient hooks on the
    compiled backward included, then a checkpoint folder (compiler backend aot_eager, as above)."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda module, *args, mode=None, **kw: compile_module(module, *args, backend="aot_eager", **kw))
    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(workdir / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "restored after the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.chdir(workdir)
    expert = str(syncnet_run[1] / "checkpoints" / "last.ckpt")
    trainer = unet_wav2lip_lightning.main(argv(workdir, 2, "--syncnet", expert, "--unet_ckpt", tiny_models["unet"],
                                               "--sync_start_step", "0", "--compile", "reduce-overhead",
                                               "--output_dir", str(workdir / "compiled_runs")))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/total"])
    assert trainer.lightning_module.unet._compiled_call_impl is not None
    assert list((workdir / "compiled_runs" / "generator").glob("version_*/checkpoints/last.ckpt/latest"))


def test_generator_sync_switch_resume_frozen_expert_and_merge(workdir, syncnet_run, tiny_models, monkeypatch):
    expert_ckpt = str(syncnet_run[1] / "checkpoints" / "last.ckpt")
    experts = []

    def watched_load_syncnet(path, expect_variant=None):
        """The real loader, plus a record of the expert's state and of its mode at every forward."""
        loaded = load_syncnet(path, expect_variant)
        modes = []
        loaded.syncnet.register_forward_pre_hook(
            lambda net, _: modes.append(any(m.training for m in net.modules())))
        experts.append((loaded.syncnet, copy.deepcopy(loaded.syncnet.state_dict()), modes))
        return loaded

    monkeypatch.setattr(unet_wav2lip_lightning, "load_syncnet", watched_load_syncnet)
    monkeypatch.chdir(workdir)
    common = ["--syncnet", expert_ckpt, "--unet_ckpt", tiny_models["unet"]]
    trainer = unet_wav2lip_lightning.main(argv(workdir, 3, *common, "--sync_start_step", "2"))
    assert bool(trainer.lightning_module.sync_on) and trainer.callback_metrics["train/sync_weight"] == 0.1
    assert not trainer.strategy.deepspeed_engine.tput_timer.config.enabled  # it synchronises the GPU every step
    run = run_folder(workdir, "generator", 0)
    assert (run / "samples" / "step_0000003.png").is_file()  # decoded by the dataset's codec
    assert len(list((run / "checkpoints").glob("generator-3-*.ckpt"))) == 1  # top-k by val/recon_loss

    # resume with a rule that would never switch: the switch must come from the checkpoint's buffer
    last = run / "checkpoints" / "last.ckpt"
    resumed = unet_wav2lip_lightning.main(argv(workdir, 5, *common, "--sync_start_val_sync", "0", "--ckpt", str(last)))
    module = resumed.lightning_module
    assert resumed.global_step == 5 and bool(module.sync_on)

    # the expert: in eval mode at every forward, BatchNorm running stats untouched, not part of the module
    for expert, before, modes in experts:
        assert modes and not any(modes)
        assert all(torch.equal(v, expert.state_dict()[k]) for k, v in before.items())
    assert not any(name.startswith(("expert", "codec")) for name in module.state_dict())

    # DeepSpeed's own merge script, run inside the checkpoint folder, then the one loader
    final = run_folder(workdir, "generator", 1) / "checkpoints" / "last.ckpt"
    subprocess.run([sys.executable, "zero_to_fp32.py", ".", "merged"], cwd=final, check=True, capture_output=True)
    merged = read_checkpoint(final / "merged")
    assert merged.card["kind"] == "generator" and merged.card["T"] == 5  # the model_card buffer survived
    assert {k.split(".")[0] for k in merged.state_dict} == {"unet", "sync_on"}
    x = torch.randn(2, C, SIZE, SIZE), torch.randn(2, C, SIZE, SIZE), torch.randn(2, 10, DIM)
    with torch.no_grad():
        expected = generate(module.unet.cpu().eval(), *x)
        for path in (final / "merged", final):
            loaded = load_generator(path)
            assert torch.allclose(generate(loaded.unet.eval(), *x), expected, atol=1e-5)


def _mask_index(tensor, index, *rest) -> bool:
    """tensor[index] selects by a boolean mask: the result's size depends on the mask's values."""
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool
               for part in (index if isinstance(index, tuple) else (index,)))


class HostWaitCounter:
    """While active, counts what would make the host wait for the GPU's queued work on a GPU (and the GPU then
    idle while the host goes on): reading a tensor's value on the host (.item(), bool(), float(), int(),
    .tolist(), .cpu(), .numpy()), making a tensor from host data (torch.tensor / torch.as_tensor: a blocking
    copy), and results whose size depends on values (boolean-mask indexing, nonzero, masked_select). On this
    CPU-only machine nothing waits, but the same Python code path runs."""
    TARGETS = ([(torch.Tensor, name, None) for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu",
                                                        "numpy", "nonzero", "masked_select")]
               + [(torch, name, None) for name in ("tensor", "as_tensor", "nonzero", "masked_select")]
               + [(torch.Tensor, "__getitem__", _mask_index)])

    def __init__(self):
        self.waits, self._own = 0, None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        self._own = [owner.__dict__.get(name) for owner, name, _ in self.TARGETS]
        for owner, name, waits_if in self.TARGETS:
            setattr(owner, name, self._counting(getattr(owner, name), waits_if))

    def stop(self):
        for (owner, name, _), function in zip(self.TARGETS, self._own):
            if function is None:  # inherited from torch's C base class: uncover it again
                delattr(owner, name)
            else:
                setattr(owner, name, function)
        self._own = None

    def _counting(self, function, waits_if):
        def counting_call(*args, **kwargs):
            self.waits += waits_if is None or waits_if(*args, **kwargs)
            return function(*args, **kwargs)
        return counting_call


class CountHostWaitsInZeroStep(Callback):
    """Host waits inside ZeRO's optimizer step, over the whole run."""
    def __init__(self):
        self.counter = HostWaitCounter()

    def on_train_start(self, trainer, module):
        zero_optimizer = trainer.strategy.deepspeed_engine.optimizer
        step = zero_optimizer.step

        def counted_step(*args, **kwargs):
            with self.counter:
                return step(*args, **kwargs)
        zero_optimizer.step = counted_step

    @property
    def waits(self):
        return self.counter.waits


class CountHostWaitsBetweenBatches(Callback):
    """Host waits from the start of batch `first` to the start of batch `last` of the first epoch: whole training
    iterations (forward, backward, optimizer step, every hook and the progress bar, the next batch's fetch)."""
    def __init__(self, first: int, last: int):
        self.first, self.last, self.counter = first, last, HostWaitCounter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.first:
            self.counter.start()
        if trainer.current_epoch == 0 and batch_idx == self.last:
            self.counter.stop()


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_zero_step_fused_checks_match_deepspeed_and_skip_nan_steps(workdir, syncnet_run, tiny_models, monkeypatch,
                                                                     precision):
    """ZeroStage2Strategy replaces ZeRO's per-tensor gradient checks (~5,000 GPU launches per step) with
    multi-tensor norms: the same norm and overflow verdicts as DeepSpeed's own loops, and a step whose gradients
    hold NaN is still skipped (in bf16 by the fused AdamW, told on the device)."""
    from lipsync.training import run as training

    class PoisonOneStep(Callback):
        """At the third batch, every UNet gradient becomes NaN; record the weights around that step."""
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 2:
                self.before = [p.detach().float().clone() for p in module.unet.parameters()]
                self.hooks = [p.register_hook(lambda g: torch.full_like(g, float("nan")))
                              for p in module.unet.parameters()]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 2:
                for hook in self.hooks:
                    hook.remove()
                self.after = [p.detach().float().clone() for p in module.unet.parameters()]

    poison, host_waits = PoisonOneStep(), CountHostWaitsInZeroStep()
    make_trainer = training.make_trainer
    monkeypatch.setattr(training, "make_trainer",
                        lambda *a, **k: _with_callback(_with_callback(make_trainer(*a, **k), poison), host_waits))
    monkeypatch.chdir(workdir)
    args = argv(workdir, 4, "--syncnet", str(syncnet_run[1] / "checkpoints" / "last.ckpt"),
                "--unet_ckpt", tiny_models["unet"], "--precision", precision, "--output_dir", str(workdir / "nan"))
    trainer = unet_wav2lip_lightning.main(args)
    zero = trainer.strategy.deepspeed_engine.optimizer
    assert all(torch.equal(a, b) for a, b in zip(poison.before, poison.after))  # the NaN step was skipped
    final = [p.detach().float() for p in trainer.lightning_module.unet.parameters()]
    assert all(p.isfinite().all() for p in final)  # ... and left no NaN in the moments: step 4 trained on
    assert not all(torch.equal(a, b) for a, b in zip(poison.after, final))
    # bf16: the skip was decided on the device (DeepSpeed's host check off; the fused AdamW took found_inf)
    on_device = precision == "bf16-mixed"
    assert hasattr(zero.optimizer, "found_inf") is on_device and not (on_device and zero.check_grad_overflow)
    assert (host_waits.waits == 0) is on_device  # DeepSpeed's own step (fp32) reads its verdicts on the host
    own_clip = type(zero).unscale_and_clip_grads
    for norm in (0.5, 3.0):  # under and over --gradient_clip_val 1.0: the same gradients as DeepSpeed's clipping
        grad = torch.randn(10)
        ours, theirs = grad.clone(), grad.clone()
        zero.unscale_and_clip_grads([ours], torch.tensor(norm))
        own_clip(zero, [theirs], torch.tensor(norm))
        assert torch.allclose(ours, theirs, rtol=1e-6) and torch.allclose(ours, grad / max(1.0, norm), rtol=1e-5)
    assert all(group["fused"] for group in zero.optimizer.param_groups)
    assert not zero.overlap_comm  # one process: no reduction to overlap (and no synchronize per bucket)

    own_norm = type(zero).get_grad_norm_direct  # DeepSpeed's per-tensor loop, unpatched
    params = zero.params_in_partition[0][:3]
    grads = [torch.randn(p.shape, dtype=p.dtype) for p in params]
    assert zero.get_grad_norm_direct is not own_norm
    assert torch.allclose(zero.get_grad_norm_direct(grads, params), own_norm(zero, grads, params), rtol=1e-5)
    own_overflow = type(zero).has_overflow_partitioned_grads_serial
    assert zero.has_overflow_partitioned_grads_serial is not own_overflow
    zero.averaged_gradients = {i: grads if i == 0 else [] for i in range(len(zero.bit16_groups))}
    assert not zero.has_overflow_partitioned_grads_serial().item() and not own_overflow(zero).item()
    grads[1][0] = float("inf")
    assert zero.get_grad_norm_direct(grads, params).item() == own_norm(zero, grads, params).item() == -1.0
    assert zero.has_overflow_partitioned_grads_serial().item() and own_overflow(zero).item()
    grads[1][0] = float("nan")
    assert zero.has_overflow_partitioned_grads_serial().item() and own_overflow(zero).item()


@pytest.mark.parametrize("script", ["syncnet", "generator"])
def test_training_steps_between_logging_steps_never_wait_for_the_gpu(workdir, syncnet_run, tiny_models,
                                                                      monkeypatch, script):
    """Between logging steps a training iteration reads nothing back from the device: each read would make the
    host wait for the queued GPU work. The losses still reach the progress bar (read once the copy of a logging
    step's losses has landed: on this CPU, at once)."""
    from lipsync.training import run as training

    window = CountHostWaitsBetweenBatches(first=1, last=3)  # iterations 2 and 3; steps 1 and 50 are logged
    make_trainer = training.make_trainer
    monkeypatch.setattr(training, "make_trainer", lambda *a, **k: _with_callback(make_trainer(*a, **k), window))
    monkeypatch.chdir(workdir)
    common = ["--num_workers", "1", "--log_every_n_steps", "50", "--val_check_interval", "100",
              "--output_dir", str(workdir / "waits")]  # the loader's own reads happen in its worker process
    if script == "syncnet":
        trainer = unet_syncnet_lightning.main(argv(workdir, 4, *common))
        shown = {"train/loss"}
    else:
        trainer = unet_wav2lip_lightning.main(argv(workdir, 4, *common, "--precision", "bf16-mixed", "--syncnet",
                                                   str(syncnet_run[1] / "checkpoints" / "last.ckpt"),
                                                   "--unet_ckpt", tiny_models["unet"], "--sync_start_step", "0"))
        shown = {"train/recon_loss", "train/sync_loss", "train/total"}
    assert trainer.global_step == 4 and window.counter.waits == 0
    metrics = trainer.progress_bar_callback.get_metrics(trainer, trainer.lightning_module)
    assert shown <= set(metrics) and all(isinstance(metrics[name], float) for name in shown)


def test_bf16_run_saved_with_an_unfused_adamw_resumes(workdir, syncnet_run, tiny_models, monkeypatch):
    """Runs saved before AdamW was fused under DeepSpeed restore fused=False into the optimizer; the step that
    hands the skip verdict to the fused kernel switches it back (the unfused kernel would refuse found_inf)."""
    from lipsync.training import optim

    monkeypatch.chdir(workdir)
    common = ["--syncnet", str(syncnet_run[1] / "checkpoints" / "last.ckpt"), "--unet_ckpt", tiny_models["unet"],
              "--precision", "bf16-mixed", "--output_dir", str(workdir / "unfused")]
    with monkeypatch.context() as old_rule:
        old_rule.setattr(optim, "fused_adamw_pays", lambda trainer, params: False)
        saved = unet_wav2lip_lightning.main(argv(workdir, 3, *common))
    assert not saved.strategy.deepspeed_engine.optimizer.optimizer.param_groups[0]["fused"]
    last = workdir / "unfused" / "generator" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = unet_wav2lip_lightning.main(argv(workdir, 5, *common, "--ckpt", str(last)))
    adam = resumed.strategy.deepspeed_engine.optimizer.optimizer
    assert resumed.global_step == 5 and all(group["fused"] for group in adam.param_groups)
    assert {int(state["step"]) for state in adam.state.values()} == {5}


@pytest.mark.parametrize("strategy, precision, expected", [
    ("deepspeed_stage_2", "bf16-mixed", torch.bfloat16), ("deepspeed_stage_2", "16-mixed", torch.float16),
    ("deepspeed_stage_2", "32-true", torch.float32), ("auto", "bf16-mixed", torch.float32),
    ("ddp", "bf16-true", torch.bfloat16)])
def test_batches_arrive_in_the_dtype_lightning_would_cast_them_to(workdir, strategy, precision, expected):
    """Lightning casts every batch on its main thread before moving it to the GPU (DeepSpeed: any 16-bit
    precision); the loader workers deliver that dtype instead, with the same values as Lightning's cast."""
    from lipsync.data.module import LatentDataModule
    from lipsync.training.run import batch_dtype

    args = unet_wav2lip_lightning.parse_args(["--data_root", "d", "--dataset_name", "n", "--syncnet", "s",
                                              "--unet_ckpt", "u", "--strategy", strategy, "--precision", precision])
    assert batch_dtype(args) == expected
    data = {}
    for dtype in (torch.float32, expected):
        module = LatentDataModule(workdir / "data", "lrs2", task="generator", T=5, dtype=dtype, val_samples=2)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(workdir)
            module.setup()
        data[dtype] = module.train_dataset[3]
    for key, value in data[expected].items():
        assert value.dtype == expected and torch.equal(value, data[torch.float32][key].to(expected))


def _with_callback(trainer, callback):
    trainer.callbacks.append(callback)
    return trainer


def test_unet_audio_mismatch_is_one_line_before_training(workdir, tmp_path, monkeypatch, capsys):
    unet = model_zoo.save_unet(tmp_path / "unet16", model_zoo.tiny_unet_config(cross_attention_dim=16),
                               with_weights=False)
    monkeypatch.chdir(workdir)
    args = argv(workdir, 1, "--syncnet", "unused.ckpt", "--unet_ckpt", str(unet), "--output_dir", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        unet_wav2lip_lightning.main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and "\n" not in err and "cross_attention_dim 16" in err
    assert not (tmp_path / "generator").exists()


@pytest.mark.parametrize("options, message", [
    (["--output_dir", "{file}"], "--output_dir: {file} is a file, not a folder"),
    (["--max_steps", "-1"], "--lr_schedule cosine needs a finite run")])
def test_unusable_run_options_are_one_line_before_any_work(workdir, tmp_path, monkeypatch, capsys, options, message):
    (tmp_path / "taken").write_text("")
    monkeypatch.chdir(workdir)
    filled = [option.format(file=tmp_path / "taken") for option in options]
    with pytest.raises(SystemExit) as exit_info:
        unet_syncnet_lightning.main(argv(workdir, 1, "--output_dir", str(tmp_path / "runs"), *filled))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and "\n" not in err, err
    assert err.startswith("error: " + message.format(file=tmp_path / "taken")), err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("precision, deepspeed, fused", [("32-true", False, True), ("bf16-mixed", False, False),
                                                         ("bf16-mixed", True, True)])
def test_adamw_is_fused_only_where_lightning_takes_it(precision, deepspeed, fused):
    """Fused AdamW on the CPU in full precision (~4x faster there) and under DeepSpeed (which clips itself, and
    tells the fused kernel to skip an inf / NaN step); never under Lightning's mixed-precision plugin, which
    refuses to clip a fused optimizer's gradients (what the scripts' --gradient_clip_val does)."""
    import pytorch_lightning as pl

    from lipsync.training.optim import configure_adamw
    from lipsync.training.options import OptimConfig
    from lipsync.training.zero import CPUDeepSpeedStrategy

    module = pl.LightningModule()
    module.layer = torch.nn.Linear(4, 4)
    module.trainer = pl.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                                strategy=CPUDeepSpeedStrategy() if deepspeed else "auto")
    optimizer = configure_adamw(module, OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant"),
                                total_steps=10, trainer=module.trainer)["optimizer"]
    assert optimizer.defaults["fused"] is fused


@pytest.mark.parametrize("devices, nodes, expected", [("1", "1", "auto"), ("auto", "1", "auto"), ("2", "1", "ddp"),
                                                      ("1", "2", "ddp")])
def test_ddp_on_one_device_runs_the_single_device_strategy(devices, nodes, expected):
    """(On this CPU-only machine --devices auto is one device.) options.json records the resolved strategy."""
    from lipsync.training.run import resolve_args

    args = unet_syncnet_lightning.parse_args(["--data_root", "d", "--dataset_name", "n", "--devices", devices,
                                              "--num_nodes", nodes])
    assert args.strategy == "ddp"  # the SyncNet script's default
    resolve_args(args)
    assert args.strategy == expected


def test_sync_switch_host_copy_follows_the_buffer_through_load_state_dict(tiny_models):
    """Steps read the sync switch from a host copy (reading the GPU buffer every step stalls the GPU queue); a
    state loaded over the module (a resumed run) must replace that copy, not leave the value read before it."""
    from diffusers import UNet2DConditionModel

    from lipsync.training.generator_module import GeneratorModule
    from lipsync.training.options import OptimConfig
    from models.syncnet import SyncNet, SyncNetConfig

    def module():
        return GeneratorModule(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tiny_models["unet"])),
                               SyncNet(SyncNetConfig(variant="u", audio_dim=DIM)), {"kind": "generator"},
                               OptimConfig(lr=1e-3, weight_decay=0.0, warmup_steps=0, schedule="constant"),
                               sync_weight=0.1, sync_start_step=None, sync_start_val_sync=0.5, lower_half_weight=1.0,
                               codec_id=None)

    switched, fresh = module(), module()
    switched._switch_sync_on("test")
    assert switched.sync_active() and not fresh.sync_active()  # fresh has now cached False
    fresh.load_state_dict(switched.state_dict())
    assert fresh.sync_active()


@pytest.mark.parametrize("flags, variant", [([], "u"), (["--xl"], "xl"), (["--variant", "s"], "s"),
                                            (["--variant", "xl"], "xl")])
def test_syncnet_variant_flags(flags, variant):
    args = unet_syncnet_lightning.parse_args(["--data_root", "d", "--dataset_name", "n", *flags])
    assert args.variant == variant


def test_syncnet_xl_and_another_variant_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        unet_syncnet_lightning.parse_args(["--data_root", "d", "--dataset_name", "n", "--xl", "--variant", "s"])
    assert exit_info.value.code == 2 and "not allowed with argument --xl" in capsys.readouterr().err
