"""Recording a device step as ONE CUDA graph: the step's inputs live in fixed buffers that callers fill, a replay
reruns every kernel without Python launching each one (the generation step, the streaming speech encoder)."""
from __future__ import annotations

import threading

import torch

from lipsync.errors import UserError

recording = threading.Lock()  # one recording at a time, whatever is recorded


def record(device: torch.device, what: str, run) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """run() recorded as one CUDA graph, after one warm-up call (cuDNN autotuning, compilation) off the capture
    stream -> (graph, the output tensor every replay rewrites)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = run()
    except RuntimeError as err:
        raise UserError(f"recording {what} as a CUDA graph failed ({str(err).splitlines()[0]}); "
                        f"run with --no_cuda_graph") from None
    return graph, output
