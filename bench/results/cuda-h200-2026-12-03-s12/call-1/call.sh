#!/usr/bin/env bash
# Session 12, call 1: padding-free unpacked rows and the attention ski rental, checked and timed on the real path.
#   run(command="bash bench/results/cuda-h200-2026-12-03-s12/call-1/call.sh", carry=["native/build-carry", ".carry"])
set -uo pipefail
ROOT=$PWD
T0=$(date +%s)
R=/tmp/s12c1; rm -rf $R; mkdir -p $R
log() { echo "[c1 $(( $(date +%s) - T0 ))s] $*" | tee -a $R/log.txt >&2; }
left() { echo $(( 570 - ($(date +%s) - T0) )); }
nvidia-smi -L > $R/card.txt
source bench/cuda-build.sh
find_cudnn
B=$ROOT/native/build-carry
timeout 90 "$B/cuda_parity" > $R/parity.md 2>&1
NXFT_ATTN_TILES=0 timeout 60 "$B/cuda_parity" > $R/parity-cudnn-packed.md 2>&1
for f in parity parity-cudnn-packed; do echo "$f: $(grep -E '^PASS|^FAIL' $R/$f.md)" | tee -a $R/log.txt; grep -E '^\| attention path' $R/$f.md | grep -v ' ok ' | head -5 >> $R/log.txt; done
grep -E 'FAIL|nan' $R/parity.md | head -20 >> $R/log.txt
log "real path, ours: unpacked padding-free, rp-2048"
STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-1024-unpacked rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
log "real path, ours: unpacked, NXFT_PADDING_FREE=0"
NXFT_PADDING_FREE=0 TAG=NXFT_PADDING_FREE=0 STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-1024-unpacked" bash bench/real-path-gpu.sh >> $R/rp.log 2>&1
log "real path, Unsloth: unpacked flat and padded"
STEPS=60 PEER_TIMEOUT=120 OUT=$R/rp PHASE=peer JOBS="rp-1024-unpacked" bash bench/real-path-gpu.sh > $R/peer.log 2>&1
python3 bench/real-path-table.py $R/rp > $R/real-path-table.md 2>&1; cat $R/real-path-table.md >> $R/log.txt
if [ "$(left)" -gt 150 ]; then
  log "cuda_train_bench packed plans (20 warm steps)"
  timeout $(( $(left) - 100 )) "$B/cuda_train_bench" bench 2x2048x0 2x2048x0:packed 1x8192x1:packed > $R/bench.txt 2> $R/bench.err
  grep '^{' $R/bench.txt | tee -a $R/log.txt
fi
if [ "$(left)" -gt 70 ]; then
  log "generate (decode), ours"
  OUT=$R/gen PROMPTS="512 4096 16384" AB_PROMPTS="" PEERS="" ENGINE=$B/finetune-engine timeout $(( $(left) - 10 )) bash bench/generate-gpu.sh > $R/gen.log 2>&1
  tail -12 $R/gen.log >> $R/log.txt
fi
log "done"
cp $R/log.txt "${OUT:-/tmp}/"
tar czf "${OUT:-/tmp}/res.tgz" -C $R .
