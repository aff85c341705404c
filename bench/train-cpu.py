"""Training throughput on CPU, 2 threads: finetune-engine vs PyTorch + transformers + PEFT, in the same run.

    /work/pyenv/bin/python bench/train-cpu.py [--steps 12] [--warmup 2] [--threads 2]

Same model, same shard (TinyStories text packed into rows), same batch / seq / LoRA (all seven targets), fp32,
AdamW, linear schedule, clipping 1.0 on both sides. tokens/s = B*T*GA tokens per optimizer step, over the steps after
`--warmup` (timed from the step events' elapsed_s on both sides, so model loading is excluded).
Models: stories260K-hf (../shared/fixtures) and the demo recipe's base (recipes/demo/base/config.json, random init
with transformers, seed 0). The engine is $NXFT_ENGINE or native/build/finetune-engine.
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds other scripts (none today; bench/tokenize.py once did) that would shadow stdlib modules for everything imported below
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import os

# torch's OpenMP threads spin-wait by default; on a shared box with more runnable threads than cores this collapses
# torch's 2-thread throughput by 5-10x (measured here: 235-480 tok/s active vs 2700-3400 passive on stories260K at
# load average 8 on 2 cores). Use passive waiting when the machine is oversubscribed, so torch is not undersold.
LOAD_AT_START = os.getloadavg()[0]
if "OMP_WAIT_POLICY" not in os.environ and LOAD_AT_START > (os.cpu_count() or 1):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse
import json
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test" / "parity"))
import reference as R  # noqa: E402

import torch  # noqa: E402


def steady_tokens_per_s(steps: list[dict], warmup: int, tokens_per_step: int) -> float:
    """Tokens/s over steps warmup+1..N using the cumulative elapsed_s of the step events. Tokens are counted as
    B*T*GA per step on both sides (padding included), whatever each side's own `tokens` field counts."""
    if len(steps) <= warmup + 1:
        warmup = 0
    t0 = steps[warmup - 1]["elapsed_s"] if warmup > 0 else 0.0
    return tokens_per_step * (len(steps) - warmup) / (steps[-1]["elapsed_s"] - t0)


def demo_base(work: Path) -> Path:
    cfg_path = REPO / "recipes" / "demo" / "base" / "config.json"
    from transformers import AutoConfig, AutoModelForCausalLM
    out = work / "demo-base"
    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(str(cfg_path.parent))
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    return out


def bench_one(name: str, base: Path, work: Path, *, seq_len: int, batch: int, r: int, alpha: float, steps: int,
              warmup: int, threads: int, repeat: int) -> dict:
    docs = R.text_documents_stories(n_docs=4000, seed=0, max_tokens=seq_len)
    tok, tgt, pos = R.pack_documents(docs, seq_len)
    n_rows = steps * batch
    assert len(tok) >= n_rows, f"need {n_rows} rows, have {len(tok)}"
    shard = R.write_shard(work / f"{name}.tokens.bin", tok[:n_rows], tgt[:n_rows], pos[:n_rows])
    # both sides start from the same PEFT adapter, so the final losses are comparable too
    init = R.make_peft_adapter(base, work / f"{name}-init", r, alpha, R.LORA_TARGETS_ALL, seed=0)
    common = dict(r=r, alpha=alpha, targets=R.LORA_TARGETS_ALL, init_adapter=init, lr=1e-3, steps=steps,
                  batch_size=batch, grad_accum=1, threads=threads)
    torch.set_num_threads(threads)
    eng_tps, ref_tps = [], []
    for rep in range(repeat):   # interleaved repeats; the best of each side is reported (shared, noisy machines)
        job = R.train_job(base, [shard], work / f"{name}-engine", **common)
        events = R.run_engine("train", job, work / f"{name}-engine.json", timeout=1800)
        eng_steps = [e for e in events if e.get("event") == "step"]
        done = [e for e in events if e.get("event") == "done"][-1]["summary"]
        eng_tps.append(steady_tokens_per_s(eng_steps, warmup, batch * seq_len))
        job = R.train_job(base, [shard], work / f"{name}-torch", **common)
        ref_steps = R.reference_train(job, write_out=False, threads=threads, attn="sdpa")
        ref_tps.append(steady_tokens_per_s(ref_steps, warmup, batch * seq_len))
    return {
        "model": name, "B×T": f"{batch}×{seq_len}", "r": r,
        "engine_tok_s": max(eng_tps), "engine_runs": eng_tps, "engine_reported_tok_s": done.get("tokens_per_s"),
        "torch_tok_s": max(ref_tps), "torch_runs": ref_tps,
        "engine_peak_mb": (done.get("peak_memory_bytes") or 0) / 2**20,
        "loss_engine": eng_steps[-1]["loss"], "loss_torch": ref_steps[-1]["loss"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs per side; the best is reported")
    ap.add_argument("--json", help="also write the rows as JSON here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-train-cpu-") as tmp:
        work = Path(tmp)
        rows = [
            bench_one("stories260K", R.STORIES_HF, work, seq_len=256, batch=4, r=8, alpha=16, steps=a.steps,
                      warmup=a.warmup, threads=a.threads, repeat=a.repeat),
            bench_one("demo (4L h128)", demo_base(work), work, seq_len=64, batch=8, r=16, alpha=32, steps=a.steps,
                      warmup=a.warmup, threads=a.threads, repeat=a.repeat),
        ]
    print(f"\ntraining throughput, CPU, {a.threads} threads, fp32, LoRA on all 7 projections, "
          f"{a.steps} steps (first {a.warmup} not timed), best of {a.repeat}; "
          f"torch {torch.__version__} sdpa attention")
    print(f"load average at start {LOAD_AT_START:.1f}, at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"torch OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default (active)')}")
    print("(all runs per side: " + "; ".join(
        f"{r['model']}: engine {', '.join(f'{x:.0f}' for x in r['engine_runs'])} / torch "
        f"{', '.join(f'{x:.0f}' for x in r['torch_runs'])}" for r in rows) + ")")
    hdr = f"{'model':<16} {'B×T':>7} {'r':>3} {'engine tok/s':>13} {'torch tok/s':>12} {'speedup':>8} " \
          f"{'engine peak MiB':>16} {'final loss eng/torch':>22}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['model']:<16} {r['B×T']:>7} {r['r']:>3} {r['engine_tok_s']:>13.0f} {r['torch_tok_s']:>12.0f} "
              f"{r['engine_tok_s'] / r['torch_tok_s']:>7.2f}x {r['engine_peak_mb']:>16.1f} "
              f"{r['loss_engine']:>10.4f}/{r['loss_torch']:<10.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
