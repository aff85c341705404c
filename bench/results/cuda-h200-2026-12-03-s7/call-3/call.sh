#!/usr/bin/env bash
# (Ran from the repo root as bench/s7-call3.sh; kept here with its results.)
# Session 7, call 3 (kept with the results): carried engine binaries (built on the dev machine, CUDA 13.0 wheels,
# sm_90a, cuDNN 9 headers), built here instead when they do not run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
R=/tmp/res3; mkdir -p $R
log() { echo "[s7 $(( $(date +%s) - T0 ))s] $*" | tee -a $R/log.txt >&2; }
left() { echo $(( ${LIMIT:-560} - ($(date +%s) - T0) )); }
nvidia-smi -L > $R/card.txt
source bench/cuda-build.sh
find_cudnn
B=$ROOT/native/build-carry
if ! "$B/cuda_parity" > $R/parity.md 2>&1; then
  if grep -qE "GLIBC|not found|error while loading" $R/parity.md; then
    log "carried binaries do not run here: building"; head -3 $R/parity.md >&2
    B=$ROOT/native/build-cuda-bench
    build_engine "$B" /tmp/build.log cuda_parity cuda_train_bench finetune-engine || exit 1
    "$B/cuda_parity" > $R/parity.md 2>&1
  fi
fi
echo "parity rc=$?" >> $R/parity.md; grep -cE "FAIL" $R/parity.md | sed 's/^/parity FAIL lines: /' | tee -a $R/log.txt
grep -iE "gather|FAIL|failures" $R/parity.md | head -20 >&2
log "real path, ours (STEPS=60)"
STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-2048 rp-8192" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
grep -c "autotuned" $R/rp/ours-rp-2048.err | sed 's/^/rp-2048 graph tunings: /' | tee -a $R/log.txt
log "real path rp-2048, NXFT_RAGGED_MAX_LEN=pow2 (the older graph sizes)"
NXFT_RAGGED_MAX_LEN=pow2 STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp-pow2 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-pow2.log 2>&1
grep -c "autotuned" $R/rp-pow2/ours-rp-2048.err | sed 's/^/rp-2048 pow2 graph tunings: /' | tee -a $R/log.txt
log "Unsloth rp-2048 (STEPS=60)"
STEPS=60 PEER_TIMEOUT=150 OUT=$R/rp PHASE=peer JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/peer.log 2>&1
log "bench: head A/B"
timeout 150 "$B/cuda_train_bench" bench 2x2048x0:packed 2x2048x0:packed:prompt 2x2048x0:packed:prompt:allrows > $R/bench.txt 2> $R/bench.err
grep '^{' $R/bench.txt | tee -a $R/log.txt
log "128K QLoRA probe"
PROBES=131072 BUDGET_S=$(( $(left) - 60 )) python3 bench/longest_context.py "$B/cuda_train_bench" q4 > $R/context-128k.jsonl 2> $R/context.err
cat $R/context-128k.jsonl | tee -a $R/log.txt
if [ "$(left)" -gt 70 ]; then log "compare (tiny CPU vs CUDA incl. token rows)"; timeout $(( $(left) - 15 )) "$B/cuda_train_bench" compare 50 > $R/compare.md 2>&1; echo "compare rc=$?" >> $R/compare.md; fi
if [ "$(left)" -gt 100 ]; then log "Unsloth rp-8192"; STEPS=8 PEER_TIMEOUT=$(( $(left) - 10 )) OUT=$R/rp PHASE=peer JOBS="rp-8192" bash bench/real-path-gpu.sh > $R/peer8k.log 2>&1; fi
python3 bench/real-path-table.py $R/rp > $R/rp/table.md 2>&1
nvidia-smi -L >> $R/card.txt
log "done"
