#!/usr/bin/env bash
# qlora-gpu.sh — QLoRA on the GPU (issue 15), ours and Unsloth's, same card, in ONE call of at most 9 minutes:
#   1. builds the engine with CUDA (bench/cuda-train.sh's configuration; incremental on a warm machine);
#   2. cuda_parity, NF4 rows: device quantize and double quantization = the CPU reference byte for byte, the
#      dequantizing GEMM with fp32 and with double-quantized absmax;
#   3. ours, 8B-shaped QLoRA 1×2048 with checkpointing, and with checkpoint offload (cuda_train_bench :q4 plans:
#      NF4 + absmax double-quantized on the device, embedding in host memory; random weights);
#   4. load → first step with `train` on a job file (bench/real_path_run.py): a bf16 Llama-3-8B base on local disk
#      quantized on the GPU (quantize_base "nf4", double_quant), and a pre-quantized checkpoint of the same base
#      (`finetune-engine quantize`: bitsandbytes' format, double quantization);
#   5. the longest trainable 8B QLoRA context under CAP_GIB (80) by probing, each probe its own process
#      (bench/longest_context.py; whatever time is left of the 9 minutes: the short probes and 128K fit, the long
#      ones need PHASE=context in a call of their own);
#   6. Unsloth's QLoRA 1×2048 checkpointed on the same base (.carry/unsloth_peer.py, PLAN 1x2048x1x4bit);
#   7. one table (bench/qlora-table.py).
# PHASE=all (default) | ours | load | context | context-bf16 | peer: the phases on their own, for back-to-back calls
# on the same warm machine (record `nvidia-smi -L` in each: gpu.txt). PHASE=context and context-bf16 spend
# BUDGET_S (default 540) on the search.
# PHASE=long-start | long-wait: one probe too long for a call (8B QLoRA at 400K tokens: one step is about 10
# minutes on an H200, session 7) spread over back-to-back calls on the same warm machine: long-start starts
# bench/longest_context.py with PROBES=$LONG_T (default 401408) in its own session (setsid, detached) and waits
# up to WAIT_S (default 540) for it; long-wait waits again. Both copy its lines to $OUT/context-long.jsonl.
# Carried (.carry/, git-ignored): cudnn-frontend/, make_8b_model.py, real-path/ (rp-2048 job + tokenizer),
# unsloth_peer.py, unsloth-site.tar.xz (../shared/bench/make-unsloth-site.sh).
# Environment: OUT (default /tmp/qlora-bench), BASE (default /tmp/m8b), PREQ (default /tmp/m8b-nf4), CAP_GIB,
# BUDGET_S, BUILD, NO_BUILD (1: run the binaries already in BUILD). Never part of CI: CI has no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
OUT=${OUT:-/tmp/qlora-bench}
WORK=${WORK:-/tmp/qlora-bench-work}
mkdir -p "$OUT" "$WORK"
PHASE=${PHASE:-all}
BASE=${BASE:-/tmp/m8b}
PREQ=${PREQ:-/tmp/m8b-nf4}
RP=$ROOT/.carry/real-path
CUDNN_FE=${CUDNN_FE:-$ROOT/.carry/cudnn-frontend}
BUILD=${BUILD:-$ROOT/native/build-cuda-bench}
export CAP_GIB=${CAP_GIB:-80}
log() { echo "[qlora-gpu $(( $(date +%s) - T0 ))s] $*" >&2; }
want() { [ "$PHASE" = all ] || [ "$PHASE" = "$1" ]; }

nvidia-smi -L | tee "$OUT/gpu.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.txt"

# ---- build (as bench/cuda-train.sh: the cuDNN wheel's headers and libs, cudnn-frontend from .carry) ----------
source "$ROOT/bench/cuda-build.sh"
find_cudnn
# NO_BUILD=1 with BUILD pointing at carried binaries (bench/build-carry.sh): use them as they are.
if [ "${NO_BUILD:-0}" = 1 ] && [ -x "$BUILD/cuda_train_bench" ]; then log "using the binaries in $BUILD"
else build_engine "$BUILD" "$WORK/build.log" cuda_parity cuda_train_bench finetune-engine || exit 1; fi
ENGINE=$BUILD/finetune-engine

# ---- 2 + 3: NF4 parity and ours on random 8B weights -------------------------------------------------------
if want ours; then
  log "cuda_parity (NF4 rows)"
  "$BUILD/cuda_parity" > "$WORK/parity.md" 2>&1; echo "parity rc=$?" >> "$WORK/parity.md"
  grep -E "NF4|nf4|PASS|FAIL|parity rc" "$WORK/parity.md" | tee "$OUT/parity-nf4.md"
  log "ours: 8B QLoRA 1×2048 checkpointed, and with offload"
  "$BUILD/cuda_train_bench" bench 1x2048x1:q4 1x2048x1:q4:offload > "$WORK/ours.txt" 2> "$WORK/ours.err"
  grep '^{' "$WORK/ours.txt" | tee "$OUT/ours.jsonl"
  grep -A40 "per-op profile, one step of 1x2048x1:q4" "$WORK/ours.txt" | head -45 > "$OUT/profile-q4.md"
  tail -3 "$WORK/ours.err" >&2
fi

# ---- 4: load → first step from a bf16 base (quantized on the GPU) and from a pre-quantized checkpoint --------
if want load; then
  if [ ! -f "$BASE/config.json" ]; then
    log "random Llama-3-8B bf16 base → $BASE"
    TOKENIZER_XZ=$RP/tokenizer.json.xz TOKENIZER_CONFIG=$RP/tokenizer_config.json python3 "$ROOT/.carry/make_8b_model.py" "$BASE" >&2 || exit 1
  fi
  if [ ! -f "$PREQ/config.json" ]; then
    log "pre-quantized checkpoint (finetune-engine quantize, nf4 + double quantization) → $PREQ"
    echo "{\"command\": \"quantize\", \"base\": \"$BASE\", \"out\": \"$PREQ\", \"quant_type\": \"nf4\", \"double_quant\": true, \"threads\": 0}" > "$WORK/quantize.json"
    "$ENGINE" quantize --job "$WORK/quantize.json" > "$WORK/quantize.log" 2>&1 || { tail -5 "$WORK/quantize.log"; }
    grep '"done"' "$WORK/quantize.log" | tail -1 >&2
    cp "$BASE"/tokenizer*.json "$PREQ"/ 2>/dev/null
  fi
  cat "$BASE"/*.safetensors "$PREQ"/*.safetensors > /dev/null   # warm page cache: local disk, read once
  # QLoRA jobs from the real-path rp-2048 job (its packed Alpaca rows): batch 1, checkpointing, 6 steps.
  python3 - "$RP/rp-2048" "$WORK/jobs" <<'EOF'
import json, os, sys
src, dst = sys.argv[1:3]
job = json.load(open(os.path.join(src, "train.json")))
for name, quant in (("qlora-gpu-quantized", "nf4"), ("qlora-prequantized", None)):
    d = os.path.join(dst, name); os.makedirs(d, exist_ok=True)
    for f in os.listdir(src):
        if f != "train.json" and not os.path.exists(os.path.join(d, f)): os.symlink(os.path.join(src, f), os.path.join(d, f))
    j = json.loads(json.dumps(job)); j["quantize_base"] = quant
    if quant: j["double_quant"] = True
    j["train"].update(batch_size=1, steps=6, gradient_checkpointing=True)
    json.dump(j, open(os.path.join(d, "train.json"), "w"), indent=2)
EOF
  : > "$OUT/load.jsonl"
  for j in qlora-gpu-quantized qlora-prequantized; do
    b=$BASE; [ "$j" = qlora-prequantized ] && b=$PREQ
    log "ours: train $j (base $b)"
    rm -rf "/tmp/qlora-out-$j"
    WARM=2 python3 "$ROOT/bench/real_path_run.py" "$ENGINE" "$WORK/jobs/$j" "$b" "/tmp/qlora-out-$j" >> "$OUT/load.jsonl" 2> "$WORK/load-$j.err"
    tail -2 "$WORK/load-$j.err" >&2; tail -1 "$OUT/load.jsonl" >&2
  done
fi

# ---- 6 (before 5 in a single call: the search takes whatever time is left) -------------------------------
if want peer; then
  if [ -f "$ROOT/.carry/unsloth_peer.py" ] && [ -f "$ROOT/.carry/unsloth-site.tar.xz" ] && [ -f "$BASE/config.json" ]; then
    if [ ! -d /opt/uns/unsloth ]; then mkdir -p /opt/uns && tar -xJf "$ROOT/.carry/unsloth-site.tar.xz" -C /opt/uns; fi
    log "Unsloth QLoRA 1×2048 checkpointed"
    (MODEL=$BASE PLAN=1x2048x1x4bit PYTHONPATH=/opt/uns PYTHONUNBUFFERED=1 timeout ${PEER_TIMEOUT:-240} \
      python3 "$ROOT/.carry/unsloth_peer.py" > "$WORK/peer.log" 2>&1)
    grep '^{' "$WORK/peer.log" | tee "$OUT/peer.jsonl" >&2 || tail -20 "$WORK/peer.log" >&2
  else
    log "peer skipped: needs .carry/unsloth_peer.py, .carry/unsloth-site.tar.xz and the base (PHASE=load makes it)"
  fi
fi

# ---- 5: the longest context under the cap -----------------------------------------------------------------
# ---- a probe longer than one call (PHASE=long-start, then long-wait in the next call) -------------------------
if [ "$PHASE" = long-start ] || [ "$PHASE" = long-wait ]; then
  pidf=$WORK/context-long.pid
  if [ "$PHASE" = long-start ]; then
    log "long probe: T=${LONG_T:-401408}, q4, cap ${CAP_GIB} GiB, detached"
    PROBES=${LONG_T:-401408} BUDGET_S=${LONG_BUDGET_S:-1500} setsid nohup python3 "$ROOT/bench/longest_context.py" \
      "$BUILD/cuda_train_bench" q4 > "$WORK/context-long.jsonl" 2> "$WORK/context-long.err" < /dev/null &
    echo $! > "$pidf"
  fi
  pid=$(cat "$pidf" 2>/dev/null || echo 0)
  waited=0
  while [ "$pid" -gt 0 ] && kill -0 "$pid" 2>/dev/null && [ $waited -lt "${WAIT_S:-540}" ]; do sleep 5; waited=$((waited + 5)); done
  if [ "$pid" -gt 0 ] && kill -0 "$pid" 2>/dev/null; then log "long probe still running after ${waited}s: run PHASE=long-wait next"
  else log "long probe finished"; fi
  cp "$WORK/context-long.jsonl" "$OUT/context-long.jsonl" 2>/dev/null; cat "$OUT/context-long.jsonl" >&2
fi

for mode in q4 bf16; do
  phase=context; [ $mode = bf16 ] && phase=context-bf16
  if [ "$PHASE" = "$phase" ] || { [ "$PHASE" = all ] && [ $mode = q4 ]; }; then
    budget=${BUDGET_S:-540}
    [ "$PHASE" = all ] && budget=$(( 530 - ($(date +%s) - T0) ))
    if [ "$budget" -lt 45 ]; then log "context ($mode): no time left in this call; run PHASE=$phase"; continue; fi
    log "longest context, $mode, cap ${CAP_GIB} GiB, budget ${budget}s"
    BUDGET_S=$budget python3 "$ROOT/bench/longest_context.py" "$BUILD/cuda_train_bench" $mode | tee "$OUT/context-$mode.jsonl" >&2
  fi
done

log "done"
python3 "$ROOT/bench/qlora-table.py" "$OUT" | tee "$OUT/table.md"
