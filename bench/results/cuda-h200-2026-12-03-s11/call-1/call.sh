#!/usr/bin/env bash
# Session 11, call 1: the real path 2x2048 on one card with every packed batch on the tiles and with the per-batch
# choice (40 steps each); the steady-state op profile (profiles of 4 and 20 steps, subtracted); nsys if present.
# Carry native/build-carry and .carry.
set -uo pipefail
ROOT=$PWD; log(){ :; }; source bench/cuda-build.sh; find_cudnn
E=$ROOT/native/build-carry/finetune-engine
R=/tmp/s11c1; mkdir -p $R
nvidia-smi --query-gpu=name,uuid --format=csv,noheader > $R/card.txt
(which nsys ncu; ls /usr/local/cuda/bin | head -50) > $R/tools.txt 2>&1
NXFT_ATTN_TILES=1 ENGINE=$E OUT=$R/rp-tiles STEPS=40 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-tiles.log 2>&1
ENGINE=$E OUT=$R/rp-auto STEPS=40 PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/rp-auto.log 2>&1
for n in 4 20; do
  NXFT_ATTN_TILES=1 NXFT_CUDA_PROFILE=1 ENGINE=$E OUT=$R/prof-$n STEPS=$n PHASE=ours JOBS="rp-2048" bash bench/real-path-gpu.sh > $R/prof-$n.log 2>&1
done
NSYS=$(which nsys 2>/dev/null || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [ -n "$NSYS" ]; then
  J=$ROOT/.carry/real-path/rp-2048
  NXFT_ATTN_TILES=1 STEPS=12 timeout 120 $NSYS profile -o $R/nsys -t cuda --force-overwrite true python3 bench/real_path_run.py $E $J /tmp/m8b /tmp/rp-nsys > $R/nsys.log 2>&1
  $NSYS stats -r cuda_gpu_kern_sum -f csv -o $R/kern $R/nsys.nsys-rep >> $R/nsys.log 2>&1
  rm -f $R/nsys.nsys-rep $R/nsys.sqlite
fi
for f in rp-tiles rp-auto; do cat $R/$f/table.md; tail -1 $R/$f/ours.jsonl | cut -c1-600; done
cat $R/card.txt $R/tools.txt | head -20
tar -czf $OUT/call-1.tgz -C /tmp s11c1
