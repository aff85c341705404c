# m8b-base.sh — sourced by the GPU benchmarks that need the random Llama-3-8B bf16 base on local disk
# (../shared/bench/make_8b_model.py, carried as .carry/make_8b_model.py, with the real path's Llama-3 tokenizer).
# ensure_8b_base DIR: writes it once per machine, then reads it so every peer loads with a warm page cache.
ensure_8b_base() {
  local base=$1 rp=$ROOT/.carry/real-path
  if [ ! -f "$base/config.json" ]; then
    log "random Llama-3-8B bf16 base → $base"
    TOKENIZER_XZ=$rp/tokenizer.json.xz TOKENIZER_CONFIG=$rp/tokenizer_config.json \
      python3 "$ROOT/.carry/make_8b_model.py" "$base" >&2 || return 1
  fi
  cat "$base"/*.safetensors > /dev/null
}
