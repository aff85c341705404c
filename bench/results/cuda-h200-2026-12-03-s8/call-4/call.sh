#!/usr/bin/env bash
# (Ran from the repo root as bench/s8-final.sh; kept here with its results. The engine had NXFT_CUDNN_PACKED_COPY
# defaulting to none and NXFT_GEMM_AUTOTUNE to every shape: both went back after this call, see ../..-s8.md.)
# Session 8, the last call (kept with its results as call.sh): issue 15's QLoRA table (ours and Unsloth, same card),
# then issue 11's real path (ours with and without the kept MLP input, Unsloth) and the A/B of this session's
# switches. Carried engine binaries (bench/build-carry.sh), built here instead when they do not run.
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
export NO_BUILD=1 BUILD=$B
for phase in ours load peer; do
  log "QLoRA: PHASE=$phase"
  PEER_TIMEOUT=150 OUT=$R/q PHASE=$phase WORK=/tmp/qw bash bench/qlora-gpu.sh > $R/q-$phase.log 2>&1
done
cp $R/q/table.md $R/qlora-table.md 2>/dev/null; cat $R/qlora-table.md >> $R/log.txt
log "bench, 8 layers: A/B of this session's switches on packed rows with 44% prompt"
timeout 90 "$B/cuda_train_bench" bench --layers 8 --no-profile 2x2048x0:packed:prompt 2x2048x0:packed:prompt:cpall \
  2x2048x0:packed:prompt:keeph 2x2048x0:packed:prompt:atskinny 2x2048x0:packed:prompt > $R/ab8.txt 2> $R/ab8.err
grep '^{' $R/ab8.txt | tee -a $R/log.txt; grep "packed-document" $R/ab8.err | sort | uniq -c | tee -a $R/log.txt
log "real path rp-2048, ours (STEPS=60)"
STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
log "real path rp-2048 with NXFT_KEEP_MLP_INPUT=1"
NXFT_KEEP_MLP_INPUT=1 STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp-keeph PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-keeph.log 2>&1
grep -h "packed-document\|autotuned" $R/rp/ours-rp-2048.err | sort | uniq -c | tee -a $R/log.txt
log "Unsloth rp-2048 (STEPS=60)"
STEPS=60 PEER_TIMEOUT=150 OUT=$R/rp PHASE=peer JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/peer.log 2>&1
python3 bench/real-path-table.py $R/rp > $R/real-path-table.md 2>&1
cat $R/rp/ours.jsonl $R/rp-keeph/ours.jsonl $R/rp/peer.jsonl 2>/dev/null | tee -a $R/log.txt
if [ "$(left)" -gt 40 ]; then log "compare (tiny CPU vs CUDA, schedules incl. kept h)"; timeout $(( $(left) - 20 < 60 ? $(left) - 20 : 60 )) "$B/cuda_train_bench" compare 50 > $R/compare.md 2>&1; echo "compare rc=$?" >> $R/compare.md; grep -E "FAIL|→|kept h" $R/compare.md | tee -a $R/log.txt; fi
nvidia-smi -L >> $R/card.txt
log "done"
cp $R/log.txt $R/card.txt $R/qlora-table.md $R/real-path-table.md $R/ab8.txt "${OUT:-/tmp}/" 2>/dev/null
tar czf "${OUT:-/tmp}/res.tgz" -C $R --exclude='*.safetensors' .
