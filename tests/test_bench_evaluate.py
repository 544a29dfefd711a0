"""bench/bench_evaluate.py runs end to end on the CPU with tiny models (the GPU numbers come from the same code)."""
import importlib.util
from pathlib import Path

import torch


def test_bench_evaluate_smoke_run(tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_evaluate.py"
    spec = importlib.util.spec_from_file_location("bench_evaluate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = bench.main(["--work", str(tmp_path), "--tiny", "--size", "96", "--seconds", "0.8", "--videos", "1",
                              "--fid_stride", "10", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"inference", "lse", "expert", "fid", "quality", "csim", "all, one pass"}
    assert all(seconds > 0 for seconds in results.values())
    table = capsys.readouterr().out
    assert "videos / min" in table and "x inference" in table and "\nlse " in table
