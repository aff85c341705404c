#!/usr/bin/env bash
# Session 10, call 1: the real path's 1x8192 with offloaded checkpoints and unpacked Alpaca at 1024 (ours and
# Unsloth), the real path's own op profile at 2x2048, and the decode profile. Carry native/build-carry and .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
E=$ROOT/native/build-carry/finetune-engine
R=/tmp/s10c1; mkdir -p $R
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $R/card.txt
ENGINE=$E OUT=$R/rp STEPS=30 PHASE=all JOBS="rp-8192-offload rp-1024-unpacked" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
NXFT_TRIM_ROWS=0 ENGINE=$E OUT=$R/rp-notrim STEPS=30 PHASE=ours JOBS="rp-1024-unpacked" bash bench/real-path-gpu.sh > $R/rp-notrim.log 2>&1
NXFT_CUDA_PROFILE=1 ENGINE=$E OUT=$R/rp-prof STEPS=12 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-prof.log 2>&1
NXFT_CUDA_PROFILE=1 timeout 120 python3 bench/generate_run.py $E /tmp/m8b 512 128 > $R/decode.jsonl 2> $R/decode.err
tail -c 3000 $R/decode.err
cat $R/rp/table.md $R/rp-notrim/table.md
tail -c 5000 $R/rp-prof/ours-rp-2048.err
tar -czf $OUT/call-1.tgz -C /tmp s10c1
