# unsloth_packed_peer.py — the Unsloth peer on the SAME token rows our engine trains on: a copy of
# ../shared/bench/unsloth_peer.py (one plan per process, Unsloth 2026.10.9 from carried wheels) that reads the
# shards stage's packed rows (bench/real-path.ts) instead of random ids.
#   MODEL=dir JOB_DIR=.carry/real-path/rp-2048 BS=2 CKPT=0 PYTHONPATH=/opt/uns python3 bench/unsloth_packed_peer.py
# Each row's documents go in with their position ids (restarting at 0 per document) and labels shifted as
# transformers expects (labels[t+1] = our targets[t]); padding is -100. Without a flash-attn wheel on the GPU
# machine, Unsloth's SDPA path attends across the documents of a row (full causal rows), so its attention work
# is that of single-document rows: the same or more FLOPs than per-document attention.
import os, json, time, glob
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import numpy as np
from unsloth import FastLanguageModel
import torch, unsloth, transformers, peft

path = os.environ["MODEL"]; job_dir = os.environ["JOB_DIR"]
bs = int(os.environ.get("BS", "2")); ck = os.environ.get("CKPT", "0") == "1"
warm, timed = int(os.environ.get("WARM", "3")), int(os.environ.get("STEPS", "8"))

def read_shard(f):  # docs/engine-protocol.md "Token shards"
    b = open(f, "rb").read()
    assert b[:8] == b"NXFTSHD1", f
    T, R = np.frombuffer(b, "<u4", 2, 12)
    a = np.frombuffer(b, "<i4", offset=24).reshape(R, 3, T)
    return a[:, 0], a[:, 1], a[:, 2]

manifest = json.load(open(os.path.join(job_dir, "manifest.json")))
pad_id = manifest.get("pad_id", 0)
tok, tgt, pos = (np.concatenate(x) for x in zip(*[read_shard(os.path.join(job_dir, s["file"])) for s in manifest["shards"] if s["split"] == "train"]))
R, T = tok.shape
def real_tokens(r):  # a row's tokens less its trailing padding document (pad ids, no targets)
    start = int(np.flatnonzero(pos[r] == 0)[-1])
    pad = (tok[r, start:] == pad_id).all() and (tgt[r, start:] == -100).all()
    return start if pad else T

torch.cuda.reset_peak_memory_stats()
t_load = time.time()
model, tokenizer = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=T, dtype=torch.bfloat16,
    load_in_4bit=False, local_files_only=True)
model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
    target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"],
    use_gradient_checkpointing="unsloth" if ck else False, random_state=0)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
load_s = time.time() - t_load
load_peak = torch.cuda.max_memory_allocated() / 2**30
torch.cuda.reset_peak_memory_stats()

# Unpacked rows (one example each, manifest template.packing false): LAYOUT=padded cuts them to the batch's longest
# example, as the transformers/TRL collators pad to the longest in the batch; LAYOUT=flat (padding-free, what
# Unsloth turns on by itself for unpacked data, TRL's DataCollatorWithFlattening) lays the batch's examples end to
# end in one row, position ids restarting at 0 per example, each example's first label -100. Without a varlen
# kernel here, Unsloth's SDPA attends across the examples of that row: more attention work, the same GEMMs.
dynamic_pad = not manifest.get("template", {}).get("packing", True)
layout = os.environ.get("LAYOUT", "padded") if dynamic_pad else "packed"

def batch(i):
    rows = [(i * bs + b) % R for b in range(bs)]
    labels = np.full((bs, T), -100, np.int64)
    labels[:, 1:] = tgt[rows, :-1]
    real = sum(real_tokens(r) for r in rows)
    if layout == "flat":
        cat = lambda x: np.concatenate([x[k, :real_tokens(r)] for k, r in enumerate(rows)])[None]
        lab = np.concatenate([np.r_[-100, tgt[r, :real_tokens(r) - 1]] for r in rows])[None]
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to("cuda", torch.long)
        return t(cat(tok[rows])), t(cat(pos[rows])), t(lab), real
    L = max(real_tokens(r) for r in rows) if dynamic_pad else T
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x[:, :L])).to("cuda", torch.long)
    return t(tok[rows]), t(pos[rows]), t(labels), real

def step(i):
    ids, position_ids, labels, real = batch(i)
    loss = model(input_ids=ids, position_ids=position_ids, labels=labels).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss, real

for i in range(warm): step(i)
torch.cuda.synchronize(); t = time.time(); real = 0
for i in range(warm, warm + timed):
    l, r = step(i); real += r
torch.cuda.synchronize(); dt = (time.time() - t) / timed
print(json.dumps(dict(name=f"unsloth-{layout}-bs{bs}-{T}-{'ckpt' if ck else 'nockpt'}", job=os.path.basename(job_dir.rstrip('/')),
    bs=bs, seq=int(T), ckpt=ck, step_s=dt, row_tokens_per_s=bs * int(T) / dt, real_tokens_per_s=real / timed / dt,
    peak_alloc_gib=torch.cuda.max_memory_allocated() / 2**30, peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
    load_peak_gib=load_peak, load_s=load_s, loss=float(l), unsloth=unsloth.__version__, torch=torch.__version__,
    transformers=transformers.__version__, peft=peft.__version__)), flush=True)
