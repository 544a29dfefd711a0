"""The benchmarks' own analysis: a wrong analysis reports a wrong bottleneck. Events are real torch.profiler
FunctionEvent objects built with known times (a CPU run records no GPU events to analyse)."""
import importlib.util
from pathlib import Path

import pytest
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent


def load_bench(name: str):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_train_step():
    module = load_bench("bench_train_step")
    module.PHASES.update({"deepspeed:forward", "deepspeed:step"})
    return module


def event(name, start, end, thread=1, gpu=False, annotation=False):
    return FunctionEvent(id=0, name=name, thread=thread, start_us=start, end_us=end,
                         device_type=DeviceType.CUDA if gpu else DeviceType.CPU, is_user_annotation=annotation)


def test_gpu_idle_is_split_by_the_main_threads_phase_and_annotations_are_not_gpu_work(bench_train_step):
    sdpa = "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16"
    events = [
        event("deepspeed:forward", 0, 1000), event("deepspeed:step", 1000, 3000),  # the main thread's phases
        event("deepspeed:step", 1100, 1200, thread=7),  # another thread: ignored for phases
        event(sdpa, 0, 800, gpu=True),  # GPU busy 0-800 us
        event("sm90_xmma_fprop_implicit_gemm_bf16", 800, 1000, gpu=True),  # 800-1000
        event("triton_poi_fused_add_convolution_0", 2500, 3000, gpu=True),  # idle 1000-2500, in the step
        event("deepspeed:forward", 0, 3000, gpu=True, annotation=True),  # the range on the GPU timeline
    ]
    window = 2
    result = bench_train_step.idle_by_phase(events, window)
    assert result["busy"] == pytest.approx(1500 / 3000)  # the annotation's span does not fill the gap
    assert result["ops"] == pytest.approx(3 / window)
    assert result["gpu_ms"] == pytest.approx(1.5 / window)
    assert dict(result["idle"]) == pytest.approx({"deepspeed:step": 1.5 / window})
    by_class, by_name = bench_train_step.gpu_time_by_kernel(events, window)
    shares = {label.split(" (")[0]: ms for label, ms in by_class.items()}
    assert shares == pytest.approx({"attention": 0.4, "convolution": 0.1, "compiled fused kernels": 0.25})
    assert "deepspeed:forward" not in by_name


def test_bench_app_runs_on_the_cpu_with_the_tiny_model(tmp_path, capsys):
    result = load_bench("bench_app").main(["--work", str(tmp_path), "--seconds", "0.4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "start-up:" in out and "concurrent, client 2 of 2" in out and "both done after" in out
    assert [frames for _, _, frames in result["sequential"] + result["concurrent"]] == [10, 10, 10]
    assert result["startup_s"] > result["load_s"] > 0


@pytest.fixture(scope="module")
def bench_realtime():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_realtime.py"
    spec = importlib.util.spec_from_file_location("bench_realtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_realtime_benchmark_runs_on_the_cpu_with_the_tiny_models(bench_realtime, speech, tmp_path, capsys):
    """One stream through the real server (a child process), then the context table, both on a short clip."""
    from lipsync.audio import write_wav

    write_wav(tmp_path / "speech.wav", speech[:16000])
    clip = str(Path(__file__).resolve().parent / "data" / "grid_lwbsza.mpg")
    common = ["--clip", clip, "--audio", str(tmp_path / "speech.wav"), "--work", str(tmp_path / "work"), "--tiny",
              "--device", "cpu", "--seconds", "1.0"]
    bench_realtime.main(common + ["--streams", "1", "--chunk_ms", "100"])
    table = capsys.readouterr().out.split("crop px")[-1].splitlines()
    assert len(table) == 2 and table[1].split()[:3] == ["64", "1", "100"] and "True" in table[1]
    bench_realtime.RIGHT_CONTEXTS, bench_realtime.LEFT_CONTEXTS = (0.1, None), (1.0, None)
    bench_realtime.main(common + ["--context_sweep"])
    rows = capsys.readouterr().out.split("crop px")[-1].splitlines()[1:]
    full = [row.split() for row in rows if row.split()[1:3] == ["None", "None"]]
    assert len(rows) == 3 and float(full[0][3]) == 0.0 and float(full[0][7]) == 0.0  # full context = itself


@pytest.fixture(scope="module")
def bench_resume():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_resume.py"
    spec = importlib.util.spec_from_file_location("bench_resume", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_bench_compares_logged_losses_and_weights(bench_resume, tmp_path):
    """What the resume benchmark reports: losses read back from real TensorBoard event files, compared at the
    steps both runs logged; weights as a relative L2 distance over the floating tensors."""
    import torch
    from torch.utils.tensorboard import SummaryWriter

    for name, values in (("a", {1: 0.5, 2: 0.4, 3: 0.3}), ("c", {3: 0.25, 4: 0.2})):
        with SummaryWriter(str(tmp_path / name)) as writer:
            for step, value in values.items():
                writer.add_scalar("train/recon_loss", value, step)
    reference, resumed = bench_resume.logged_losses(tmp_path / "a"), bench_resume.logged_losses(tmp_path / "c")
    assert reference == pytest.approx({1: 0.5, 2: 0.4, 3: 0.3}) and set(resumed) == {3, 4}
    assert bench_resume.largest_difference(resumed, reference) == pytest.approx(0.05)
    weights = {"w": torch.tensor([3.0, 4.0]), "on": torch.tensor(True)}
    assert bench_resume.relative_l2({"w": torch.tensor([3.0, 4.5]), "on": torch.tensor(False)}, weights) == \
        pytest.approx(0.1)
