#!/usr/bin/env bash
# real-path-gpu.sh — on the GPU machine, in one call: the path users take, ours and Unsloth's, same card, same rows.
#   1. a random Llama-3-8B bf16 base saved as sharded safetensors on local disk (../shared/bench/make_8b_model.py,
#      carried as .carry/make_8b_model.py), read once so both peers load with a warm page cache;
#   2. our engine's `train` on the jobs bench/real-path.ts wrote here (the adapter stage's job over the shards
#      stage's packed Alpaca rows, Llama-3 tokenizer, 2×2048 and 1×8192 with checkpointing): bench/real_path_run.py;
#   3. Unsloth 2026.10.9 on the same rows and shapes (bench/unsloth_packed_peer.py; .carry/unsloth-site.tar.xz
#      from ../shared/bench/make-unsloth-site.sh);
#   4. one table (bench/real-path-table.py).
# Environment: ENGINE (a CUDA build of finetune-engine; bench/cuda-train.sh builds one), OUT (results),
# PHASE=all|ours|peer, BASE (default /tmp/m8b), JOBS (default "rp-2048 rp-8192").
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/real-path}
RP=$ROOT/.carry/real-path
BASE=${BASE:-/tmp/m8b}
ENGINE=${ENGINE:-$ROOT/native/build-cuda-bench/finetune-engine}
PHASE=${PHASE:-all}
JOBS=${JOBS:-"rp-2048 rp-8192"}
mkdir -p "$OUT"
log() { echo "[real-path $(date +%H:%M:%S)] $*" >&2; }
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

source "$ROOT/bench/m8b-base.sh"
ensure_8b_base "$BASE" || exit 1
du -sh "$BASE" >&2

# Shards of mostly padding (rp-1024-unpacked) travel xz-compressed: the carry is limited.
for f in "$RP"/*/*.tokens.bin.xz; do [ -f "$f" ] && [ ! -f "${f%.xz}" ] && python3 -c "import lzma,sys; open(sys.argv[2],'wb').write(lzma.open(sys.argv[1]).read())" "$f" "${f%.xz}"; done

if [ "$PHASE" = all ] || [ "$PHASE" = ours ]; then
  for j in $JOBS; do
    log "ours: $j"
    rm -rf "/tmp/rp-out-$j"
    python3 "$ROOT/bench/real_path_run.py" "$ENGINE" "$RP/$j" "$BASE" "/tmp/rp-out-$j" >> "$OUT/ours.jsonl" 2> "$OUT/ours-$j$(tr -c 'A-Za-z0-9_=\n' - <<< "${TAG:+-$TAG}").err"
    tail -3 "$OUT/ours-$j.err" >&2; tail -1 "$OUT/ours.jsonl" >&2
  done
fi

if [ "$PHASE" = all ] || [ "$PHASE" = peer ]; then
  if [ ! -d /opt/uns/unsloth ]; then mkdir -p /opt/uns && tar -xJf "$ROOT/.carry/unsloth-site.tar.xz" -C /opt/uns; fi
  for j in $JOBS; do
    # the job's own batch size and checkpointing (any checkpointing: Unsloth's "unsloth" mode offloads)
    read -r bs ck < <(python3 -c "import json,sys; t=json.load(open(sys.argv[1]))['train']; print(t['batch_size'], 1 if t['gradient_checkpointing'] else 0)" "$RP/$j/train.json")
    # unpacked rows: padding-free (Unsloth's own default for them) and padded to the batch's longest
    layouts=packed; case $j in *unpacked*) layouts=${PEER_LAYOUTS:-"flat padded"};; esac
    for lay in $layouts; do
      log "unsloth: $j (batch $bs, checkpointing $ck, $lay)"
      (MODEL=$BASE JOB_DIR=$RP/$j BS=$bs CKPT=$ck LAYOUT=$lay PYTHONPATH=/opt/uns PYTHONUNBUFFERED=1 timeout ${PEER_TIMEOUT:-300} \
        python3 "$ROOT/bench/unsloth_packed_peer.py" > "$OUT/peer-$j-$lay.log" 2>&1)
      grep '^{' "$OUT/peer-$j-$lay.log" | tee -a "$OUT/peer.jsonl" >&2 || tail -20 "$OUT/peer-$j-$lay.log" >&2
    done
  done
fi
python3 "$ROOT/bench/real-path-table.py" "$OUT" | tee "$OUT/table.md"
