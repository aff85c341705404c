#!/usr/bin/env bash
# issue11-table.sh — issue 11's one-call table on the GPU machine, in one device call of at most ~9.5 minutes:
#   1. cuda_parity with packed documents on the tile kernels (attention_tiles.cu, the default; a failure stops the
#      call here) and on cuDNN's ragged attention (NXFT_ATTN_TILES=0);
#   2. cuda_train_bench (random 8B-shaped weights): single-document and packed rows at 2×2048 and 1×8192
#      checkpointed (the bar: packed ≥ 0.95× single-document; the packed plans warm up until their attention path
#      has settled, TilesRent);
#   3. the real path (bench/real-path-gpu.sh: the shards stage's packed Alpaca rows, the adapter stage's own train
#      job, an 8B bf16 base on local disk): ours at 2×2048, 1×8192 checkpointed and unpacked 8×1024 (padding-free),
#      then Unsloth on the same rows (unpacked: padded to the batch's longest; its padding-free layout ran 2× slower
#      here, bench/results/cuda-h200-2026-12-03-s12);
#   4. HF + PEFT eager at 2×2048 (.carry/hf_peft_baseline.py), and the 50-step CPU↔CUDA compare, as time allows.
#   run(command="bash bench/issue11-table.sh", carry=["native/build-carry", ".carry"])
# native/build-carry from bench/build-carry.sh (built here instead when the carried binaries do not run); .carry as
# bench/real-path-gpu.sh and bench/cuda-train.sh describe. Results: $OUT/log.txt, the tables, and res.tgz with all.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
T0=$(date +%s)
R=/tmp/issue11; mkdir -p $R
log() { echo "[issue11 $(( $(date +%s) - T0 ))s] $*" | tee -a $R/log.txt >&2; }
left() { echo $(( ${LIMIT:-560} - ($(date +%s) - T0) )); }
nvidia-smi -L > $R/card.txt
source bench/cuda-build.sh
find_cudnn
B=$ROOT/native/build-carry
if ! "$B/cuda_parity" > $R/parity.md 2>&1; then
  if grep -qE "GLIBC|not found|error while loading" $R/parity.md; then
    log "carried binaries do not run here: building"
    B=$ROOT/native/build-cuda-bench
    build_engine "$B" /tmp/build.log cuda_parity cuda_train_bench finetune-engine || exit 1
    "$B/cuda_parity" > $R/parity.md 2>&1
  fi
fi
NXFT_ATTN_TILES=0 timeout 60 "$B/cuda_parity" > $R/parity-cudnn-packed.md 2>&1
for f in parity parity-cudnn-packed; do
  echo "$f: $(grep -E '^PASS|^FAIL' $R/$f.md)" | tee -a $R/log.txt
  grep "packed-document attention backward" $R/$f.md | sort | uniq -c | tee -a $R/log.txt
done
if ! grep -q '^PASS' $R/parity.md; then   # no timings of a path that disagrees with the CPU backend
  grep -E 'FAIL|nan' $R/parity.md | head -40 | tee -a $R/log.txt
  cp $R/log.txt $R/parity.md "${OUT:-/tmp}/"
  exit 1
fi
log "cuda_train_bench, 32 layers"
timeout 240 "$B/cuda_train_bench" bench 2x2048x0 2x2048x0:packed 1x8192x1 1x8192x1:packed > $R/bench.txt 2> $R/bench.err
grep "tile work fraction" $R/bench.err | tee -a $R/log.txt
grep '^{' $R/bench.txt | tee -a $R/log.txt
log "real path, ours"
STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-2048 rp-8192 rp-1024-unpacked" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
log "real path, Unsloth rp-2048 and rp-1024-unpacked (padded to the batch's longest: its faster layout here)"
STEPS=60 PEER_TIMEOUT=150 OUT=$R/rp PHASE=peer JOBS="rp-2048 rp-1024-unpacked" PEER_LAYOUTS=padded bash bench/real-path-gpu.sh > $R/peer.log 2>&1
if [ "$(left)" -gt 70 ]; then
  log "HF + PEFT eager, 2×2048"
  (cd /tmp && OUT=/tmp PLAN=2x2048x0 PYTHONUNBUFFERED=1 timeout 100 python3 "$ROOT/.carry/hf_peft_baseline.py" > $R/hf-eager.txt 2>&1)
  grep -E '^\{' $R/hf-eager.txt | tee -a $R/log.txt
fi
if [ "$(left)" -gt 100 ]; then
  log "real path, Unsloth rp-8192"
  STEPS=8 PEER_TIMEOUT=$(( $(left) - 10 )) OUT=$R/rp PHASE=peer JOBS="rp-8192" bash bench/real-path-gpu.sh > $R/peer8k.log 2>&1
fi
if [ "$(left)" -gt 40 ]; then
  log "compare, 50 steps"
  timeout $(( $(left) - 15 )) "$B/cuda_train_bench" compare 50 > $R/compare.md 2>&1
  grep -E "FAIL|→" $R/compare.md | tee -a $R/log.txt
fi
python3 bench/real-path-table.py $R/rp > $R/real-path-table.md 2>&1; cat $R/real-path-table.md >> $R/log.txt
nvidia-smi -L >> $R/card.txt
log "done"
cp $R/log.txt $R/card.txt $R/bench.txt $R/real-path-table.md "${OUT:-/tmp}/" 2>/dev/null
tar czf "${OUT:-/tmp}/res.tgz" -C $R .
