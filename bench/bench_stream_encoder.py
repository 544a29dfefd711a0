"""The streaming speech encoder's step: Wav2Vec2-base on a stream's windows (1 s left + 40 ms + 100 ms right context,
18,320 samples), eager against the recorded CUDA graph, at the batch sizes a server's tick sees.

    python bench/bench_stream_encoder.py --work /tmp/bench_encoder [--batches 1 2 4 8 16] [--profile]

Random weights of the real architecture (model_zoo.wav2vec2_config), fp32 as the server runs it. Prints ms per
call and per window for: eager with cuDNN autotuning off (AudioEncoder.hidden_states, what windows of any other
length get), eager autotuned (after one call of the shape), and the graph (GraphedHiddenStates); --profile: the
eager call's top CUDA kernels at batch 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lipsync import model_zoo  # noqa: E402
from lipsync.audio_encoder import AudioEncoder, GraphedHiddenStates  # noqa: E402
from lipsync.realtime.streaming import StreamOptions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import timed  # noqa: E402  (ms per call after warm-up calls, the GPU synchronised)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_stream_encoder.py needs a CUDA device")
    torch.backends.cudnn.benchmark = True  # as load_models sets it on CUDA
    folder = Path(args.work) / "wav2vec2_base"
    if not folder.is_dir():
        model_zoo.save_wav2vec2(folder, model_zoo.wav2vec2_config())
    encoder = AudioEncoder(str(folder), device="cuda")
    length = StreamOptions().window_samples
    rng = np.random.default_rng(0)
    print(f"{torch.cuda.get_device_name()}; windows of {length} samples, fp32")
    print("batch  eager ms (no autotuning)  eager ms (autotuned)  graph ms  graph ms / window  max |graph - eager|")
    for batch in args.batches:
        windows = rng.standard_normal((batch, length)).astype(np.float32)
        eager = timed(lambda: encoder.hidden_states(windows).float().cpu(), args.repeats, warmup=2)[0]
        signal = torch.from_numpy(windows).cuda()
        with torch.inference_mode():
            tuned = timed(lambda: encoder.model(signal).last_hidden_state.float().cpu(), args.repeats, warmup=2)[0]
        graph = GraphedHiddenStates(encoder, batch, length)
        replay = timed(lambda: graph(windows).float().cpu(), args.repeats, warmup=2)[0]
        difference = (graph(windows).float().cpu() - encoder.hidden_states(windows).float().cpu()).abs().max()
        print(f"{batch:>5} {eager:>24.2f} {tuned:>21.2f} {replay:>9.2f} {replay / batch:>17.2f} {difference:>19.2e}",
              flush=True)
    if args.profile:
        windows = rng.standard_normal((1, length)).astype(np.float32)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                                torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                encoder.hidden_states(windows).float().cpu()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
