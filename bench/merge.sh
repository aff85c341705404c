#!/usr/bin/env bash
# merge.sh — times `finetune-engine merge` (LoRA fold-in + dtype conversion, streaming) on a random model of a
# chosen shape and prints a table: wall time, throughput, peak RSS. Not part of CI.
#   bench/merge.sh [tiny|1b|8b4|8b]   (default 1b: TinyLlama-1.1B shapes; 8b: Llama-3-8B shapes, ~16 GB bf16 on
#   disk, init needs ~32 GB RAM; 8b4: Llama-3-8B tensor shapes with 4 layers, to see peak memory on 8B-sized tensors)
# Needs: a built engine (ENGINE, default native/build-infra/finetune-engine), python3 (stdlib only, for the
# adapter), /usr/bin/time. Work files go to WORK (default /tmp/nxft-merge-bench) and are removed at the end
# unless KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${ENGINE:-$PWD/native/build-infra/finetune-engine}
WORK=${WORK:-/tmp/nxft-merge-bench}
SHAPE=${1:-1b}
R=${R:-16}
rm -rf "$WORK" && mkdir -p "$WORK"
case "$SHAPE" in
  tiny) DIMS='"hidden_size":256,"intermediate_size":688,"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":4,"vocab_size":4096' ;;
  1b)   DIMS='"hidden_size":2048,"intermediate_size":5632,"num_hidden_layers":22,"num_attention_heads":32,"num_key_value_heads":4,"vocab_size":32000' ;;
  8b4)  DIMS='"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":4,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256' ;;
  8b)   DIMS='"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256' ;;
  *) echo "unknown shape $SHAPE" >&2; exit 2 ;;
esac
echo "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",$DIMS,\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\"}" > "$WORK/config.json"
echo "{\"command\":\"init\",\"config\":\"$WORK/config.json\",\"seed\":0,\"dtype\":\"bf16\",\"out\":\"$WORK/base\"}" > "$WORK/init.json"
"$ENGINE" init --job "$WORK/init.json" > "$WORK/init.log"
# A PEFT adapter with random A and B for all seven targets (stdlib python: array + struct).
python3 - "$WORK" "$R" <<'PY'
import json, struct, sys, random, array, os
work, r = sys.argv[1], int(sys.argv[2])
c = json.load(open(os.path.join(work, "config.json")))
C, F, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
hd = C // c["num_attention_heads"]; Q, KV = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
dims = {"q_proj": (C, Q), "k_proj": (C, KV), "v_proj": (C, KV), "o_proj": (Q, C), "gate_proj": (C, F), "up_proj": (C, F), "down_proj": (F, C)}
rng = random.Random(0)
tensors = []
for l in range(L):
    for t, (i, o) in dims.items():
        part = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        pre = f"base_model.model.model.layers.{l}.{part}.{t}"
        tensors.append((pre + ".lora_A.weight", [r, i]))
        tensors.append((pre + ".lora_B.weight", [o, r]))
tensors.sort()
header, off = {"__metadata__": {"format": "pt"}}, 0
for n, s in tensors:
    nb = s[0] * s[1] * 4
    header[n] = {"dtype": "F32", "shape": s, "data_offsets": [off, off + nb]}; off += nb
h = json.dumps(header, separators=(",", ":")).encode(); h += b" " * ((8 - len(h) % 8) % 8)
os.makedirs(os.path.join(work, "adapter"), exist_ok=True)
block = array.array("f", [rng.uniform(-0.01, 0.01) for _ in range(1 << 16)]).tobytes()
with open(os.path.join(work, "adapter", "adapter_model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    left = off
    while left:
        n = min(left, len(block)); f.write(block[:n]); left -= n
json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(dims), "task_type": "CAUSAL_LM"},
          open(os.path.join(work, "adapter", "adapter_config.json"), "w"), indent=2, sort_keys=True)
PY
printf "%-6s %-6s %10s %10s %12s %12s\n" shape dtype params wall_s "GB/s(out)" peak_rss_MB
for DT in bf16 f16 f32; do
  echo "{\"command\":\"merge\",\"base\":\"$WORK/base\",\"adapter\":\"$WORK/adapter\",\"dtype\":\"$DT\",\"out\":\"$WORK/merged-$DT\"}" > "$WORK/merge.json"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$ENGINE" merge --job "$WORK/merge.json" > "$WORK/merge-$DT.log"
  read -r WALL RSS_KB < "$WORK/time.txt"
  BYTES=$(grep '"event":"done"' "$WORK/merge-$DT.log" | sed 's/.*"bytes":\([0-9]*\).*/\1/')
  PARAMS=$(grep '"event":"start"' "$WORK/init.log" | sed 's/.*"params":\([0-9]*\).*/\1/')
  printf "%-6s %-6s %10s %10s %12.2f %12d\n" "$SHAPE" "$DT" "$PARAMS" "$WALL" "$(echo "$BYTES / $WALL / 1000000000" | bc -l)" "$((RSS_KB / 1024))"
  rm -rf "$WORK/merged-$DT"
done
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
