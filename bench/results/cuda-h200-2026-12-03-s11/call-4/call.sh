#!/usr/bin/env bash
# Session 11, call 4: skinny GEMMs tuned on the step's own calls (candidates in turn, events read when done), the
# head's new row counts reuse the algorithm of their power of two. Parity (every call of a shape's first ones runs
# another candidate), the real path 2x2048 by default and with NXFT_GEMM_AUTOTUNE=all, the steady-state op profile.
# Carry native/build-carry and .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
B=$ROOT/native/build-carry; E=$B/finetune-engine
R=/tmp/s11c4; mkdir -p $R
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $R/card.txt
timeout 120 $B/cuda_parity > $R/parity.md 2>&1; grep -E '^PASS|^FAIL' $R/parity.md; grep FAIL $R/parity.md | head; tail -3 $R/parity.md
ENGINE=$E OUT=$R/rp STEPS=40 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
WARM=10 NXFT_GEMM_AUTOTUNE=all ENGINE=$E OUT=$R/rp-all STEPS=50 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-all.log 2>&1
for n in 4 20; do
  NXFT_CUDA_PROFILE=1 ENGINE=$E OUT=$R/prof-$n STEPS=$n PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/prof-$n.log 2>&1
done
for f in rp rp-all; do cat $R/$f/table.md | tail -3 | head -1; tail -1 $R/$f/ours.jsonl | cut -c1-600; done
tar -czf $OUT/call-4.tgz -C /tmp s11c4
