# multi-gpu-table.py — the scaling table of bench/multi-gpu.sh from its runs.jsonl:
#   python3 bench/multi-gpu-table.py OUT_DIR
# efficiency = tok/s on W GPUs / (W · tok/s on 1 GPU through NCCL); "max |Δ| adapter" compares the W-GPU adapter
# with 1 GPU and W-fold gradient accumulation on the same rows (the run with world 0 and grad_accum W), element by
# element over every LoRA tensor, relative to the largest |weight|.
import json, os, struct, sys

import numpy as np

out = sys.argv[1]
runs = [json.loads(l) for l in open(os.path.join(out, "runs.jsonl")) if l.strip().startswith("{")]


def adapter(folder):
    with open(os.path.join(folder, "adapter_model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtype=np.float32)
            for k, v in header.items() if k != "__metadata__"}


def compare(a, b):
    """The largest element difference, the largest |weight| of a, and ‖a − b‖ / ‖b‖ over every LoRA tensor (a few
    elements that AdamW moved by a whole lr step weigh little in the last)."""
    x, y = adapter(a), adapter(b)
    assert x.keys() == y.keys(), "different tensors"
    d = max(float(np.max(np.abs(x[k] - y[k]))) for k in x)
    s = max(float(np.max(np.abs(x[k]))) for k in x)
    num = sum(float(np.sum((x[k].astype(np.float64) - y[k]) ** 2)) for k in x)
    den = sum(float(np.sum(y[k].astype(np.float64) ** 2)) for k in y)
    return d, s, (num / den) ** 0.5 if den > 0 else float("nan")


ok = [r for r in runs if "tokens_per_s" in r]
repeat = next((r for r in ok if r["adapter"].endswith("ref-ga1-repeat")), None)
ok = [r for r in ok if r is not repeat]
scaled = sorted((r for r in ok if r["world"] >= 1 and r["grad_accum"] == 1), key=lambda r: r["world"])
refs = {r["grad_accum"]: r for r in ok if r["world"] == 0}
one = next((r for r in scaled if r["world"] == 1), None)
print("| GPUs | tok/s | per-GPU tok/s | efficiency | peak GiB/GPU | final loss | adapter vs 1 GPU × W-fold accumulation |")
print("|---:|---:|---:|---:|---:|---:|---|")
for r in scaled:
    w = r["world"]
    eff = r["tokens_per_s"] / (w * one["tokens_per_s"]) if one else float("nan")
    ref = refs.get(w)
    diff = "not run"
    if ref:
        d, s, rel = compare(r["adapter"], ref["adapter"])
        dl = abs(r["final_loss"] - ref["final_loss"]) / abs(ref["final_loss"])
        diff = (f"{d:.3g} (max weight {s:.3g}; {'bitwise equal' if d == 0 else f'{d / s:.2g} relative'}); "
                f"‖Δ‖/‖·‖ {rel:.2g}; final loss {dl:.2g} relative")
    print(f"| {w} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / w:.0f} | {eff:.1%} | {r['peak_device_gib']:.1f} | {r['final_loss']:.4f} | {diff} |")
plain = refs.get(1)
if plain and repeat:
    # Two processes of the same 1-GPU job need not give the same adapter: cuBLASLt's and cuDNN's plans are chosen
    # by timing, and AdamW turns a rounding difference in a near-zero gradient into a whole lr-sized step. The
    # W-GPU differences above are judged against this floor.
    d, s, rel = compare(plain["adapter"], repeat["adapter"])
    dl = abs(plain["final_loss"] - repeat["final_loss"]) / abs(plain["final_loss"])
    print(f"\nNoise floor, the same 1-GPU job twice: max abs diff {d:.3g} ({'bitwise equal' if d == 0 else f'{d / s:.2g} relative'}), "
          f"‖Δ‖/‖·‖ {rel:.2g}, final loss {dl:.2g} relative")
if plain:
    print(f"\n1 GPU without any collective: {plain['tokens_per_s']:.0f} tok/s"
          + (f" (NCCL world 1: {one['tokens_per_s'] / plain['tokens_per_s']:.1%} of it)" if one else ""))
for r in runs:
    if "tokens_per_s" not in r:
        print(f"\nFAILED: {json.dumps(r)}")
