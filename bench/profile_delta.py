# profile_delta.py — the steady-state op profile of a train job: two NXFT_CUDA_PROFILE=1 runs of the same job, one
# short (first-use costs: cuDNN graphs, GEMM tuning, new head shapes) and one longer, subtracted op by op, per step.
#   python3 bench/profile_delta.py SHORT.err LONG.err STEPS_SHORT STEPS_LONG
# The .err files are bench/real_path_run.py's stderr (the engine's per-op table at its end). Prints a markdown table:
# per step ms, calls and µs per call of each op over the steps the long run has beyond the short one, then totals by
# kind (base GEMMs, LoRA GEMMs, attention, …). Ops timed one after another on one stream (the profile runs the side
# stream's work on the main one), so the total is a little above a step's wall time.
import re, sys

def ops(path):
    out = {}
    for line in open(path, encoding="utf-8").read().splitlines():
        m = re.match(r"\| (.+?) \| (\d+) \| ([\d.]+) \|", line)
        if m:
            out[m.group(1)] = (int(m.group(2)), float(m.group(3)))
    return out

short, long_, n0, n1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
a, b, steps = ops(short), ops(long_), n1 - n0
rows = []
for name, (calls, ms) in b.items():
    c0, ms0 = a.get(name, (0, 0.0))
    if calls - c0 > 0:
        rows.append((name, (ms - ms0) / steps, (calls - c0) / steps, 1000 * (ms - ms0) / (calls - c0)))
rows.sort(key=lambda r: -r[1])
kinds = {}
for name, ms, _, _ in rows:
    kind = "LoRA GEMMs" if "LoRA" in name else "base GEMMs" if "base" in name else name.split(" (")[0]
    kinds[kind] = kinds.get(kind, 0.0) + ms
print(f"Steady state over steps {n0 + 1}–{n1}: {sum(r[1] for r in rows):.2f} ms a step (sum of op times)\n")
print("| op | ms a step | calls a step | µs a call |\n|---|---|---|---|")
for name, ms, calls, us in rows:
    if ms >= 0.05:
        print(f"| {name} | {ms:.2f} | {calls:.1f} | {us:.1f} |")
print("\n| kind | ms a step |\n|---|---|")
for kind, ms in sorted(kinds.items(), key=lambda k: -k[1]):
    print(f"| {kind} | {ms:.2f} |")
