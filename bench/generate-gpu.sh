#!/usr/bin/env bash
# generate-gpu.sh — on the GPU machine: 8B generation as the generate and eval stages run it, ours beside
# transformers' and Unsloth's generate, same card, model, prompt ids and lengths; prints one table.
#   1. the random Llama-3-8B bf16 base of bench/real-path-gpu.sh (.carry/make_8b_model.py) on local disk;
#   2. our engine's `generate` job (bench/generate_run.py), with the split-KV decode attention (the default) and,
#      for the prompts in AB_PROMPTS, with NXFT_ATTN_DECODE=portable (one warp per query over the whole cache: the
#      A/B; 1.6 tok/s at 16K, so 256 tokens there would take 160 s);
#   3. transformers (SDPA, dynamic cache) and Unsloth (for_inference) on the same ids (bench/generate_peer.py);
#   4. bench/generate-table.py.
# Environment: ENGINE, OUT (results), BASE (default /tmp/m8b), PROMPTS (default "512 4096 16384"), AB_PROMPTS
# (default "512 4096"), NEW (256), PEERS (default "hf unsloth"). Few files under OUT (the device tool returns few).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/generate}
BASE=${BASE:-/tmp/m8b}
ENGINE=${ENGINE:-$ROOT/native/build-carry/finetune-engine}
PROMPTS=${PROMPTS:-"512 4096 16384"}
AB_PROMPTS=${AB_PROMPTS:-"512 4096"}
NEW=${NEW:-256}
PEERS=${PEERS:-"hf unsloth"}
mkdir -p "$OUT"
log() { echo "[generate $(date +%H:%M:%S)] $*" >&2; }
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
source "$ROOT/bench/m8b-base.sh"
ensure_8b_base "$BASE" || exit 1
for P in $PROMPTS; do
  modes=split; case " $AB_PROMPTS " in *" $P "*) modes="split portable" ;; esac
  for mode in $modes; do
    log "ours: prompt $P, $NEW new, decode attention $mode"
    NXFT_ATTN_DECODE=$mode python3 "$ROOT/bench/generate_run.py" "$ENGINE" "$BASE" "$P" "$NEW" /tmp/generate-jobs \
      >> "$OUT/ours.jsonl" 2>> "$OUT/ours.err"
    tail -1 "$OUT/ours.jsonl" >&2
  done
done
for peer in $PEERS; do
  [ "$peer" = unsloth ] && [ ! -d /opt/uns/unsloth ] && mkdir -p /opt/uns && tar -xJf "$ROOT/.carry/unsloth-site.tar.xz" -C /opt/uns
  log "$peer: prompts $PROMPTS"
  (PEER=$peer MODEL=$BASE P=$(echo $PROMPTS | tr ' ' ,) N=$NEW PYTHONPATH=$([ "$peer" = unsloth ] && echo /opt/uns) \
    PYTHONUNBUFFERED=1 timeout ${PEER_TIMEOUT:-200} python3 "$ROOT/bench/generate_peer.py" > "$OUT/peer-$peer.log" 2>&1)
  grep '^{' "$OUT/peer-$peer.log" | tee -a "$OUT/peer.jsonl" >&2 || tail -20 "$OUT/peer-$peer.log" >&2
done
python3 "$ROOT/bench/generate-table.py" "$OUT" | tee "$OUT/table.md"
