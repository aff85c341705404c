# longest_context.py — the longest trainable context of 8B-shaped LoRA training under a device-memory cap, found by
# probing: every probe is its own cuda_train_bench process (one 1×T plan, checkpointing + offload, the cap in
# NXFT_DEVICE_MEMORY_CAP_GIB), so an out-of-memory cannot poison the next. Prints one JSON line per probe and a
# summary line: the longest T that trained, tok/s at 32K, 128K and that T.
#   python3 bench/longest_context.py BENCH MODE     MODE = q4 (QLoRA: NF4 + double quantization) | bf16 (bf16 LoRA)
# Environment: CAP_GIB (default 80), BUDGET_S (wall seconds for all probes, default 540), STEP (granularity of T,
# default 8192), MAX_T (upper bound of the search, default 1048576).
#
# Memory grows linearly in T (nothing is T×T: flash attention, chunked cross-entropy), so two short probes (16K,
# 32K) give bytes per token and a predicted maximum; the search then bisects between the longest T that trained
# and the shortest that did not, starting at the prediction. A probe that fits runs one full step (forward,
# recompute, backward, AdamW) — at 400K about as long as minutes of attention — so a probe is skipped when its
# estimated time (step time grows at most ∝ T² from the last fit) exceeds the budget left; the summary says whether
# the bracket closed. Failures are told apart: "device" (CUDA out of memory under the cap), "host" (page-locked
# memory for the offloaded checkpoints: L·T·C·2 bytes), "timeout", "error".
import json, os, subprocess, sys, time

bench, mode = sys.argv[1], sys.argv[2]
assert mode in ("q4", "bf16"), "MODE is q4 or bf16"
cap = float(os.environ.get("CAP_GIB", "80"))
budget = float(os.environ.get("BUDGET_S", "540"))
step = int(os.environ.get("STEP", "8192"))
max_t = int(os.environ.get("MAX_T", "1048576"))
t_start = time.time()
left = lambda: budget - (time.time() - t_start)
results = {}   # T → probe result


def probe(T, warm=0, steps=1):
    plan = f"1x{T}x1:offload" + (":q4" if mode == "q4" else "")
    env = dict(os.environ, NXFT_DEVICE_MEMORY_CAP_GIB=str(cap))
    t0 = time.time()
    try:
        p = subprocess.run([bench, "bench", "--no-profile", "--warm", str(warm), "--steps", str(steps), plan],
                           env=env, capture_output=True, text=True, timeout=max(1.0, left()))
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired:
        out, err, rc = "", "timeout", -1
    r = {"mode": mode, "T": T, "cap_gib": cap, "wall_s": round(time.time() - t0, 1)}
    line = next((l for l in out.splitlines() if l.startswith("{")), None)
    if rc == 0 and line:
        j = json.loads(line)
        r.update(ok=True, tokens_per_s=j["tokens_per_s"], step_s=j["step_s"], peak_reserved_gib=j["peak_reserved_gib"],
                 loss=j["loss"], finite=j["finite"])
    else:
        why = "timeout" if err == "timeout" else "device" if "CUDA out of memory" in err else \
              "host" if "page-locked host memory" in err else "error"
        r.update(ok=False, failure=why, message=err.strip().splitlines()[-1][:300] if err.strip() else "")
    results[T] = r
    print(json.dumps(r), flush=True)
    return r


def est_seconds(T):
    """Wall time of a probe at T from the longest fit so far: load + step, the step ∝ T² (attention-bound) at worst."""
    fits = [r for r in results.values() if r["ok"]]
    if not fits:
        return 0
    ref = max(fits, key=lambda r: r["T"])
    load = max(0.0, ref["wall_s"] - ref["step_s"] * 2)
    return load + ref["step_s"] * (T / ref["T"]) ** 2


r16 = probe(16384)
r32 = probe(32768, warm=1, steps=1)   # one warm step first: the tok/s at 32K is a steady one
lo, hi = 0, max_t + step
for r in (r16, r32):
    if r["ok"]:
        lo = max(lo, r["T"])
    elif r["failure"] == "device" or r["failure"] == "host":
        hi = min(hi, r["T"])
predicted = None
if r16["ok"] and r32["ok"] and r32["peak_reserved_gib"] > r16["peak_reserved_gib"]:
    per_tok = (r32["peak_reserved_gib"] - r16["peak_reserved_gib"]) / 16384
    predicted = int(16384 + (cap - r16["peak_reserved_gib"]) / per_tok) // step * step
# 128K: the tok/s the issue asks for (cold: one step; at this length the first step's graph builds are small)
if lo >= 32768 and hi > 131072 and est_seconds(131072) < left():
    r = probe(131072)
    lo, hi = (131072, hi) if r["ok"] else (lo, 131072 if r["failure"] in ("device", "host") else hi)
# bisection between lo (trained) and hi (did not), the first probe at the prediction
nxt = predicted if predicted and lo < predicted < hi else None
while hi - lo > step:
    T = nxt if nxt else (lo + hi) // 2 // step * step
    nxt = None
    if T <= lo or T >= hi:
        T = (lo + hi) // 2 // step * step
    if T <= lo:
        break
    if est_seconds(T) > left():
        print(json.dumps({"mode": mode, "skipped_T": T, "estimated_s": round(est_seconds(T)), "left_s": round(left())}),
              flush=True)
        break
    r = probe(T)
    if r["ok"]:
        lo = T
    elif r["failure"] in ("device", "host"):
        hi = T
    else:
        break   # timeout or another error: stop, report what is known
fits = [r for r in results.values() if r["ok"]]
best = max(fits, key=lambda r: r["T"]) if fits else None
tps = lambda T: results[T]["tokens_per_s"] if T in results and results[T]["ok"] else None
print(json.dumps({"summary": True, "mode": mode, "cap_gib": cap, "longest_T": best["T"] if best else None,
                  "bracket_closed": hi - lo <= step, "first_failure_T": hi if hi <= max_t else None,
                  "predicted_T": predicted, "tokens_per_s_32k": tps(32768), "tokens_per_s_128k": tps(131072),
                  "tokens_per_s_longest": best["tokens_per_s"] if best else None,
                  "peak_reserved_gib_longest": best["peak_reserved_gib"] if best else None,
                  "seconds": round(time.time() - t_start)}), flush=True)
