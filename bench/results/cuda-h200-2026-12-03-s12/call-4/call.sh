#!/usr/bin/env bash
# Session 12, call 4: the unpacked real path at the shape `nx g recipe` writes (batch 4, grad_accum 4, max_seq_len
# 1024), ours padding-free and with NXFT_PADDING_FREE=0, beside Unsloth on the same rows (batch 4, padded).
set -uo pipefail
ROOT=$PWD
R=/tmp/s12c4; rm -rf $R; mkdir -p $R
nvidia-smi -L > $R/card.txt
source bench/cuda-build.sh
find_cudnn
B=$ROOT/native/build-carry
BATCH=4 GA=4 TAG="batch 4, GA 4" STEPS=40 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-1024-unpacked" bash bench/real-path-gpu.sh > $R/rp.log 2>&1
NXFT_PADDING_FREE=0 BATCH=4 GA=4 TAG="batch 4, GA 4, NXFT_PADDING_FREE=0" STEPS=40 ENGINE=$B/finetune-engine OUT=$R/rp PHASE=ours JOBS="rp-1024-unpacked" bash bench/real-path-gpu.sh >> $R/rp.log 2>&1
mkdir -p /opt/uns && tar -xJf .carry/unsloth-site.tar.xz -C /opt/uns
(MODEL=/tmp/m8b JOB_DIR=$ROOT/.carry/real-path/rp-1024-unpacked BS=4 CKPT=0 LAYOUT=padded STEPS=60 PYTHONPATH=/opt/uns \
  PYTHONUNBUFFERED=1 timeout 120 python3 bench/unsloth_packed_peer.py > $R/peer.log 2>&1)
grep '^{' $R/peer.log >> $R/rp/peer.jsonl || tail -20 $R/peer.log
python3 bench/real-path-table.py $R/rp | tee $R/real-path-table.md
cp $R/real-path-table.md "${OUT:-/tmp}/"
tar czf "${OUT:-/tmp}/res.tgz" -C $R .
