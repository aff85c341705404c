#!/usr/bin/env bash
# Session 10, call 4: the tile kernels chosen per batch by their work (NXFT_ATTN_TILES=auto, the default): parity by
# default and with every packed batch on the tiles, cuda_train_bench's packed plans (documents of 5–1,024 tokens:
# cuDNN expected), the real path 2×2048 (Alpaca: the tiles expected) ours and Unsloth. Carry native/build-carry, .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
B=$ROOT/native/build-carry; R=/tmp/s10c4; mkdir -p $R
nvidia-smi -L > $R/card.txt
timeout 90 $B/cuda_parity > $R/parity.md 2>&1
NXFT_ATTN_TILES=1 timeout 90 $B/cuda_parity > $R/parity-tiles.md 2>&1
for f in parity parity-tiles; do echo "$f: $(grep -E '^PASS|^FAIL' $R/$f.md)"; grep -E 'FAIL' $R/$f.md | head; grep -c '| tiles' $R/$f.md; done
if grep -q '^PASS' $R/parity.md && grep -q '^PASS' $R/parity-tiles.md; then
  timeout 150 $B/cuda_train_bench bench 2x2048x0:packed 1x8192x1:packed > $R/bench.txt 2> $R/bench.err
  grep '^{' $R/bench.txt; grep -E 'attention_(for|back)ward' $R/bench.txt
  STEPS=60 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=all PEER_TIMEOUT=150 JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
  cat $R/rp/table.md; tail -1 $R/rp/ours.jsonl
fi
cat $R/card.txt
tar -czf $OUT/call-4.tgz -C /tmp s10c4
