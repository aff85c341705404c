# trim-rows-cpu.py — what cutting rows after their last target saves on unpacked rows (the template's default,
# `packing: false`: one example per row, padded to max_seq_len; `nx g recipe` writes max_seq_len 1024), on the CPU
# engine with 2 threads. Prints one table.
#   python3 bench/trim-rows-cpu.py [JOB_DIR] [T]    (JOB_DIR default .carry/real-path/rp-2048, T default 1024)
# The examples are the real ones of JOB_DIR's shard (bench/real-path.ts: the shards stage's Alpaca 2k rows, Llama-3
# tokenizer, prompt tokens without targets), each put alone in a row of T as the shards stage does without packing,
# ids folded into stories260K's 512-token vocabulary. The same `train` job runs with NXFT_TRIM_ROWS=0 (whole rows),
# NXFT_PADDING_FREE=0 (rows cut after the batch's last target) and by default (padding-free: each row cut after its
# own last target, the rows end to end in one); the losses must agree.
import json, os, struct, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_events import EngineRun

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
job_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".carry", "real-path", "rp-2048")
T = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
engine = os.environ.get("NXFT_ENGINE", os.path.join(root, "native", "build", "finetune-engine"))
model = os.path.abspath(os.path.join(root, "..", "shared", "fixtures", "models", "stories260K-hf"))
B, STEPS, WARM, V = 4, 16, 3, 512

manifest = json.load(open(os.path.join(job_dir, "manifest.json")))
docs = []   # (tokens, targets) of every example, in shard order
for s in manifest["shards"]:
    raw = open(os.path.join(job_dir, s["file"]), "rb").read()
    t_src, R = struct.unpack_from("<II", raw, 12)
    for r in range(R):
        tok, tgt, pos = (struct.unpack_from(f"<{t_src}i", raw, 24 + (3 * r + k) * 4 * t_src) for k in range(3))
        starts = [i for i in range(t_src) if pos[i] == 0] + [t_src]
        for a, b in zip(starts, starts[1:]):
            if all(x == -100 for x in tgt[a:b]) and all(x == manifest["pad_id"] for x in tok[a:b]):
                continue   # the row's padding document
            docs.append((tok[a:b], tgt[a:b]))
fold = lambda i: i % (V - 1) + 1
rows = []
for tok, tgt in docs:
    L = min(len(tok), T)
    rows.append(([fold(x) for x in tok[:L]] + [0] * (T - L), [fold(x) if x != -100 else -100 for x in tgt[:L]] + [-100] * (T - L),
                 list(range(L)) + list(range(T - L))))
tmp = tempfile.mkdtemp(prefix="nxft-trim-rows-")
shard = os.path.join(tmp, "unpacked.tokens.bin")
with open(shard, "wb") as f:
    f.write(b"NXFTSHD1" + struct.pack("<IIII", 1, T, len(rows), 0))
    for r in rows:
        for a in r:
            f.write(struct.pack(f"<{T}i", *a))

def run(trim, padding_free="1"):
    out = os.path.join(tmp, f"out-{trim}-{padding_free}")
    job = {"command": "train", "base": model, "train_shards": [shard], "eval_shards": [], "out": out, "backend": "cpu",
           "threads": 2, "lora": {"r": 16, "alpha": 16, "dropout": 0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj",
           "gate_proj", "up_proj", "down_proj"], "rslora": False, "init_adapter": None}, "quantize_base": None,
           "train": {"seed": 0, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "steps": STEPS, "epochs": None,
                     "batch_size": B, "grad_accum": 1, "optimizer": "adamw", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                     "weight_decay": 0, "max_grad_norm": 1, "gradient_checkpointing": False, "eval_every": 0,
                     "save_every": 0, "resume": False, "shuffle": True}, "base_model_name_or_path": "stories260K"}
    path = os.path.join(tmp, f"job-{trim}-{padding_free}.json")
    json.dump(job, open(path, "w"))
    os.environ["NXFT_TRIM_ROWS"] = trim
    os.environ["NXFT_PADDING_FREE"] = padding_free
    steps = [(t, e) for t, e in EngineRun(engine, "train", path) if e.get("event") == "step"]
    assert len(steps) == STEPS, f"engine failed (NXFT_TRIM_ROWS={trim})"
    dt = (steps[-1][0] - steps[WARM - 1][0]) / (STEPS - WARM)
    comp = sum(e["computed_tokens"] for _, e in steps[WARM:]) / (STEPS - WARM)
    return dt, comp, [e["loss"] for _, e in steps]

whole, cut, free = run("0"), run("1", "0"), run("1", "1")
real = sum(min(len(t), T) for t, _ in docs) / len(docs) * B
print(f"\nUnpacked rows of {T} ({len(rows)} Alpaca examples, {real / B:.0f} tokens each on average), stories260K, CPU, 2 threads, "
      f"batch {B}, LoRA r16 on all seven projections, steady steps {WARM + 1}–{STEPS}\n")
print("| rows | step s | computed tokens per step | example tokens per s | losses against whole rows |")
print("|---|---|---|---|---|")
rel = lambda a, b: max(abs(x - y) / abs(y) for x, y in zip(a, b))
for name, (dt, comp, losses) in (("whole (NXFT_TRIM_ROWS=0)", whole), ("cut after the batch's last target (NXFT_PADDING_FREE=0)", cut),
                                 ("padding-free: each row cut after its own, end to end (default)", free)):
    same = "bit for bit" if losses == whole[2] else f"within {rel(losses, whole[2]):.1e}"
    print(f"| {name} | {dt:.4f} | {comp:,.0f} of {B * T:,} | {real / dt:,.0f} | {same} |")
print(f"\ncut ÷ whole: {whole[0] / cut[0]:.2f}× the steps per second; padding-free ÷ whole: {whole[0] / free[0]:.2f}×, ÷ cut: {cut[0] / free[0]:.2f}×")
