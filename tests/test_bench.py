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
    return load_bench("bench_realtime")


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
    return load_bench("bench_resume")


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


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_speed.sh"
DISTRIBUTED_ENV = {"MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                   "GROUP_RANK", "CROSS_RANK", "CROSS_SIZE"}


def run_gpu_speed(out, work, **env):
    """bench/gpu_speed.sh in its tiny CPU mode (the GRID clip and its own speech)."""
    import os
    import subprocess
    import sys

    # without the rendezvous a training test of this process left in its environment (its store may still hold
    # MASTER_PORT): the script's training runs are processes of their own
    inherited = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env = dict(inherited, GPU_SPEED_TINY="1", GPU_SPEED_CLIP=str(ROOT / "tests/data/grid_lwbsza.mpg"),
               GPU_SPEED_SPEECH=str(ROOT / "tests/data/grid_lwbsza.mpg"), GPU_SPEED_WORK=str(work),
               PYTHON=sys.executable, DS_ACCELERATOR="cpu", **env)
    return subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=900)


def test_gpu_speed_script_skips_what_does_not_fit_before_its_deadline(tmp_path):
    done = run_gpu_speed(tmp_path / "out", tmp_path / "work", GPU_SPEED_DEADLINE_S="0")
    assert done.returncode == 1 and "prep: skipped" in done.stdout and "prep failed or was not run" in done.stdout


def test_gpu_speed_script_runs_its_python_parts_and_prints_the_table(tmp_path):
    """The tiny CPU run of the GPU benchmark: data and models written, the training script timed through
    bench_train_step.py (ZeRO-2 on the CPU), unet_inference.py timed from process start to file, the table."""
    out = tmp_path / "out"
    done = run_gpu_speed(out, tmp_path / "work", GPU_SPEED_PIECES="prep train_b2_fast infer_default",
                         GPU_SPEED_DEADLINE_S="800")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "table.md").read_text()
    rows = {}
    for line in table.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].lstrip("| "), line)  # training: the batch-2 row comes first
    eager = rows["this project, eager, ZeRO-2 with lipsync's step (default)"]
    assert eager.split(" | ")[1] == "2" and float(eager.split(" | ")[2]) > 0  # ms/step measured
    assert "skipped" in rows["reference (DDP, fp16 autocast, optimizer step every 4th micro-batch)"]
    default = rows["this project, default flags, no compile cache (a bare machine)"]
    assert float(default.split(" | ")[1]) > 0 and "74 frames" in default and "generate_and_write" in default
    assert (out / "train_b2_fast.rc").read_text().strip() == "0"


def test_gpu_speed_table_reads_the_reference_and_project_logs(tmp_path):
    """The table's numbers and ratios from logs as the reference harness and the project's runs print them."""
    import subprocess
    import sys

    logs = {
        "ref_train_2": 'first batch at 20.1s\nREF_TRAIN {"batch": 2, "median_ms": 107.5, "peak_alloc_gib": 8.1}\n',
        "train_b2_graphs": "step time, median of 40 unprofiled steps: 60.0 ms\n"
                           "step time, mean of steps 5-44, GPU work included: 71.7 ms\npeak GPU memory: 6.0 GiB\n",
        "train_b2_stock": "Traceback (most recent call last):\nRuntimeError: CUDA out of memory\n",
        "ref_infer": 'REF_INFER {"script_s": 88.0, "frames": 236}\nMUX {"seconds": 2.1}\nREF_PROCESS_WALL_S 90.7\n',
        "infer_auto_warm": "wrote out.mp4: 240 frames, 512x512 @ 25 fps, 9.6 s of audio\n"
                           "faces found in 240/240 frames (0 passed through unchanged); 200 source frames; 14.0 s on "
                           "cuda (bfloat16, compiled)\nsteps (wall s): inputs 0.10, models_and_audio 4.00, boxes "
                           "0.02, reference_and_graph 3.00, generate_and_write 6.80, finish 0.08\n"
                           "stage          seconds  frames      fps\ngenerate         5.000     240     48.0\n"
                           "PROCESS_WALL_S 22.68\n",
    }
    for name, text in logs.items():
        (tmp_path / f"{name}.log").write_text(text)
        (tmp_path / f"{name}.rc").write_text("1\n" if name == "train_b2_stock" else "0\n")
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "table", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")]
    by_name = {}
    for row in rows:
        by_name.setdefault(row[0].lstrip("| "), row)
    assert by_name["reference (DDP, fp16 autocast, optimizer step every 4th micro-batch)"][2] == "107.5"
    graphs = by_name["this project, --compile reduce-overhead (inductor + CUDA graphs), ZeRO-2"]
    assert graphs[2:4] == ["71.7", "1.50x"]  # the GPU-synchronised mean, not the median
    assert by_name["this project, eager, DeepSpeed's stock ZeRO-2 step (LIPSYNC_DEEPSPEED_STEP=stock)"][2] == \
        "failed (rc 1)"
    warm = by_name["this project, default flags after that run (--compile auto, cache on disk)"]
    assert warm[1:3] == ["22.7", "4.00x"]
    assert "240 frames, compiled" in warm[3] and "interpreter + imports 8.7" in warm[3]
    # the reference's own script failed (a missing file) while its wrapper still printed its clock: no ratio
    (tmp_path / "ref_infer.log").write_text("FileNotFoundError: speech.wav\nREF_PROCESS_WALL_S 17.5\n")
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_speed.py"), "table", str(tmp_path)],
                           capture_output=True, text=True, check=True).stdout
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines() if "inference" not in
            line and line.startswith("| ")}
    assert rows["reference, its defaults (fp32, batch 2)"][1] == "failed (no REF_INFER line)"
    assert rows["this project, default flags after that run (--compile auto, cache on disk)"][1:3] == ["22.7", ""]
