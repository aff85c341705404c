#!/usr/bin/env bash
# Session 11, call 2: skinny GEMMs autotuned over split-K variants too, and the head's row blocks no longer
# autotuned: parity, the real path 2x2048 (40 steps), its steady-state op profile (20 − 4 steps), and ncu's view
# of the tile backward kernel. Carry native/build-carry and .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
B=$ROOT/native/build-carry; E=$B/finetune-engine
R=/tmp/s11c2; mkdir -p $R
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $R/card.txt
timeout 120 $B/cuda_parity > $R/parity.md 2>&1; grep -E '^PASS|^FAIL' $R/parity.md; grep FAIL $R/parity.md | head
ENGINE=$E OUT=$R/rp STEPS=40 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
for n in 4 20; do
  NXFT_CUDA_PROFILE=1 ENGINE=$E OUT=$R/prof-$n STEPS=$n PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/prof-$n.log 2>&1
done
J=$ROOT/.carry/real-path/rp-2048
STEPS=3 timeout 200 /usr/local/cuda/bin/ncu --kernel-name regex:tiles_backward --launch-skip 40 --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
  python3 bench/real_path_run.py $E $J /tmp/m8b /tmp/rp-ncu > $R/ncu.txt 2>&1
cat $R/rp/table.md; tail -1 $R/rp/ours.jsonl | cut -c1-500
grep -A40 "tiles_backward" $R/ncu.txt | head -120
tar -czf $OUT/call-2.tgz -C /tmp s11c2
