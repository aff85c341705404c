# multi_gpu_run.py — one data-parallel training run for bench/multi-gpu.sh: W engine processes (one per GPU) on
# the real-path job (bench/real-path.ts wrote it), or one process without any collective (W = 0: the reference).
#   python3 bench/multi_gpu_run.py ENGINE JOB_DIR BASE_DIR OUT_DIR WORLD PER_GPU_BATCH GRAD_ACCUM STEPS
# WORLD ≥ 1 runs the NCCL collective (named in the job, so WORLD 1 exercises it too) with batch_size
# WORLD·PER_GPU_BATCH; WORLD 0 runs one plain process with batch_size PER_GPU_BATCH. Prints one JSON line: the
# steady tokens/s of rank 0 over the steps after the first WARM (cuDNN plans and NCCL channels are set up on first
# use), the peak device memory and the adapter folder.
import json, os, subprocess, sys, tempfile, time

engine, job_dir, base, out = sys.argv[1:5]
world, per_gpu, grad_accum, steps = (int(x) for x in sys.argv[5:9])
warm = int(os.environ.get("WARM", "4"))
job = json.loads(open(os.path.join(job_dir, "train.json")).read().replace("{BASE}", base).replace("{SHARDS}", job_dir).replace("{OUT}", out))
job["train"].update({"batch_size": per_gpu * max(world, 1), "grad_accum": grad_accum, "steps": steps, "epochs": None,
                     "eval_every": 0, "save_every": 0, "resume": False})
job["eval_shards"] = []
job.pop("checkpoint_dir", None)
os.makedirs(out, exist_ok=True)
if world >= 1:
    job["dist"] = {"world_size": world, "rendezvous": tempfile.mkdtemp(prefix="nxft-rv-"),
                   "collective": os.environ.get("COLLECTIVE", "nccl"),   # cpu: a dry run of this script without GPUs
                   "timeout_s": 900}
job_file = os.path.join(out, "job.json")
json.dump(job, open(job_file, "w"))

t0 = time.time()
procs = []
for rank in range(max(world, 1)):
    env = dict(os.environ, NXFT_RANK=str(rank), NXFT_LOCAL_RANK=str(rank), NXFT_CUDA_DEVICE=str(rank))
    err = open(os.path.join(out, f"rank-{rank}.err"), "w")
    procs.append(subprocess.Popen([engine, "train", "--job", job_file], stdout=subprocess.PIPE, stderr=err, text=True, env=env))
steps_seen, summary, errors = [], None, []
for line in procs[0].stdout:   # rank 0 reports for all
    try:
        e = json.loads(line)
    except json.JSONDecodeError:
        continue
    if e.get("event") == "step":
        steps_seen.append((time.time() - t0, e))
    elif e.get("event") == "done":
        summary = e.get("summary")
    elif e.get("event") == "error":
        errors.append(e)
        for p in procs[1:]:
            p.terminate()
for rank, p in enumerate(procs[1:], 1):   # the other ranks' errors, if any
    for line in p.stdout:
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("event") == "error":
            errors.append(dict(e, rank=rank))
rcs = [p.wait() for p in procs]
if any(rcs) or not steps_seen:
    print(json.dumps({"world": world, "rc": rcs, "errors": errors}))
    sys.exit(1)
after = steps_seen[warm:] if len(steps_seen) > warm + 1 else steps_seen[1:]
t_a = steps_seen[steps_seen.index(after[0]) - 1][0]
tokens = sum(e["tokens"] for _, e in after)
print(json.dumps({
    "world": world, "per_gpu_batch": per_gpu, "grad_accum": grad_accum, "steps": len(steps_seen),
    "tokens_per_s": tokens / (after[-1][0] - t_a), "final_loss": steps_seen[-1][1]["loss"],
    "peak_device_gib": (summary or {}).get("backend_peak_bytes", 0) / 2**30, "adapter": out,
}), flush=True)
