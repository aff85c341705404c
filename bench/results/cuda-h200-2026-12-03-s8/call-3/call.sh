#!/usr/bin/env bash
# (Ran from the repo root as bench/s8-diag.sh; kept here with its results.)
# session 8 call 2: issue 11 diagnostics (A/B of existing switches, kernel list of the packed backward)
set -uo pipefail
ROOT=$PWD; T0=$(date +%s); R=$OUT
log() { echo "[s8 $(( $(date +%s) - T0 ))s] $*" | tee -a $R/log.txt >&2; }
nvidia-smi -L > $R/card.txt
source bench/cuda-build.sh; find_cudnn
B=$ROOT/native/build-carry
log "parity with NXFT_CUDNN_PACKED_MHA=1"
NXFT_CUDNN_PACKED_MHA=1 timeout 120 $B/cuda_parity > $R/parity-mha.md 2>&1; echo "rc=$?" >> $R/parity-mha.md
grep -ciE "fail" $R/parity-mha.md | sed 's/^/FAIL lines: /' | tee -a $R/log.txt
log "bench A/B"
timeout 260 $B/cuda_train_bench bench 2x2048x0:packed:prompt 2x2048x0:packed:prompt:mha 2x2048x0:packed:prompt:atall 2x2048x0:packed:prompt:keep > $R/bench.txt 2> $R/bench.err
grep '^{' $R/bench.txt | tee -a $R/log.txt
log "ncu kernel durations, 2 layers"
timeout 150 ncu --csv --metrics gpu__time_duration.sum $B/cuda_train_bench bench --layers 2 --warm 1 --steps 1 --no-profile 2x2048x0:packed:prompt > $R/ncu.csv 2> $R/ncu.err
echo "ncu rc=$?" | tee -a $R/log.txt; wc -l $R/ncu.csv | tee -a $R/log.txt
gzip -f $R/ncu.csv
log done
