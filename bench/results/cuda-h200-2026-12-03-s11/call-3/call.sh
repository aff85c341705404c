#!/usr/bin/env bash
# Session 11, call 3: split-K candidates timed on cold operands (L2 flushed) and only with ≥256 of K per split;
# the tile backward's per-query lse/delta/doc_start staged in shared memory. Parity (default and all tiles), the
# real path 2x2048 (40 steps), its steady-state op profile (20 − 4 steps), ncu's view of the tile backward. Carry native/build-carry and .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
B=$ROOT/native/build-carry; E=$B/finetune-engine
R=/tmp/s11c3; mkdir -p $R
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $R/card.txt
timeout 120 $B/cuda_parity > $R/parity.md 2>&1; grep -E '^PASS|^FAIL' $R/parity.md; grep FAIL $R/parity.md | head
NXFT_ATTN_TILES=1 timeout 120 $B/cuda_parity > $R/parity-tiles.md 2>&1; grep -E '^PASS|^FAIL' $R/parity-tiles.md; grep FAIL $R/parity-tiles.md | head
ENGINE=$E OUT=$R/rp STEPS=40 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
for n in 4 20; do
  NXFT_CUDA_PROFILE=1 ENGINE=$E OUT=$R/prof-$n STEPS=$n PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/prof-$n.log 2>&1
done
J=$ROOT/.carry/real-path/rp-2048
STEPS=3 timeout 200 /usr/local/cuda/bin/ncu --kernel-name regex:tiles_backward --launch-skip 40 --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats \
  python3 bench/real_path_run.py $E $J /tmp/m8b /tmp/rp-ncu > $R/ncu.txt 2>&1
cat $R/rp/table.md; tail -1 $R/rp/ours.jsonl | cut -c1-500
grep -E 'Duration|SM Frequency|Warp Cycles Per Issued' $R/ncu.txt
tar -czf $OUT/call-3.tgz -C /tmp s11c3
