#!/usr/bin/env bash
# cuda-train.sh — the CUDA backend's benchmark, in ONE call on a GPU machine (see bench/README or the report):
#   1. builds the engine with CUDA (+ cuDNN SDPA when the cuDNN wheel and cudnn-frontend headers are present),
#   2. runs the op-by-op parity check against the CPU backend (native/tests/cuda/cuda_parity.cpp),
#   3. trains a tiny Llama for 50 steps on CPU and CUDA from the same weights and compares the losses,
#   4. times our LoRA training step on an 8B-shaped random model (Llama-3-8B dims, r16 α16, 7 targets, AdamW),
#   5. runs the peer — Hugging Face transformers + PEFT, eager and torch.compile — on the same shapes
#      (../shared/bench/hf_peft_baseline.py, copied into .carry/ because only the repo travels),
#   6. prints one table: tokens/s, peak memory and our/peer ratios.
# Plans are BxT[xCKPT] with optional suffixes for A/B runs in one call: :nofold (LoRA up-projection as its own GEMM),
# :atall (autotune every GEMM shape), :noat (cuDNN's first attention plan), :ru (the LoRA rank-update kernel),
# :noside (LoRA weight gradients on the main stream), :offload (checkpointed layer inputs in host memory; CKPT 1),
# :q4 (QLoRA: NF4 base with double-quantized absmax; bench/qlora-gpu.sh runs the QLoRA comparison),
# :prompt (the first 44% of each row without targets, as SFT on responses), :allrows (the LM head over all rows),
# :mha (packed rows' cuDNN backward on k, v repeated to every query head; NXFT_CUDNN_PACKED_MHA=1),
# :keep (without checkpointing every layer keeps its group inputs xn1, xn2, h), :keeph (it keeps only its MLP input h;
# TransformerOptions::keep_mlp_input, NXFT_KEEP_MLP_INPUT=1 for `train`).
# PHASE=ours and PHASE=peer in two back-to-back calls on the same warm machine fit where one call's time limit
# does not (record `nvidia-smi -L` in both to show it is the same card).
# Environment: PHASE=all|ours|peer (default all), PLANS (ours), PEER_PLAN / PEER_COMPILE_PLAN (peer),
# CHECKS=0 (skip the parity and 50-step checks, e.g. in a second call on a machine that has just passed them),
# OUT (logs; default /tmp/cuda-bench), CUDNN_FE (cudnn-frontend root; default .carry/cudnn-frontend).
# Never part of CI: CI has no GPU.
# Preparing the carried folder (git-ignored .carry/, passed with the device tool's `carry`):
#   cp ../shared/bench/hf_peft_baseline.py .carry/
#   pip download --no-deps nvidia-cudnn-frontend && unzip -o nvidia_cudnn_frontend-*.whl 'include/*' -d .carry/cudnn-frontend
# Results of a run: bench/results/cuda-h100-<date>.md (latest: cuda-h100-2026-11-28-s4.md).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/cuda-bench}
mkdir -p "$OUT"
WORK=${WORK:-/tmp/cuda-bench-work}   # build log, peer json and other files that need not come back
mkdir -p "$WORK"
PHASE=${PHASE:-all}
PLANS=${PLANS:-"1x2048x1 2x2048x0 2x2048x1 4x2048x0 4x2048x1 1x8192x0 1x8192x1 2x2048x0:ru"}
PEER_PLAN=${PEER_PLAN-"1x2048x1,2x2048x0,4x2048x1,1x8192x1"}   # set to "" to skip
PEER_COMPILE_PLAN=${PEER_COMPILE_PLAN-"1x2048x1,2x2048x0"}
CUDNN_FE=${CUDNN_FE:-$ROOT/.carry/cudnn-frontend}
BUILD=${BUILD:-$ROOT/native/build-cuda-bench}
log() { echo "[cuda-train $(date +%H:%M:%S)] $*" >&2; }
source "$ROOT/bench/cuda-build.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
GPU=$(head -1 "$OUT/gpu.txt" | cut -d, -f1)

if [ "$PHASE" = all ] || [ "$PHASE" = ours ]; then
  # cuDNN from the pip wheel PyTorch uses (bench/cuda-build.sh; without it, CMake finds a system cuDNN if any)
  find_cudnn
  build_engine "$BUILD" "$WORK/build.log" cuda_parity cuda_train_bench finetune-engine || exit 1

  PARITY_RC=0 COMPARE_RC=0
  if [ "${CHECKS:-1}" != 0 ]; then
  log "op parity vs CPU backend"
  "$BUILD/cuda_parity" > "$OUT/parity.md" 2>&1; PARITY_RC=$?
  cat "$OUT/parity.md"
  # the same checks with the LoRA rank-update kernel switched on (it is off by default)
  NXFT_RANK_UPDATE=1 "$BUILD/cuda_parity" > "$WORK/parity_ru.md" 2>&1; PARITY_RU_RC=$?
  { echo; echo "With NXFT_RANK_UPDATE=1 (LoRA expand kernel):"; grep -E "rank update|PASS|FAIL" "$WORK/parity_ru.md"; } | tee -a "$OUT/parity.md"
  PARITY_RC=$((PARITY_RC + PARITY_RU_RC))
  log "tiny-model CPU vs CUDA, 50 steps"
  "$BUILD/cuda_train_bench" compare 50 > "$OUT/compare.md" 2>&1; COMPARE_RC=$?
  cat "$OUT/compare.md"
  fi
  log "8B-shaped LoRA training: $PLANS"
  "$BUILD/cuda_train_bench" bench ${BENCH_ARGS:-} $PLANS > "$OUT/ours.txt" 2> "$WORK/ours.err"; BENCH_RC=$?
  cat "$WORK/ours.err" >&2
  grep -v '^{' "$OUT/ours.txt"
  log "parity rc=$PARITY_RC compare rc=$COMPARE_RC bench rc=$BENCH_RC"
fi

if [ "$PHASE" = all ] || [ "$PHASE" = peer ]; then
  PEER=$ROOT/.carry/hf_peft_baseline.py
  if [ -f "$PEER" ] && [ -n "$PEER_PLAN" ]; then
    log "peer eager: $PEER_PLAN"
    (cd "$WORK" && OUT="$WORK" PLAN="$PEER_PLAN" PYTHONUNBUFFERED=1 timeout ${PEER_EAGER_TIMEOUT:-400} python3 "$PEER" > "$OUT/peer_eager.txt" 2>&1)
    grep -E '^\{|^torch|^matmul' "$OUT/peer_eager.txt"
  fi
  if [ -f "$PEER" ] && [ -n "$PEER_COMPILE_PLAN" ]; then
      log "peer torch.compile: $PEER_COMPILE_PLAN"
      (cd "$WORK" && OUT="$WORK" PLAN="$PEER_COMPILE_PLAN" COMPILE=1 PYTHONUNBUFFERED=1 timeout ${PEER_COMPILE_TIMEOUT:-600} python3 "$PEER" > "$OUT/peer_compile.txt" 2>&1)
      grep -E '^\{' "$OUT/peer_compile.txt"
  fi
  if [ ! -f "$PEER" ]; then
    log "peer script missing: cp ../shared/bench/hf_peft_baseline.py .carry/ and carry .carry"
  fi
fi

python3 "$ROOT/bench/cuda-train-table.py" "$OUT" "$GPU" | tee "$OUT/table.md"
