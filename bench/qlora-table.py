# qlora-table.py — the table of bench/qlora-gpu.sh: ours beside Unsloth's QLoRA on the same card, with issue 15's
# bars.   python3 bench/qlora-table.py OUT
import json, os, sys

out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
def text(name):
    p = os.path.join(out, name)
    return open(p).read().strip() if os.path.exists(p) else ""

ours = {o["plan"]: o for o in lines("ours.jsonl")}
load = {o["job"]: o for o in lines("load.jsonl") if "error" not in o}
peer = next(iter(lines("peer.jsonl")), None)
ctx = {m: next((l for l in lines(f"context-{m}.jsonl") if l.get("summary")), None) for m in ("q4", "bf16")}
long_probe = next((l for l in lines("context-long.jsonl") if l.get("summary")), None)   # PHASE=long-start/-wait
if long_probe and (long_probe.get("longest_T") or 0) > ((ctx["q4"] or {}).get("longest_T") or 0):
    ctx["q4"] = long_probe
q, qo = ours.get("1x2048x1:q4"), ours.get("1x2048x1:q4:offload")
fmt = lambda v, f="{:,.0f}": f.format(v) if v is not None else "—"
get = lambda d, k: d.get(k) if d else None

print(f"Card: {' / '.join(text('gpu.txt').splitlines())}\n")
parity = text("parity-nf4.md")
if parity:
    print("NF4 parity (cuda_parity):\n\n```\n" + parity + "\n```\n")
print("| measure | ours | Unsloth | ours / Unsloth | bar |")
print("|---|---|---|---|---|")
ratio = lambda a, b, inv=False: f"{(b / a if inv else a / b):.2f}×" if a and b else "—"
# Unsloth's use_gradient_checkpointing="unsloth" offloads the checkpoints to host memory: our :offload plan is the
# same setting; the plain ckpt plan keeps them on the device (≈ 0.5 GiB more at 1×2048).
print(f"| 8B QLoRA 1×2048, checkpoints offloaded (Unsloth: \"unsloth\" checkpointing), tok/s | "
      f"{fmt(get(qo, 'tokens_per_s'))} | {fmt(get(peer, 'tokens_per_s'))} | "
      f"{ratio(get(qo, 'tokens_per_s'), get(peer, 'tokens_per_s'))} | ≥ 1.3× |")
print(f"| … peak GiB (ours reserved, Unsloth allocated) | {fmt(get(qo, 'peak_reserved_gib'), '{:.2f}')} | "
      f"{fmt(get(peer, 'peak_alloc_gib'), '{:.2f}')} | | ≤ 6.0 |")
print(f"| 8B QLoRA 1×2048, checkpoints on the device, tok/s | {fmt(get(q, 'tokens_per_s'))} | | "
      f"{ratio(get(q, 'tokens_per_s'), get(peer, 'tokens_per_s'))} | |")
print(f"| … peak GiB | {fmt(get(q, 'peak_reserved_gib'), '{:.2f}')} | | | |")
g, p = load.get("qlora-gpu-quantized"), load.get("qlora-prequantized")
print(f"| load → step 1 done, bf16 base quantized on the GPU, s | {fmt(get(g, 'first_step_done_s'), '{:.1f}')} | "
      f"{fmt(get(peer, 'load_s'), '{:.1f}')} (from_pretrained, 4-bit) | | ≤ 45 |")
print(f"| load → step 1 done, pre-quantized checkpoint, s | {fmt(get(p, 'first_step_done_s'), '{:.1f}')} | | | ≤ 20 |")
print(f"| `train` QLoRA 1×2048 ckpt (real rows), tok/s; peak GiB | {fmt(get(g, 'row_tokens_per_s'))}; "
      f"{fmt(get(g, 'peak_device_gib'), '{:.2f}')} | | | |")
for m, name in (("q4", "8B QLoRA"), ("bf16", "8B bf16 LoRA")):
    c = ctx[m]
    if not c:
        continue
    closed = "" if c.get("bracket_closed") else " (search not finished: a lower bound)"
    print(f"| longest {name} context under {c['cap_gib']:g} GiB (ckpt + offload), tokens | {fmt(c['longest_T'])}{closed} | "
          f"{'342,733 (published, 80 GB card)' if m == 'q4' else ''} | | {'≥ 400,000' if m == 'q4' else ''} |")
    print(f"| … tok/s at 32K / 128K / longest | {fmt(c['tokens_per_s_32k'])} / {fmt(c['tokens_per_s_128k'])} / "
          f"{fmt(c['tokens_per_s_longest'])} | | | |")
print("\nOurs: cuda_train_bench on random 8B-shaped weights (speed and memory do not depend on values), r16 α16 on 7 "
      "targets, AdamW, 3 warm + 8 timed steps; peak = the allocator's high-water mark of reserved device memory. "
      "Unsloth: .carry/unsloth_peer.py, torch.cuda.max_memory_allocated. Load times: `train` on a job file "
      "(bench/real_path_run.py), wall clock from start to the first step event. Longest context: one process per "
      "probe under NXFT_DEVICE_MEMORY_CAP_GIB, one step per probe (bench/longest_context.py; its probes are in "
      "context-*.jsonl).")
