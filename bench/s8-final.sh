#!/usr/bin/env bash
# Session 8, the one-call table of issue 11 (kept with its results as call.sh): carried engine binaries
# (bench/build-carry.sh), built here instead when they do not run.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
R=/tmp/res; mkdir -p $R   # everything here; $OUT gets the small files and one archive
log() { echo "[s8 $(( $(date +%s) - T0 ))s] $*" | tee -a $R/log.txt >&2; }
left() { echo $(( ${LIMIT:-575} - ($(date +%s) - T0) )); }
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
echo "parity rc=$?" >> $R/parity.md
grep -E "^PASS|^FAIL|failure|packed-document attention backward" $R/parity.md | sort | uniq -c | tee -a $R/log.txt
log "bench, 32 layers: single-document and packed rows"
timeout 200 "$B/cuda_train_bench" bench 2x2048x0 2x2048x0:packed 1x8192x1 1x8192x1:packed > $R/bench.txt 2> $R/bench.err
grep '^{' $R/bench.txt | tee -a $R/log.txt
log "bench, 8 layers: A/B of this session's switches on packed rows with 44% prompt"
timeout 90 "$B/cuda_train_bench" bench --layers 8 --no-profile 2x2048x0:packed:prompt 2x2048x0:packed:prompt:cpall \
  2x2048x0:packed:prompt:keeph 2x2048x0:packed:prompt:atskinny 2x2048x0:packed:prompt > $R/ab8.txt 2> $R/ab8.err
grep '^{' $R/ab8.txt | tee -a $R/log.txt; grep "packed-document" $R/ab8.err | sort | uniq -c | tee -a $R/log.txt
log "real path, ours (STEPS=60)"
STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-2048 rp-8192" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
log "real path rp-2048 with NXFT_KEEP_MLP_INPUT=1"
NXFT_KEEP_MLP_INPUT=1 STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp-keeph PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-keeph.log 2>&1
grep -h "packed-document\|autotuned" $R/rp/ours-rp-2048.err | sort | uniq -c | tee -a $R/log.txt
log "Unsloth rp-2048 (STEPS=60)"
STEPS=60 PEER_TIMEOUT=150 OUT=$R/rp PHASE=peer JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/peer.log 2>&1
log "HF + PEFT eager, 2x2048 (random single-document rows)"
(cd /tmp && OUT=/tmp PLAN=2x2048x0 PYTHONUNBUFFERED=1 timeout 100 python3 $ROOT/.carry/hf_peft_baseline.py > $R/hf-eager.txt 2>&1)
grep -E '^\{|^torch|^matmul' $R/hf-eager.txt | tee -a $R/log.txt
if [ "$(left)" -gt 40 ]; then log "compare (tiny CPU vs CUDA, schedules incl. kept h)"; timeout $(( $(left) - 20 < 60 ? $(left) - 20 : 60 )) "$B/cuda_train_bench" compare 50 > $R/compare.md 2>&1; echo "compare rc=$?" >> $R/compare.md; grep -E "FAIL|→|kept h" $R/compare.md | tee -a $R/log.txt; fi
if [ "$(left)" -gt 100 ]; then log "Unsloth rp-8192"; STEPS=8 PEER_TIMEOUT=$(( $(left) - 10 )) OUT=$R/rp PHASE=peer JOBS="rp-8192" bash bench/real-path-gpu.sh > $R/peer8k.log 2>&1; fi
python3 bench/real-path-table.py $R/rp > $R/rp/table.md 2>&1
cp $R/rp-keeph/ours.jsonl $R/real-path-ours-keeph.jsonl 2>/dev/null
nvidia-smi -L >> $R/card.txt
log "done"
cp $R/log.txt $R/card.txt $R/bench.txt $R/ab8.txt $R/rp/table.md "${OUT:-/tmp}/" 2>/dev/null
tar czf "${OUT:-/tmp}/res.tgz" -C $R .
