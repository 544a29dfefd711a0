#!/usr/bin/env bash
# Issues #27's speed table (and #23's evaluation and #26's real-time benchmarks) in ONE device call: the public reference and this project side by side on one GPU.
#   bash bench/gpu_speed.sh OUTDIR
# The checkout must hold (ignored folders, carried to the GPU machine): .whl/ (wheels of the packages a bare GPU image lacks:
# diffusers, deepspeed, av, ...), .refbench/ (the reference implementation's harness) and .clips/
# (hdtf_WDA_KatieHill_000.mp4, audio/latentsync_demo1_audio.wav 9.6 s, audio/musetalk_eng.wav 60 s).
#
# GPU_SPEED_PIECES picks the pieces (default: all); they run in this file's order. A piece starts only if its
# estimated seconds fit before GPU_SPEED_DEADLINE_S (default 540, counted from the script's start) and is killed
# at that deadline; the last lines say which pieces were skipped and the GPU_SPEED_PIECES value that runs them in
# a second call. Logs: OUTDIR/<piece>.log (+ .rc exit status, .wall seconds); the table comes last
# (bench/gpu_speed.py table OUTDIR). GPU_SPEED_TINY=1: tiny models on a CPU, no reference (tests/test_bench.py).
set -u
if [ $# -ne 1 ]; then echo "usage: bash bench/gpu_speed.sh OUTDIR" >&2; exit 2; fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
tiny=${GPU_SPEED_TINY:-0}
cap_scale=1   # a piece's time limit, as a multiple of its GPU value below
deadline=${GPU_SPEED_DEADLINE_S:-540}
work=${GPU_SPEED_WORK:-/tmp/gpu_speed}
start=$(date +%s)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
clip=.clips/hdtf_WDA_KatieHill_000.mp4
speech=.clips/audio/latentsync_demo1_audio.wav   # 9.6 s: 240 frames at 25 fps
long_speech=.clips/audio/musetalk_eng.wav        # 60 s: 1,500 frames

all="install prep ref_train_2 train_b2_fast train_b2_stock train_b2_graphs ref_infer infer_default \
infer_compile_cold infer_auto_warm ref_train_16 train_b16_fast train_b16_stock steady_768 steady_256_eager \
steady_256 infer_autotune steady_768_autotune train_b2_compile train_b2_graphs_single train_b16_graphs \
eval_speed eval_one_pass realtime_256 realtime_512 realtime_256_compile realtime_512_compile realtime_256_wait \
stream_encoder"
if [ "$tiny" = 1 ]; then
  all="prep train_b2_fast train_b2_stock infer_default"; cap_scale=5   # a slow shared CPU
  clip=${GPU_SPEED_CLIP:?GPU_SPEED_TINY=1 needs GPU_SPEED_CLIP, GPU_SPEED_SPEECH}; speech=${GPU_SPEED_SPEECH:?}
  long_speech=$speech
fi
pieces=${GPU_SPEED_PIECES:-$all}
skipped=""

elapsed() { echo $(( $(date +%s) - start )); }

# piece NAME ESTIMATED_S CAP_S COMMAND...: run COMMAND (log, exit status, wall seconds in OUTDIR) if NAME is asked
# for and fits before the deadline; killed at min(CAP_S, time left)
piece() {
  local name=$1 estimate=$2 cap=$3; shift 3
  case " $pieces " in *" $name "*) ;; *) return 0 ;; esac
  local left=$(( deadline - $(elapsed) ))
  if [ "$estimate" -gt "$left" ]; then
    echo "[$(elapsed)s] $name: skipped (needs ~${estimate}s, ${left}s left)"; skipped="$skipped $name"; return 0
  fi
  cap=$(( cap * cap_scale ))
  [ "$cap" -gt "$left" ] && cap=$left
  local t0; t0=$(date +%s%N)
  # a child bash, so that COMMAND may be one of the exported functions below
  timeout -k 10 "$cap" bash -c '"$@"' piece "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$rc" > "$out/$name.rc"
  awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f\n", (b - a) / 1e9 }' > "$out/$name.wall"
  echo "[$(elapsed)s] $name: rc $rc, $(cat "$out/$name.wall") s"
  [ "$rc" = 0 ] || tail -3 "$out/$name.log" | sed 's/^/    /'
}

# timed ARGS...: unet_inference.py from process start to finished file (printed as PROCESS_WALL_S)
timed() {
  local t0; t0=$(date +%s%N)
  "$py" "$root/unet_inference.py" "$@"
  local rc=$?
  awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN { printf "PROCESS_WALL_S %.2f\n", (b - a) / 1e9 }'
  return $rc
}

# byte-compiled as a user's `pip install` leaves them (a first import would otherwise compile diffusers' sources)
install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
    python3 -m compileall -q -j 0 /tmp/site > /dev/null
}
export -f timed install
export root py work tiny clip speech long_speech
case " $pieces " in *" install "*)
  piece install 40 120 install
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-} ;;
esac

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  echo "commit $(git log -1 --format=%h 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | grep -q . && echo '+ uncommitted changes')"
  "$py" -c "import torch; print('torch', torch.__version__)" 2>/dev/null
  date -u +%Y-%m-%dT%H:%MZ; } > "$out/machine.txt"

prep_args=(--work "$work" --clip "$clip")
[ "$tiny" = 1 ] && prep_args+=(--tiny)
case " $pieces " in *" prep "*) rm -rf "$work" ;; esac
piece prep 30 150 "$py" bench/gpu_speed.py prep "${prep_args[@]}"
if [ ! -f "$work/prep.env" ]; then echo "no $work/prep.env: prep failed or was not run"; exit 1; fi
# shellcheck disable=SC1091
set -a; . "$work/prep.env"; set +a   # TRAIN_WORK TRAIN_DATA SYNCNET TRAIN_UNET CKPT_<size> SIZES BOX

# ---------------------------------------------------------------------------------------------------- training
# one run of unet_wav2lip_lightning.py through bench/bench_train_step.py: BATCH, then extra script flags
train() {
  local batch=$1; shift
  local at=45 window=2 steps=48 workers=4
  [ "$batch" -ge 8 ] && { at=17; window=0; steps=18; }
  case " $* " in *" reduce-overhead "*) window=0 ;; esac   # no profiler around CUDA graph replays
  [ "$tiny" = 1 ] && { at=7; window=0; steps=8; workers=0; }
  (cd "$TRAIN_WORK" && LIPSYNC_CACHE_DIR="$work/cache_train" "$py" "$root/bench/bench_train_step.py" \
    --profile_at $at --window $window --quick -- --data_root "$TRAIN_DATA" --dataset_name smoke \
    --syncnet "$SYNCNET" --unet_ckpt "$TRAIN_UNET" --batch_size "$batch" --accumulate_grad_batches 1 \
    --sync_start_step 0 --max_steps $steps --num_workers $workers --train_samples_per_epoch 4000 \
    --val_samples 4 --val_check_interval 1.0 --save_top_k 0 --output_dir "$work/experiments" "$@")
}
stock() { export LIPSYNC_DEEPSPEED_STEP=stock; "$@"; }   # DeepSpeed's own ZeRO step (lipsync/training/zero.py)
export -f train stock

piece ref_train_2 75 150 bash .refbench/run_reference.sh train 2
piece train_b2_fast 30 90 train 2
piece train_b2_stock 35 90 stock train 2
piece train_b2_graphs 130 240 train 2 --compile reduce-overhead

# --------------------------------------------------------------------------------------------------- inference
export LIPSYNC_CACHE_DIR="$work/cache_infer"   # empty at the first compiled run of the call: a cold machine
big=${SIZES%% *}; small=${SIZES##* }
ckpt_big=$(eval echo "\$CKPT_$big"); ckpt_small=$(eval echo "\$CKPT_$small")
export ckpt_big ckpt_small
# shellcheck disable=SC2086  # BOX: four numbers
infer() { timed --checkpoint_path "$ckpt_big" --face "$clip" --audio "$speech" --box $BOX "$@"; }
steady() {
  local ckpt=$1; shift
  # shellcheck disable=SC2086
  timed --checkpoint_path "$ckpt" --face "$clip" --audio "$long_speech" --box $BOX --ref_frame 0 "$@"
}
autotune() { export LIPSYNC_CUDNN_BENCHMARK=1; "$@"; }   # cuDNN's autotuning on (lipsync/inference/models.py)
export -f infer steady autotune

# absolute paths: the reference runs from its own folder
piece ref_infer 100 170 bash .refbench/run_reference.sh infer "$(realpath "$clip")" "$(realpath "$speech")" "$BOX"
piece infer_default 50 120 infer --outfile "$work/default.mp4"
# the warm run needs the cold one's cache, on this machine: the cold one starts only if both fit
piece infer_compile_cold 100 220 infer --outfile "$work/compile_cold.mp4" --compile
if [ -d "$LIPSYNC_CACHE_DIR/compiled" ]; then
  piece infer_auto_warm 50 100 infer --outfile "$work/auto_warm.mp4"
else case " $pieces " in *" infer_auto_warm "*)
  echo "[$(elapsed)s] infer_auto_warm: skipped (no compiled run before it)"; skipped="$skipped infer_auto_warm" ;;
esac; fi

piece ref_train_16 60 150 bash .refbench/run_reference.sh train 16
piece train_b16_fast 35 100 train 16
piece train_b16_stock 35 100 stock train 16

warm=150; [ -d "$LIPSYNC_CACHE_DIR/compiled" ] && warm=60   # compiles first unless infer_compile_cold ran
piece steady_768 $warm 220 steady "$ckpt_big" --compile --outfile "$work/steady_768.mp4"
piece steady_256_eager 25 80 steady "$ckpt_small" --compile off --outfile "$work/steady_256_eager.mp4"
piece steady_256 90 180 steady "$ckpt_small" --compile --outfile "$work/steady_256.mp4"
piece infer_autotune 50 120 autotune infer --outfile "$work/autotune.mp4" --compile off
piece steady_768_autotune $warm 220 autotune steady "$ckpt_big" --compile --outfile "$work/steady_768_autotune.mp4"

piece train_b2_compile 120 240 train 2 --compile
piece train_b2_graphs_single 130 240 train 2 --strategy auto --compile reduce-overhead
piece train_b16_graphs 140 260 train 16 --compile reduce-overhead

# ------------------------------------------------------------------------------------ evaluation and real time
# each metric's seconds per 512 px video next to the inference it scores (FID needs torch-fidelity: .whl_fidelity/)
evaluation() {
  ls .whl_fidelity/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
    --upgrade --target /tmp/torch_fidelity .whl_fidelity/*.whl && export LIPSYNC_TORCH_FIDELITY=/tmp/torch_fidelity
  "$py" bench/bench_evaluate.py --work "$work/evaluation" --size 512 --seconds 10 --videos 3 "$@"
}
# streams vs delay through the real server; SIZE, then extra flags (--compile on|off)
realtime() {
  local size=$1; shift
  "$py" bench/bench_realtime.py --clip "$clip" --audio "$speech" --work "$work/realtime" --sizes "$size" \
    --streams 1 2 4 8 16 --seconds 5 "$@"
}
export -f evaluation realtime
piece eval_speed 120 240 evaluation
piece eval_one_pass 50 120 evaluation --one_pass_only
piece stream_encoder 40 90 "$py" bench/bench_stream_encoder.py --work "$work/stream_encoder" --profile
piece realtime_256 90 200 realtime 256 --compile off
piece realtime_512 90 200 realtime 512 --compile off
piece realtime_256_compile 190 300 realtime 256 --compile on
piece realtime_512_compile 200 300 realtime 512 --compile on --streams 1 2 3 4
piece realtime_256_wait 70 150 realtime 256 --compile on --batch_wait_s 0.04 --streams 2 4 8 16   # after the compile

echo
"$py" bench/gpu_speed.py table "$out" | tee "$out/table.md"
echo
echo "[$(elapsed)s] done"
if [ -n "$skipped" ]; then
  echo "skipped:$skipped"
  echo "to run them in another call: GPU_SPEED_PIECES=\"install prep$skipped\" bash bench/gpu_speed.sh OUTDIR2"
fi
