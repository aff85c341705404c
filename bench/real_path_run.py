# real_path_run.py — runs one real-path train job (bench/real-path.ts wrote it: the adapter stage's job over the
# shards stage's packed rows) with the engine on the GPU machine, and prints one JSON line of timings.
#   [STEPS=N] [BATCH=B] [GA=G] [WARM=4] [TAG=label] python3 bench/real_path_run.py ENGINE JOB_DIR BASE_DIR OUT_DIR
# TAG (an A/B run of the same job, e.g. under an NXFT_ switch) is appended to the job's name in the output.
# The job's {BASE}, {SHARDS} and {OUT} become BASE_DIR, JOB_DIR and OUT_DIR; nothing else changes.
# Times come from the wall clock here as the engine's events arrive: start → weights loaded → step 1 done, then
# the steady rate over the steps after the first WARM (cuDNN graphs are built and autotuned on first use).
import json, os, sys
from engine_events import EngineRun, weights_loaded

engine, job_dir, base, out = sys.argv[1:5]
warm = int(os.environ.get("WARM", "4"))
job_text = open(os.path.join(job_dir, "train.json")).read()
job_text = job_text.replace("{BASE}", base).replace("{SHARDS}", job_dir).replace("{OUT}", out)
# STEPS: a longer run than the job's own steps (new packed shapes keep building cuDNN graphs early on); BATCH and GA:
# another batch size and accumulation, as a recipe's train.batch_size and train.grad_accum would write them
overrides = {"steps": "STEPS", "batch_size": "BATCH", "grad_accum": "GA"}
if any(os.environ.get(v) for v in overrides.values()):
    job = json.loads(job_text)
    for field, var in overrides.items():
        if os.environ.get(var):
            job["train"][field] = int(os.environ[var])
    job_text = json.dumps(job, indent=2)
os.makedirs(out, exist_ok=True)
job_file = os.path.join(out, "job.json")
open(job_file, "w").write(job_text)
manifest = json.load(open(os.path.join(job_dir, "manifest.json")))
T = manifest["seq_len"]
rows = sum(s["rows"] for s in manifest["shards"])
fill = sum(s["tokens"] for s in manifest["shards"]) / (rows * T)  # real (non-padding) share of row tokens

run = EngineRun(engine, "train", job_file)
loaded = None
steps = []  # (wall time, step event)
summary = None
for t, e in run:
    if weights_loaded(e):
        loaded = t
    elif e.get("event") == "step":
        steps.append((t, e))
    elif e.get("event") == "done":
        summary = e.get("summary")
err, rc = run.stderr, run.rc
if rc != 0 or not steps:
    print(err[-3000:], file=sys.stderr)
    print(json.dumps({"job": job_dir, "rc": rc, "error": "engine failed"}))
    sys.exit(1)
sys.stderr.write(err[-8000:])   # the tail: with NXFT_CUDA_PROFILE=1, the per-op table
# steady rate: row tokens of the steps after the first `warm`, over their wall time
after = steps[warm:] if len(steps) > warm + 1 else steps[1:]
t_a = steps[steps.index(after[0]) - 1][0]
dt = after[-1][0] - t_a
row_tok = sum(e["tokens"] for _, e in after)
# the documents that hold a target (rows without their padding), as the engine counts them each step
data_tok = sum(e["data_tokens"] for _, e in after) if all("data_tokens" in e for _, e in after) else None
step_times = sorted(steps[i][0] - steps[i - 1][0] for i in range(1, len(steps)))
print(json.dumps({
    "job": os.path.basename(job_dir.rstrip("/")) + (f" ({os.environ['TAG']})" if os.environ.get("TAG") else ""), "seq_len": T, "batch": json.loads(job_text)["train"]["batch_size"],
    "ckpt": json.loads(job_text)["train"]["gradient_checkpointing"], "steps": len(steps),
    "load_s": loaded, "first_step_done_s": steps[0][0], "first_step_s": steps[0][0] - (loaded or 0),
    "row_tokens_per_s": row_tok / dt, "real_tokens_per_s": (data_tok if data_tok is not None else row_tok * fill) / dt,
    "fill": fill, "computed_tokens_per_step": sum(e.get("computed_tokens", 0) for _, e in after) / len(after),
    "median_step_s": step_times[len(step_times) // 2], "max_step_s": step_times[-1],
    # the steady steps' mean against their median: a cost paid every step moves both, one paid now and then (a new
    # cuDNN graph) only the mean; slow_steps counts those over 1.5× the median
    "mean_step_s": dt / len(after), "slow_steps": sum(t > 1.5 * step_times[len(step_times) // 2] for t in step_times),
    "engine_tokens_per_s": summary.get("tokens_per_s") if summary else None,
    "peak_device_gib": (summary.get("backend_peak_bytes") or 0) / 2**30 if summary else None,
    "peak_host_gib": (summary.get("peak_memory_bytes") or 0) / 2**30 if summary else None,
    "first_loss": steps[0][1]["loss"], "last_loss": steps[-1][1]["loss"], "device": summary.get("device") if summary else None,
}), flush=True)
