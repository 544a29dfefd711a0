"""Where a generator training step's time goes, through the real script (BENCHMARKS.md 1e-1h).

    python bench/bench_train_step.py [--profile_at 25] [--window 4] -- ARGS OF unet_wav2lip_lightning.py

Runs `unet_wav2lip_lightning.main(ARGS)` unchanged, plus one callback and some host-side annotations
(`torch.profiler.record_function` around DeepSpeed's engine forward / backward / step, the UNet forward, the sync
loss, Lightning's data fetch, batch transfer and every Lightning hook). Reports the median step time over the
unprofiled steps before the profiled window, then, from a torch.profiler window of `--window` steps: GPU work
per step, GPU busy (kernel and copy time over the window), GPU operations launched per step, and the GPU's idle
time (gaps between its operations) by the innermost host phase the main thread was in at each gap, and the GPU
time by kernel class (attention, convolution, matmul, fused Triton, ...) and by kernel. Needs CUDA
for the GPU columns; on a CPU it still runs the steps and reports the step time (a smoke run).
`--count_ops` (any device, meant for the CPU) counts instead, over the same window, the ATen operations that
would each launch GPU work (views and bare allocations excluded), by the innermost annotated phase: what a GPU
step launches, counted where no GPU is.
Give --max_steps >= profile_at + window + 1 among ARGS. `--window 0`: no profiled window (step times only).
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import deepspeed.runtime.engine as deepspeed_engine  # noqa: E402
from pytorch_lightning import Callback  # noqa: E402
from pytorch_lightning.loops import fetchers  # noqa: E402
from pytorch_lightning.trainer import call as lightning_call  # noqa: E402

import lipsync.training.generator_module as generator_module  # noqa: E402
import unet_wav2lip_lightning  # noqa: E402
from lipsync.training import run as training  # noqa: E402

PHASES: set[str] = set()
OUTSIDE = "(outside every annotated phase)"
_ACTIVE = threading.local()  # .phases: the annotated phases this thread is inside, innermost last


class _Phase:
    """A profiler range called `label` that also marks the thread's current phase (for OpCounter)."""

    def __init__(self, label: str):
        self.label, self.range = label, torch.profiler.record_function(label)

    def __enter__(self):
        stack = _ACTIVE.__dict__.setdefault("phases", [])
        stack.append(self.label)
        self.range.__enter__()

    def __exit__(self, *exc):
        self.range.__exit__(*exc)
        _ACTIVE.phases.pop()


def annotate(owner, name: str, label: str) -> None:
    """Wrap owner.name in a profiler range called `label`."""
    function = getattr(owner, name)

    def annotated(*args, **kwargs):
        with _Phase(label):
            return function(*args, **kwargs)

    setattr(owner, name, annotated)
    PHASES.add(label)


# ATen operations that launch no GPU work: bare allocations and metadata changes (views are told by their schema)
_NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
              "aten::new_empty_strided", "aten::set_", "aten::resize_", "aten::lift_fresh", "aten::is_nonzero",
              "aten::_has_compatible_shallow_copy_type", "aten::record_stream"}


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations that would each launch GPU work (at least one kernel or copy; views and bare
    allocations excluded), by the innermost annotated phase of the thread that runs them. On a CPU, autograd runs
    the backward on the calling thread, so backward operations (DeepSpeed's gradient hooks included) count under
    the phase that called backward()."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.name() not in _NO_KERNEL and func.namespace != "profiler":
            stack = getattr(_ACTIVE, "phases", None)
            self.counts[stack[-1] if stack else OUTSIDE] += 1
        return func(*args, **(kwargs or {}))


def annotate_lightning_hooks() -> None:
    """Every Lightning hook call (callbacks, LightningModule, strategy) gets a range named after the hook."""
    for dispatcher, kind in (("_call_callback_hooks", "callback"), ("_call_lightning_module_hook", "module"),
                             ("_call_strategy_hook", "strategy")):
        function = getattr(lightning_call, dispatcher)

        def annotated(trainer, hook_name, *args, _function=function, _kind=kind, **kwargs):
            label = f"{_kind}:{hook_name}"
            PHASES.add(label)
            with _Phase(label):
                return _function(trainer, hook_name, *args, **kwargs)

        setattr(lightning_call, dispatcher, annotated)


def gpu_operations(events) -> list:
    """The kernels, copies and fills the GPU ran. Not the GPU-side copies of `record_function` ranges
    (user annotations): they span from a range's first kernel to its last, gaps included."""
    return [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
            and not getattr(e, "is_user_annotation", False) and e.name not in PHASES]


def idle_by_phase(events, window: int) -> dict:
    """GPU busy / idle per step from a profiler's events, the idle time split by the main thread's phase."""
    is_gpu = gpu_operations(events)
    intervals = sorted((e.time_range.start, e.time_range.end) for e in is_gpu)  # microseconds
    merged: list[list[float]] = []
    for start, end in intervals:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    span = merged[-1][1] - merged[0][0]
    busy = sum(end - start for start, end in merged)
    ranges = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.name in PHASES]
    step_threads = collections.Counter(e.thread for e in ranges)  # Lightning runs its hooks on the main thread
    main = step_threads.most_common(1)[0][0] if step_threads else None
    ranges = [e for e in ranges if e.thread == main]
    idle: collections.Counter = collections.Counter()
    for (_, gap_start), (gap_end, _) in zip(merged, merged[1:]):
        middle = (gap_start + gap_end) / 2
        around = [e for e in ranges if e.time_range.start <= middle <= e.time_range.end]
        phase = min(around, key=lambda e: e.time_range.elapsed_us()).name if around else OUTSIDE
        idle[phase] += (gap_end - gap_start) / 1e3 / window
    return {"gpu_ms": busy / 1e3 / window, "busy": busy / span, "ops": len(is_gpu) / window, "idle": idle}


KERNEL_CLASSES = (  # (class, substrings of the kernel name), first match wins; names as CUDA reports them on sm90
    ("compiled fused kernels (Triton; their names list the ops they fuse)", ("triton",)),
    ("attention (SDPA: cuDNN / flash / mem-efficient)", ("sdpa", "fmha", "flash", "attention")),
    ("convolution (cuDNN fprop / dgrad / wgrad, layout transforms)", ("fprop", "dgrad", "wgrad", "conv",
                                                                       "nchwtonhwc", "nhwctonchw")),
    ("matmul (cuBLAS / CUTLASS)", ("gemm", "nvjet", "cutlass", "xmma")),
    ("normalisation (eager GroupNorm / LayerNorm)", ("norm", "moments")),
    ("optimizer and gradient checks (multi-tensor)", ("multi_tensor", "foreach")),
    ("copies and fills", ("memcpy", "memset", "copy", "fill")),
    ("elementwise and reductions (eager)", ("elementwise", "reduce", "vectorized")),
)


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in KERNEL_CLASSES if any(k in lowered for k in keys)), "other")


def gpu_time_by_kernel(events, window: int) -> tuple[collections.Counter, collections.Counter]:
    """Summed GPU time (ms per step) by kernel class and by kernel name."""
    by_class: collections.Counter = collections.Counter()
    by_name: collections.Counter = collections.Counter()
    for e in gpu_operations(events):
        ms = e.time_range.elapsed_us() / 1e3 / window
        by_class[kernel_class(e.name)] += ms
        by_name[e.name] += ms
    return by_class, by_name


class StepProfile(Callback):
    """Times every step; profiles steps [profile_at, profile_at + window) (or counts their operations)."""

    WARMUP = 5  # steps before the timed ones (compilation, cuDNN autotuning, CUDA graph recording)

    def __init__(self, profile_at: int, window: int, kernels: int = 15, count_ops: bool = False,
                 exit_after: bool = False):
        self.profile_at, self.window, self.kernels, self.exit_after = profile_at, window, kernels, exit_after
        self.starts: list[float] = []
        self.synced: dict[int, float] = {}  # step -> its start, taken once the GPU finished all queued work
        self.profiler = None
        self.result: dict | None = None
        self.counter = OpCounter() if count_ops else None
        self.op_counts: collections.Counter | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = len(self.starts)
        if step in (self.WARMUP, self.profile_at) and torch.cuda.is_available():
            torch.cuda.synchronize()  # the host may run ahead of the GPU: the timed span ends with its work
            self.synced[step] = time.perf_counter()
        self.starts.append(time.perf_counter())
        if step == self.profile_at + self.window and self.exit_after:
            self._finish_window(step)
            self.report()
            sys.stdout.flush()
            os._exit(0)  # no end-of-fit checkpoint: the benchmark is done
        self._finish_window(step)

    def _finish_window(self, step: int) -> None:
        if self.counter is not None:
            if step == self.profile_at:
                self.counter.__enter__()
            if step == self.profile_at + self.window:
                self.counter.__exit__(None, None, None)
                self.op_counts = self.counter.counts
            return
        if step == self.profile_at and self.window > 0:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        if step == self.profile_at + self.window and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            events = self.profiler.events()
            has_gpu = bool(gpu_operations(events))
            self.result = idle_by_phase(events, self.window) if has_gpu else {}
            if has_gpu:
                self.result["by_class"], self.result["by_name"] = gpu_time_by_kernel(events, self.window)
            self.profiler = None

    def report(self) -> None:
        steps = [b - a for a, b in zip(self.starts, self.starts[1:])][self.WARMUP:self.profile_at]
        if not steps:
            raise SystemExit("bench_train_step: too few steps: give --max_steps >= profile_at + window + 1")
        print(f"\nstep time, median of {len(steps)} unprofiled steps: {1e3 * statistics.median(steps):.1f} ms")
        if len(self.synced) == 2:
            mean = (self.synced[self.profile_at] - self.synced[self.WARMUP]) / (self.profile_at - self.WARMUP)
            print(f"step time, mean of steps {self.WARMUP}-{self.profile_at - 1}, GPU work included: "
                  f"{1e3 * mean:.1f} ms")
        if torch.cuda.is_available():
            print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        if self.counter is not None:
            self.report_op_counts()
            return
        if not self.result:
            print("no GPU events (CPU run, or the profiled window was not reached): step time only")
            return
        r = self.result
        print(f"profiled window: GPU work {r['gpu_ms']:.1f} ms/step, GPU busy {100 * r['busy']:.1f} %, "
              f"{r['ops']:.0f} GPU operations/step, idle {sum(r['idle'].values()):.1f} ms/step")
        print("\n| phase the main thread was in while the GPU idled | idle ms/step |\n|---|---|")
        for phase, ms in r["idle"].most_common(12):
            print(f"| {phase} | {ms:.2f} |")
        total = sum(r["by_class"].values())
        print("\n| GPU time by kernel class | ms/step | share |\n|---|---|---|")
        for label, ms in r["by_class"].most_common():
            print(f"| {label} | {ms:.1f} | {100 * ms / total:.1f} % |")
        print(f"\n| the {self.kernels} longest kernels (summed per step) | class | ms/step |\n|---|---|---|")
        for name, ms in r["by_name"].most_common(self.kernels):
            print(f"| {name[:90]} | {kernel_class(name).split(' (')[0]} | {ms:.2f} |")

    def report_op_counts(self) -> None:
        if self.op_counts is None:
            print("operations not counted: the counted window was not reached")
            return
        total = sum(self.op_counts.values())
        print(f"\noperations that would launch GPU work, per step (mean of {self.window} steps): "
              f"{total / self.window:.0f}")
        print("| innermost annotated phase | ops/step |\n|---|---|")
        for phase, n in self.op_counts.most_common():
            print(f"| {phase} | {n / self.window:.0f} |")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile_at", type=int, default=25, help="first profiled step")
    p.add_argument("--window", type=int, default=4, help="profiled steps")
    p.add_argument("--kernels", type=int, default=15, help="list this many of the longest GPU kernels")
    p.add_argument("--quick", action="store_true",
                   help="no sanity validation before training, and exit as soon as the report is printed (no "
                        "end-of-fit checkpoint)")
    p.add_argument("--count_ops", action="store_true",
                   help="count the window's operations by phase instead of profiling it (meant for the CPU)")
    args = p.parse_args(argv[:split])
    annotate(deepspeed_engine.DeepSpeedEngine, "forward", "deepspeed:forward")
    annotate(deepspeed_engine.DeepSpeedEngine, "backward", "deepspeed:backward")
    annotate(deepspeed_engine.DeepSpeedEngine, "step", "deepspeed:step")
    annotate(generator_module, "generate", "unet forward")
    annotate(generator_module.GeneratorModule, "expert_sync_loss", "sync loss")
    annotate(fetchers._PrefetchDataFetcher, "__next__", "data fetch")
    annotate_lightning_hooks()
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    annotate(DeepSpeedZeroOptimizer, "process_gradients", "zero: gradient hooks")
    annotate(DeepSpeedZeroOptimizer, "independent_gradient_partition_epilogue", "zero: end of backward")
    profile = StepProfile(args.profile_at, args.window, args.kernels, args.count_ops, exit_after=args.quick)
    make_trainer = training.make_trainer

    def make_profiled_trainer(*a, **kw):
        trainer = make_trainer(*a, **kw)
        trainer.callbacks.append(profile)
        if args.quick:
            trainer.num_sanity_val_steps = 0  # (compiled: the validation graphs would compile before the step's)
        return trainer

    training.make_trainer = make_profiled_trainer
    unet_wav2lip_lightning.main(argv[split + 1:])
    profile.report()


if __name__ == "__main__":
    main()
