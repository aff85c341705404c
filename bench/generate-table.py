# generate-table.py — the table of bench/generate-gpu.sh: 8B greedy generation, ours beside transformers and Unsloth
# on the same card, model and prompt ids.   python3 bench/generate-table.py OUT
import json, os, sys

out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
rows = {}
for r in lines("ours.jsonl") + lines("peer.jsonl"):
    if "error" in r:
        continue
    who = "ours" + ("" if r.get("attention_decode", "split") == "split" else " (portable decode attention)") if r["peer"] == "ours" else r["peer"]
    rows.setdefault((r["prompt_tokens"], r["new_tokens"]), {})[who] = r
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "?"
cols = ["ours", "ours (portable decode attention)", "hf", "unsloth"]
names = {"ours": "ours", "ours (portable decode attention)": "ours, portable decode", "hf": "transformers", "unsloth": "Unsloth"}
print(f"Card: {gpu}\n")
print("| prompt + new tokens | " + " | ".join(f"{names[c]} decode tok/s" for c in cols) + " | ours ÷ transformers | ours ÷ Unsloth | "
      + " | ".join(f"{names[c]} prompt s" for c in cols) + " | leading greedy ids equal to ours: " + ", ".join(names[c] for c in cols[1:]) + " |")
print("|---" * (2 * len(cols) + 4) + "|")
for (P, N), r in sorted(rows.items()):
    f = lambda c, k, fmt: fmt.format(r[c][k]) if c in r and r[c].get(k) is not None else "—"
    ratio = lambda c: f"{r['ours']['decode_tokens_per_s'] / r[c]['decode_tokens_per_s']:.2f}×" if "ours" in r and c in r else "—"
    def agree(c):   # how many of the first 8 greedy ids equal ours
        if "ours" not in r or c not in r:
            return "—"
        a, b = r["ours"]["ids_head"], r[c]["ids_head"]
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return f"{n}/{min(len(a), len(b))}"
    print(f"| {P} + {N} | " + " | ".join(f(c, "decode_tokens_per_s", "{:,.1f}") for c in cols) + f" | {ratio('hf')} | {ratio('unsloth')} | "
          + " | ".join(f(c, "prompt_s", "{:.3f}") for c in cols) + " | " + ", ".join(agree(c) for c in cols[1:]) + " |")
print("\nDecode tok/s: the tokens after the first over their time (greedy, batch 1, bf16, no stop). Prompt s: the prompt "
      "read into the KV cache plus the first token; ours is the first call of its process (first-use setup included: "
      "cuBLASLt heuristics, cuDNN's graph for the prompt length), the peers' follow a warm-up generate. Leading ids: "
      "how many of the first 8 greedy ids equal ours (random weights give near-ties, where bf16 rounding order decides).")
