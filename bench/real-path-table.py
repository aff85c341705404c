# real-path-table.py — the table of bench/real-path-gpu.sh: ours (the real-path train job) beside Unsloth on the
# same rows, shapes and card.   python3 bench/real-path-table.py OUT
import json, os, sys

out = sys.argv[1]
def lines(name):
    p = os.path.join(out, name)
    return [json.loads(l) for l in open(p) if l.startswith("{")] if os.path.exists(p) else []
ours = {o["job"]: o for o in lines("ours.jsonl") if "error" not in o}
peers = lines("peer.jsonl")   # a job may have several: unpacked rows padded, and laid end to end (padding-free)
gpu = open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "?"
print(f"Card: {gpu}\n")
print("| job | shape | ours real tok/s | ours peak GiB | load → weights s | load → step 1 done s | Unsloth layout | Unsloth real tok/s | Unsloth peak GiB | Unsloth load s | × Unsloth (real tokens) | loss first → last |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for job in sorted(set(ours) | {p["job"] for p in peers}):
    # rp-8192-offload (checkpoints in host memory) against Unsloth's rp-8192 run, whose "unsloth" checkpointing
    # offloads them too; a tagged A/B run of ours ("job (NXFT_…=0)") against the job's peers
    o = ours.get(job)
    base = job.split(" (")[0].removesuffix("-offload")
    mine = [p for p in peers if p["job"] == base] or [None]
    if o is None and job not in {p["job"] for p in peers}:
        continue
    for p in mine:
        ck = o and (" ckpt offload" if o["ckpt"] == "offload" else " ckpt" if o["ckpt"] else "")
        shape = f"{o['batch']}×{o['seq_len']}{ck}" if o else f"{p['bs']}×{p['seq']}"
        f = lambda d, k, fmt="{:,.0f}": fmt.format(d[k]) if d and d.get(k) is not None else "—"
        ratio = f"{o['real_tokens_per_s'] / p['real_tokens_per_s']:.3f}×" if o and p else "—"
        loss = f"{o['first_loss']:.3f} → {o['last_loss']:.3f}" if o else "—"
        layout = p["name"].split("-")[1] if p else "—"
        print(f"| {job} | {shape} | {f(o, 'real_tokens_per_s')} | {f(o, 'peak_device_gib', '{:.1f}')} | {f(o, 'load_s', '{:.1f}')} | "
              f"{f(o, 'first_step_done_s', '{:.1f}')} | {layout} | {f(p, 'real_tokens_per_s')} | {f(p, 'peak_alloc_gib', '{:.1f}')} | "
              f"{f(p, 'load_s', '{:.1f}')} | {ratio} | {loss} |")
print("\nReal tokens: the rows' documents that hold a target, without padding (ours: the engine's data_tokens of the "
      "steps; Unsloth: the rows it ran). Unsloth layout: packed rows as the shards stage wrote them; unpacked rows "
      "padded to the batch's longest, or flat (padding-free: the batch's examples end to end in one row). "
      "Ours: steady rate after the first steps (graphs built and autotuned); median and slowest step in ours.jsonl.")
