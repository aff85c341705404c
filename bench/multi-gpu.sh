#!/usr/bin/env bash
# multi-gpu.sh — data-parallel scaling of LoRA training over this machine's GPUs, in ONE call (docs/multi-gpu.md):
#   1. builds the engine with CUDA + NCCL (headers and libnccl.so.2 from the nvidia-nccl-cu13 wheel that PyTorch
#      installs; cuDNN from its wheel, as bench/cuda-train.sh does), unless ENGINE names a build;
#   2. the random Llama-3-8B bf16 base and the real-path packed rows, as bench/real-path-gpu.sh (.carry/make_8b_model.py,
#      .carry/real-path/rp-2048 written by bench/real-path.ts);
#   3. STEPS steps with PER_GPU×2048 rows per GPU through NCCL for every W in WORLDS (default 1 2 4 8, up to the
#      GPU count: on a one-GPU machine only W = 1, which still runs the NCCL path), plus two references on GPU 0
#      without any collective: batch PER_GPU (grad_accum 1) and batch PER_GPU with grad_accum = the largest W;
#   4. the table (bench/multi-gpu-table.py): GPUs, tok/s, per-GPU tok/s, efficiency, adapter max diff vs 1 GPU with
#      W-fold accumulation on the same rows.
# Environment: ENGINE, OUT (default /tmp/multi-gpu), BASE (default /tmp/m8b), STEPS (20), PER_GPU (2), WORLDS, WARM (4).
# Bars (issue 14): efficiency ≥ 90% on 2 GPUs and ≥ 85% on 8; the adapters within bf16 tolerance. Never in CI.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/multi-gpu}
BASE=${BASE:-/tmp/m8b}
RP=$ROOT/.carry/real-path
STEPS=${STEPS:-20}
PER_GPU=${PER_GPU:-2}
BUILD=${BUILD:-$ROOT/native/build-cuda-nccl}
mkdir -p "$OUT"
: > "$OUT/runs.jsonl"
log() { echo "[multi-gpu $(date +%H:%M:%S)] $*" >&2; }
export NCCL_NVLS_ENABLE=0   # the engine sets it too; NVLink multicast stays off in every process

nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1 || true
NGPU=$(wc -l < "$OUT/gpu.txt")
if [ -z "${WORLDS:-}" ]; then
  WORLDS=""
  for w in 1 2 4 8; do [ "$w" -le "$NGPU" ] && WORLDS="$WORLDS $w"; done
fi
MAXW=$(for w in $WORLDS; do echo "$w"; done | sort -n | tail -1)
log "$NGPU GPU(s); worlds:$WORLDS"

if [ -z "${ENGINE:-}" ]; then
  # NCCL's and cuDNN's wheels, next to PyTorch's (bench/cuda-build.sh)
  source "$ROOT/bench/cuda-build.sh"
  NCCL_DIR=${NCCL_DIR:-$(wheel_dir libnccl.so.2)}
  [ -n "$NCCL_DIR" ] && [ -f "$NCCL_DIR/include/nccl.h" ] || { log "no NCCL (pip install nvidia-nccl-cu13, or set NCCL_DIR)"; exit 1; }
  find_cudnn
  export LD_LIBRARY_PATH=$NCCL_DIR/lib:$LD_LIBRARY_PATH
  build_engine "$BUILD" "$OUT/build.log" finetune-engine -- -DNXFT_NCCL_DIR="$NCCL_DIR" || exit 1
  grep -q "NCCL ON" "$OUT/build.log" || { log "CMake did not find NCCL"; exit 1; }
  ENGINE=$BUILD/finetune-engine
fi

if [ ! -f "$BASE/config.json" ]; then
  log "random Llama-3-8B bf16 base → $BASE"
  TOKENIZER_XZ=$RP/tokenizer.json.xz TOKENIZER_CONFIG=$RP/tokenizer_config.json python3 "$ROOT/.carry/make_8b_model.py" "$BASE" >&2 || exit 1
fi
cat "$BASE"/*.safetensors > /dev/null   # warm page cache: every rank reads the same files

run() {   # run WORLD GRAD_ACCUM NAME
  log "W=$1 grad_accum=$2 ($3)"
  rm -rf "/tmp/mg-$3"
  timeout "${RUN_TIMEOUT:-900}" python3 "$ROOT/bench/multi_gpu_run.py" "$ENGINE" "$RP/rp-2048" "$BASE" "/tmp/mg-$3" "$1" "$PER_GPU" "$2" "$STEPS" \
    | tee -a "$OUT/runs.jsonl" >&2
}
run 0 1 ref-ga1                     # 1 GPU, no collective
run 0 1 ref-ga1-repeat              # the same again: the run-to-run noise floor of the adapter comparison
for w in $WORLDS; do run "$w" 1 "nccl-w$w"; done
[ "$MAXW" -gt 1 ] && run 0 "$MAXW" "ref-ga$MAXW"   # 1 GPU, MAXW-fold accumulation: the rows of the largest world
python3 "$ROOT/bench/multi-gpu-table.py" "$OUT" | tee "$OUT/table.md"
