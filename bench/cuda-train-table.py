#!/usr/bin/env python3
"""cuda-train-table.py OUT GPU — the final table of bench/cuda-train.sh: our CUDA LoRA step vs the
Hugging Face + PEFT peer (eager and torch.compile) on the same 8B-shaped model and shapes.
Reads the JSON lines of OUT/ours.txt (native/tests/cuda/cuda_train_bench), OUT/peer_eager.txt, OUT/peer_compile.txt
(../shared/bench/hf_peft_baseline.py). Standard library only."""
import json, os, sys

out, gpu = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "?")

def load_jsonl(p):
    try:
        return [json.loads(l) for l in open(p) if l.startswith("{")]
    except OSError:
        return []

def load_json(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return []

ours = load_jsonl(os.path.join(out, "ours.txt"))
# the peer prints one JSON line per run (kept even when a later run times out)
eager = {(r["bs"], r["seq"], int(r["ckpt"])): r for r in load_jsonl(os.path.join(out, "peer_eager.txt"))}
comp = {(r["bs"], r["seq"], int(r["ckpt"])): r for r in load_jsonl(os.path.join(out, "peer_compile.txt"))}

def peer(tab, b, t):  # the peer's row for this shape: same checkpointing first, else the other one
    for ck in (0, 1):
        if (b, t, ck) in tab:
            yield ck, tab[(b, t, ck)]

print(f"\n## CUDA LoRA training, Llama-3-8B shape, r16 α16 on 7 targets, AdamW — {gpu}\n")
print("| shape | ours ckpt | ours tok/s | ours peak GiB (reserved / device) | HF eager tok/s (ckpt, peak alloc GiB) | ×eager "
      "| HF compiled tok/s (ckpt, peak alloc GiB) | ×compiled | loss, grad norm finite |")
print("|---|---|---|---|---|---|---|---|---|")
for r in ours:
    b, t, ck = r["B"], r["T"], r["ckpt"]
    if r["plan"].endswith(":ru"):
        continue  # the A/B row of the LoRA expand kernel is printed below
    def cell(tab):
        rows = list(peer(tab, b, t))
        if not rows:
            return "—", "—"
        best = max(rows, key=lambda x: x[1]["tokens_per_s"])
        ckp, p = best
        return (f"{p['tokens_per_s']:,.0f} ({'ckpt' if ckp else 'no ckpt'}, {p['peak_alloc_gib']:.1f})",
                f"{r['tokens_per_s'] / p['tokens_per_s']:.3f}×")
    e, ex = cell(eager)
    c, cx = cell(comp)
    print(f"| {b}×{t} | {'yes' if ck else 'no'} | {r['tokens_per_s']:,.0f} | {r['peak_reserved_gib']:.1f} / "
          f"{r['device_used_gib']:.1f} | {e} | {ex} | {c} | {cx} | {r['finite']} (loss {r['loss']:.3f}, "
          f"gn {r['grad_norm']:.3f}) |")
print("\nRatios compare against the peer's fastest run of the same B×T (its checkpointing noted). Our peak: "
      "high-water mark of device memory our allocator holds (tensors + caches + cuBLAS/scratch workspaces) / "
      "cudaMemGetInfo used at the end (adds the CUDA context and cuDNN). Peer: torch.cuda.max_memory_allocated.")
ab = [r for r in ours if r["plan"].endswith(":ru")]
for r in ab:
    base = [o for o in ours if o["plan"] == r["plan"][:-3]]
    if base:
        print(f"\nA/B: {r['plan'][:-3]} with the LoRA rank-update kernel (NXFT_RANK_UPDATE=1): "
              f"{r['tokens_per_s']:,.0f} tok/s vs {base[0]['tokens_per_s']:,.0f} with cuBLASLt (default).")
# Packed documents (":packed": several documents per row, attention per document) against single-document rows
# of the same plan: the shards stage writes packed rows, so this ratio is what users get of the headline speed.
packed = [r for r in ours if ":packed" in r["plan"]]
if packed:
    print("\n| plan | packed tok/s | single-document tok/s | packed / single | packed peak GiB | single peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in packed:
        single = [o for o in ours if o["plan"] == r["plan"].replace(":packed", "").replace(":portable", "")]
        s = single[0] if single else None
        print(f"| {r['plan']} | {r['tokens_per_s']:,.0f} | {s['tokens_per_s'] if s else float('nan'):,.0f} | "
              f"{(r['tokens_per_s'] / s['tokens_per_s']) if s else float('nan'):.3f}× | {r['peak_reserved_gib']:.1f} | "
              f"{s['peak_reserved_gib'] if s else float('nan'):.1f} |")
