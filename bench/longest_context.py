# longest_context.py — the longest trainable context of 8B-shaped LoRA training under a device-memory cap, found by
# probing: every probe is its own cuda_train_bench process (one 1×T plan, checkpointing + offload, the cap in
# NXFT_DEVICE_MEMORY_CAP_GIB), so an out-of-memory cannot poison the next. Prints one JSON line per probe and a
# summary line: the longest T that trained, tok/s at 32K, 128K and that T.
#   python3 bench/longest_context.py BENCH MODE     MODE = q4 (QLoRA: NF4 + double quantization) | bf16 (bf16 LoRA)
# Environment: CAP_GIB (default 80), BUDGET_S (wall seconds for all probes, default 540), STEP (granularity of T,
# default 8192), MAX_T (upper bound of the search, default 1048576), PROBES (e.g. "409600": probe only these T, one
# process each, no search: a single long probe in a device call of its own).
#
# A probe that fits runs one full step (forward, recompute, backward, AdamW): at 400K tokens that is minutes of
# attention, so the search spends its probes carefully:
#   1. 16K and 32K, each after one warm step: device bytes per token (memory is linear in T: nothing is T×T) and
#      step time as a·T + b·T² (the T² part is attention);
#   2. the target: the T where the device plan meets the cap, or where the host runs out of page-locked memory
#      for the offloaded checkpoints ((L − 1)·T·C·2 bytes against MemAvailable), whichever is smaller;
#   3. 128K (the issue asks for its tok/s) if time allows, then bisection between the longest T that trained and
#      the shortest that did not, skipping any probe whose estimated time exceeds the budget left.
# cuDNN's attention plans are timed at every T: from one 1×32K row up the engine runs each candidate plan once
# instead of the frontend's repeated runs (backend/cuda/cudnn_attention.cpp), seconds at 400K. Without timing, the
# heuristics' first plan made the 128K step 1.7× slower than the 16K/32K probes predict (session 7).
# Failures are told apart: "device" (CUDA out of memory under the cap), "host" (page-locked memory for the
# offloaded checkpoints), "timeout", "error".
import json, os, subprocess, sys, time

bench, mode = sys.argv[1], sys.argv[2]
assert mode in ("q4", "bf16"), "MODE is q4 or bf16"
cap = float(os.environ.get("CAP_GIB", "80"))
budget = float(os.environ.get("BUDGET_S", "540"))
step = int(os.environ.get("STEP", "8192"))
max_t = int(os.environ.get("MAX_T", "1048576"))
LAYERS, HIDDEN = 32, 4096
t_start = time.time()
left = lambda: budget - (time.time() - t_start)
results = {}   # T → probe result
load_s = [30.0]   # process start → first step, from the probes so far (host init, upload, quantize)


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
        load_s.append(max(0.0, r["wall_s"] - j["step_s"] * (warm + steps)))
    else:
        why = "timeout" if err == "timeout" else "device" if "CUDA out of memory" in err else \
              "host" if "page-locked host memory" in err else "error"
        r.update(ok=False, failure=why, message=err.strip().splitlines()[-1][:300] if err.strip() else "")
    results[T] = r
    print(json.dumps(r), flush=True)
    return r


def step_model():
    """(a, b) of step_s ≈ a·T + b·T² from the 16K and 32K probes (None without both)."""
    r1, r2 = results.get(16384), results.get(32768)
    if not (r1 and r2 and r1["ok"] and r2["ok"]):
        return None
    t1, t2, s1, s2 = 16384.0, 32768.0, r1["step_s"], r2["step_s"]
    b = max(0.0, (s2 / t2 - s1 / t1) / (t2 - t1))
    return s1 / t1 - b * t1, b


def est_seconds(T):
    m = step_model()
    s = (m[0] * T + m[1] * T * T) if m else 0.0
    return max(load_s) + s * 1.1


def host_limit():
    """Tokens of offloaded checkpoints that fit in 92% of MemAvailable (None when unknown)."""
    try:
        kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    return int(kb * 1024 * 0.92 / ((LAYERS - 1) * HIDDEN * 2))


lo, hi = 0, max_t + step
def record(r):
    global lo, hi
    if r["ok"]:
        lo = max(lo, r["T"])
    elif r["failure"] in ("device", "host"):
        hi = min(hi, r["T"])
    return r


fixed = [int(t) for t in os.environ.get("PROBES", "").split()]
for T in fixed:
    record(probe(T))
if not fixed:
    record(probe(16384, warm=1))
    record(probe(32768, warm=1))
predicted = None
r16, r32 = results.get(16384), results.get(32768)
if r16 and r32 and r16["ok"] and r32["ok"] and r32["peak_reserved_gib"] > r16["peak_reserved_gib"]:
    per_tok = (r32["peak_reserved_gib"] - r16["peak_reserved_gib"]) / 16384
    predicted = int(16384 + (cap - r16["peak_reserved_gib"]) / per_tok)
host_max = host_limit()
target = min(t for t in (predicted, host_max, max_t) if t) // step * step if predicted else None
queue = [t for t in (target, 131072) if t and lo < t < hi]
stopped, skipped = None, set()
while not fixed:   # the search; PROBES ran its own list above
    if queue:
        T = queue.pop(0)
        if not (lo < T < hi):
            continue
    elif hi - lo > step and lo > 0:
        T = (lo + hi) // 2 // step * step
        if T <= lo:
            break
    else:
        break
    if est_seconds(T) > left():
        print(json.dumps({"mode": mode, "skipped_T": T, "estimated_s": round(est_seconds(T)), "left_s": round(left())}),
              flush=True)
        if T not in skipped and (T == 131072 or T == target):
            skipped.add(T)
            continue   # a shorter probe may still fit in the time left
        stopped = "budget"
        break
    r = record(probe(T))
    if not r["ok"] and r["failure"] not in ("device", "host"):
        stopped = r["failure"]
        break
fits = [r for r in results.values() if r["ok"]]
best = max(fits, key=lambda r: r["T"]) if fits else None
tps = lambda T: results[T]["tokens_per_s"] if T in results and results[T]["ok"] else None
print(json.dumps({"summary": True, "mode": mode, "cap_gib": cap, "longest_T": best["T"] if best else None,
                  "bracket_closed": hi - lo <= step, "first_failure_T": hi if hi <= max_t else None,
                  "failure_at_first_failure": results[hi]["failure"] if hi in results else None,
                  "predicted_device_T": predicted, "host_limit_T": host_max, "stopped": stopped,
                  "tokens_per_s_32k": tps(32768), "tokens_per_s_128k": tps(131072),
                  "tokens_per_s_longest": best["tokens_per_s"] if best else None,
                  "peak_reserved_gib_longest": best["peak_reserved_gib"] if best else None,
                  "seconds": round(time.time() - t_start)}), flush=True)
