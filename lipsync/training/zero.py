"""DeepSpeed ZeRO-2 under Lightning: the ONE module that reaches into private internals of DeepSpeed and
Lightning. Each hook pays for itself in BENCHMARKS.md (training) and is checked against the installed versions:
where a hooked method or attribute is missing, the strategy warns once and runs DeepSpeed's stock step instead
(the same training, only slower), so a version bump breaks nothing silently.

- `ZeroStage2Strategy`: Lightning's DeepSpeed ZeRO-2 with a cheaper step on the host (DeepSpeed's throughput timer
  off; in one process no overlap of gradient reduction with backward; the two step changes below), checkpoint
  folders replaced whole (a kill while one is written leaves the previous one), and resumable by another number
  of processes (through DeepSpeed's universal checkpoint; sets the engine's private `_config` for the load).
  Overrides Lightning's private `_format_config` and `_setup_model_and_optimizer`, and the public
  `save_checkpoint` / `load_checkpoint`.
- `fuse_zero_gradient_checks`: the optimizer step's per-tensor inf/NaN checks and clipping norms as multi-tensor
  norms (replaces `get_grad_norm_direct`, `has_overflow_partitioned_grads_serial` on the optimizer instance).
- `decide_overflow_on_device`: in bf16 the skip-this-step decision stays on the GPU (replaces
  `unscale_and_clip_grads`, turns off `check_grad_overflow`; hands the verdict to torch's fused AdamW as
  `found_inf`, the contract torch's GradScaler uses).
- `CPUDeepSpeedStrategy`: the same ZeRO-2 code path on a CPU-only machine (gloo, one or more processes): what CI
  trains with. Skips Lightning's CUDA-only check and DeepSpeed's JIT build of a shared-memory op training never
  uses.

LIPSYNC_DEEPSPEED_STEP=stock turns the two step changes off (for A/B benchmarks).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from pytorch_lightning.strategies import DDPStrategy, DeepSpeedStrategy
from pytorch_lightning.utilities import rank_zero_info

from lipsync.files import atomic_path, recover, remove, replace, temp_path

# what the two step changes read or replace on DeepSpeed's ZeRO-1/2 optimizer (checked before use)
_OPTIMIZER_MEMBERS = ("get_grad_norm_direct", "has_overflow_partitioned_grads_serial", "averaged_gradients",
                      "bit16_groups", "unscale_and_clip_grads", "check_grad_overflow", "clip_grad",
                      "dynamic_loss_scale", "loss_scale", "compute_grad_norm", "torch_autocast_gradscaler",
                      "cpu_offload", "mpu", "has_moe_layers", "dp_process_group", "dtype", "device")
_LIGHTNING_MEMBERS = ("_format_config", "_setup_model_and_optimizer")


def _warn_stock(what: str) -> None:
    warnings.warn(f"DeepSpeed ZeRO step: {what}; running DeepSpeed's stock step (correct, slower). "
                  f"lipsync/training/zero.py was written for deepspeed 0.17-0.19 and pytorch-lightning 2.5-2.6")


class ZeroStage2Strategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed ZeRO-2, cheaper on the host, where a step's idle GPU time comes from:
    - DeepSpeed's throughput timer off: it synchronises with the GPU at every forward and optimizer step (only to
      print samples/s, which the logs already give);
    - with one process, ZeRO's overlap of gradient reduction and backward off: there is nothing to overlap, and
      that mode synchronises at every gradient bucket and at the end of each backward;
    - the optimizer step's gradient checks fused, and in bf16 its skip decision left on the GPU."""

    def __init__(self, **kw):
        super().__init__(stage=2, **kw)
        self.fast_step = os.environ.get("LIPSYNC_DEEPSPEED_STEP", "fast") != "stock"
        missing = [name for name in _LIGHTNING_MEMBERS if not hasattr(DeepSpeedStrategy, name)]
        if missing and self.fast_step:
            _warn_stock(f"Lightning's DeepSpeedStrategy has no {', '.join(missing)}")

    def _format_config(self):
        super()._format_config()
        self.config.setdefault("timers", {"throughput": {"enabled": False}})
        if self.world_size == 1:
            self.config["zero_optimization"]["overlap_comm"] = False

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        engine, zero_optimizer = super()._setup_model_and_optimizer(model, optimizer, lr_scheduler)
        if self.fast_step and _plain_zero_optimizer(zero_optimizer):
            fuse_zero_gradient_checks(zero_optimizer)
            decide_overflow_on_device(zero_optimizer)
        return engine, zero_optimizer

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """DeepSpeed writes a checkpoint folder file by file (each process its shards), over the previous one: a
        kill meanwhile would leave a folder mixing two steps, or a truncated file. Here every process writes into
        the folder's temp name, and once all have, it replaces the previous folder (`lipsync.files.replace`: a
        kill at any point leaves a complete one). Global rank zero swaps, as Lightning deletes checkpoints: the
        checkpoint folder must be on a file system all nodes share."""
        filepath = Path(self.broadcast(str(filepath)))
        tmp = temp_path(filepath)
        if self.is_global_zero:
            recover(filepath)
            remove(tmp)  # a leftover of a killed run
        self.barrier("checkpoint: temp folder cleared")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("checkpoint: every shard written")
        if self.is_global_zero:
            replace(tmp, filepath)
        self.barrier("checkpoint: in place")

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Resume a ZeRO checkpoint, also one written by another number of processes. DeepSpeed's ZeRO-1/2 refuses
        to re-partition optimizer state ("Automatic adjustment of ZeRO's optimizer state partitioning with a new
        world size is not currently supported", `DeepSpeedEngine._load_zero_checkpoint`); its universal checkpoint
        format can: global rank zero converts the folder with DeepSpeed's `ds_to_universal` into a hidden sibling,
        every process loads that, and it is deleted again."""
        saved = zero_world_size(checkpoint_path)
        if saved is None or saved == self.world_size:
            return super().load_checkpoint(checkpoint_path, weights_only)
        universal, failed = universal_path(checkpoint_path), None
        if self.is_global_zero:
            rank_zero_info(f"{checkpoint_path} was written by {saved} processes, this run has {self.world_size}: "
                           f"loading it through DeepSpeed's universal checkpoint format")
            try:
                write_universal_checkpoint(checkpoint_path, universal)
            except RuntimeError as err:  # every process must hear of it, or the others wait here forever
                failed = str(err)
        failed = self.broadcast(failed)
        if failed:
            raise RuntimeError(failed)
        self.deepspeed_engine._config.load_universal_checkpoint = True  # DeepSpeed reads it at load time only
        try:
            return super().load_checkpoint(universal, weights_only)
        finally:
            self.deepspeed_engine._config.load_universal_checkpoint = False
            self.barrier("universal checkpoint loaded")
            if self.is_global_zero:
                remove(universal)


class CPUDeepSpeedStrategy(ZeroStage2Strategy):
    """ZeroStage2Strategy on CPU processes (gloo; `processes` per node), so CI runs the exact DeepSpeed code path
    (ZeRO-2 sharding over processes, sharded checkpoint folders, zero_to_fp32.py) that GPU training uses."""

    def __init__(self, processes: int = 1, **kw):
        kw.setdefault("process_group_backend", "gloo")
        # one device per local process, each with an index (DeepSpeed reads its local rank from it)
        kw.setdefault("parallel_devices", [torch.device("cpu", i) for i in range(processes)])
        skip_shared_memory_op_build()
        super().__init__(**kw)

    def setup_environment(self):
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDAAccelerator check


ZERO_TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy saves under: <folder>/checkpoint/*.pt


def zero_world_size(folder) -> int | None:
    """The number of data-parallel processes that wrote a ZeRO checkpoint folder (None: not a ZeRO folder)."""
    states = Path(folder) / ZERO_TAG / "mp_rank_00_model_states.pt"
    if not states.is_file():
        return None
    return int(torch.load(states, map_location="cpu", weights_only=False, mmap=True)["dp_world_size"])


def universal_path(folder) -> Path:
    """Where the universal form of a ZeRO checkpoint folder goes: `last.ckpt` -> `.last.universal.ckpt`."""
    folder = Path(folder)
    return folder.with_name(f".{folder.stem}.universal{folder.suffix}")


def write_universal_checkpoint(folder, out) -> Path:
    """Convert a ZeRO-1/2 checkpoint folder into DeepSpeed's universal checkpoint (loadable by any number of
    processes with the engine's `load_universal_checkpoint`): DeepSpeed's `ds_to_universal` run on it, then the
    `latest_universal` file naming its tag. `--inject_missing_state`: the folder lacks the Megatron-style layout
    description (`universal_checkpoint_info`), which a plain data-parallel model does not need."""
    folder, out = Path(folder), Path(out)
    with atomic_path(out) as tmp:
        command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   str(folder / ZERO_TAG), "--output_folder", str(tmp / ZERO_TAG), "--inject_missing_state"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"DeepSpeed's ds_to_universal failed on {folder}:\n{done.stdout}{done.stderr}")
        (tmp / "latest_universal").write_text(ZERO_TAG)
    return out


def skip_shared_memory_op_build() -> None:
    """DeepSpeed's CPU accelerator JIT-compiles a shared-memory collective op at its first init (tens of seconds
    of C++ compilation), which training never uses (only DeepSpeed-inference's `inference_all_reduce` calls it;
    ZeRO's collectives go through torch.distributed): report it as unavailable instead. (importlib: a plain
    `import deepspeed.comm.torch as m` binds the real torch package.)"""
    comm = importlib.import_module("deepspeed.comm.torch")
    if hasattr(comm, "build_shm_op"):
        comm.build_shm_op = lambda: None


def _plain_zero_optimizer(zero_optimizer) -> bool:
    """DeepSpeed's ZeRO-1/2 optimizer in the plain single-model case this project runs (no CPU offload, model
    parallelism or MoE), with every member the step changes use: the only case they are written for."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if not isinstance(zero_optimizer, DeepSpeedZeroOptimizer):
        return False
    missing = [name for name in _OPTIMIZER_MEMBERS if not hasattr(zero_optimizer, name)]
    if missing:
        _warn_stock(f"DeepSpeedZeroOptimizer has no {', '.join(missing)}")
        return False
    return not zero_optimizer.cpu_offload and zero_optimizer.mpu is None and not zero_optimizer.has_moe_layers


def fuse_zero_gradient_checks(zero_optimizer) -> bool:
    """Make DeepSpeed ZeRO-1/2's optimizer step launch a few GPU kernels instead of ~16 per gradient tensor.

    Its step checks every gradient tensor for inf / NaN (~6 kernels each), then computes the clipping norm tensor
    by tensor (an fp64 copy and a norm each): thousands of launches per step, during which the GPU idles. Both
    become multi-tensor `torch._foreach_norm` calls accumulating in DeepSpeed's norm dtype: the same norm, and
    the same overflow verdict (a tensor holding inf / NaN has an inf / NaN norm; in fp64 no finite bf16 / fp32
    gradient reaches inf), so a step with inf / NaN gradients is skipped exactly as before. DeepSpeed's own step
    logic is kept; only these two per-tensor helpers of the optimizer instance are replaced. Returns whether it
    applied."""
    from deepspeed.runtime.zero import stage_1_and_2 as zero

    if not _plain_zero_optimizer(zero_optimizer):
        return False
    norm_dtype = zero.get_norm_dtype() if hasattr(zero, "get_norm_dtype") else torch.float64  # (0.17-0.18: fp64)
    own_norm = zero_optimizer.get_grad_norm_direct

    def norms(grads: list) -> torch.Tensor:
        """[G] L2 norm of each gradient tensor, in one multi-tensor launch (a few on long lists)."""
        return torch.stack(torch._foreach_norm(grads, 2, dtype=norm_dtype))

    def grad_norm(gradients, params, norm_type=2):
        if float(norm_type) != 2.0:
            return own_norm(gradients, params, norm_type)
        grads = [g for g in gradients if not getattr(g, "_zero_padding", False)]
        if grads:  # squared sum of the per-tensor norms, as DeepSpeed's loop does
            total = norms(grads).square().sum().float()
        else:
            total = torch.zeros((), dtype=torch.float32, device=zero_optimizer.device)
        zero.dist.all_reduce(total, op=zero.dist.ReduceOp.SUM, group=zero_optimizer.dp_process_group)
        total = total.sqrt()
        # inf / NaN -> -1, DeepSpeed's "overflow" sentinel (its own helper makes the -1 with torch.tensor(): on a
        # GPU a blocking copy from the host, which waits for all the queued work)
        total.masked_fill_(~total.isfinite(), -1.0)
        return total

    def any_inf_or_nan():
        """[1] bool on the device, as DeepSpeed's loop returns it (has_overflow then all-reduces it)."""
        grads = [g for i in range(len(zero_optimizer.bit16_groups))
                 for g in (zero_optimizer.averaged_gradients[i] or ()) if g is not None]
        if not grads:
            return torch.zeros(1, dtype=torch.bool, device=zero_optimizer.device)
        return norms(grads).sum().isfinite().logical_not().reshape(1)

    zero_optimizer.get_grad_norm_direct = grad_norm
    zero_optimizer.has_overflow_partitioned_grads_serial = any_inf_or_nan
    return True


def decide_overflow_on_device(zero_optimizer) -> bool:
    """Keep DeepSpeed ZeRO-1/2's bf16 optimizer step free of host reads of GPU values.

    DeepSpeed's step reads its overflow verdict (`.item()`) and tests the global gradient norm (`bool(tensor)`)
    on the host to decide whether to skip the step; each read waits for the whole backward, then the GPU idles
    while the host launches the update. Here the verdict stays a device tensor: an inf / NaN global norm
    (DeepSpeed's -1 sentinel included) becomes the fused torch optimizer's `found_inf` (with found_inf = 1 the
    fused kernel leaves weights, moments and step counts untouched), so a step with inf / NaN gradients still
    changes nothing. What differs: DeepSpeed no longer learns that a step was skipped (its skipped_steps stays 0,
    and the learning-rate schedule advances on that step). Only in bf16 with a static loss scale of 1 (fp16's
    dynamic loss scaling needs the verdict on the host), with the gradient norm computed, and for a fused
    optimizer that takes found_inf (`optim.configure_adamw` makes AdamW fused under DeepSpeed). Returns whether it
    applied."""
    inner = getattr(zero_optimizer, "optimizer", None)
    if (not _plain_zero_optimizer(zero_optimizer)
            or zero_optimizer.dtype != torch.bfloat16 or zero_optimizer.dynamic_loss_scale
            or zero_optimizer.loss_scale != 1.0 or not zero_optimizer.compute_grad_norm
            or zero_optimizer.torch_autocast_gradscaler is not None
            or not getattr(inner, "_step_supports_amp_scaling", False)):
        return False
    zero_optimizer.check_grad_overflow = False  # step() no longer reads the verdict nor tests the norm on the host
    clip = float(zero_optimizer.clip_grad)

    def unscale_and_clip_grads(grad_groups_flat, total_norm):
        """[] total norm -> found_inf for the optimizer; gradients divided by max(1, norm / clip), on the device."""
        if not all(group.get("fused") for group in inner.param_groups):
            _make_fused(inner)  # resumed from a checkpoint whose AdamW was not fused
        invalid = ~torch.isfinite(total_norm) | (total_norm < 0)
        inner.found_inf = invalid.float()  # read by the fused kernel: 1 -> this step changes nothing
        if clip > 0.0:
            factor = torch.clamp((total_norm + 1e-6) / clip, min=1.0)  # DeepSpeed's clip factor (loss scale 1)
            scale = torch.where(invalid, torch.ones_like(factor), factor).reciprocal()
            for grad in grad_groups_flat:
                grad.mul_(scale)

    zero_optimizer.unscale_and_clip_grads = unscale_and_clip_grads
    return True


def _make_fused(optimizer: torch.optim.Optimizer) -> None:
    """Switch a torch Adam / AdamW to its fused kernel (the same update rule), state included: the fused kernel
    wants each parameter's step count as a float32 tensor on the parameter's device. Resuming restores the
    checkpoint's param-group flags, and runs saved before AdamW was fused under DeepSpeed hold fused=False."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
