"""Shared fixtures for the parity tests: tiny models, shards, initial adapters and the trained adapters of both
sides, built once per session in a temp folder (each engine/torch training runs once and is reused by the
train, adapter, merge and generate tests)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as R  # noqa: E402


@dataclass(frozen=True)
class TrainCase:
    """One train-parity configuration. Rows: steps * batch_size * grad_accum (one pass, file order), of which
    `distinct` are different rows repeated cyclically so the loss falls."""
    name: str
    arch: str                      # key of R.TINY_ARCHS, or "stories260K"
    r: int
    alpha: float
    targets: tuple[str, ...]
    rslora: bool = False
    random_b: bool = False         # start from a non-zero B (LoRA active at step 1)
    lr: float = 3e-3
    schedule: str = "linear"
    warmup_steps: int = 0
    batch_size: int = 2
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seq_len: int = 32
    steps: int = 20
    distinct: int = 8
    split_shards: bool = False     # write the rows as two shard files (the engine must read them in list order)
    base_dtype: str = "f32"        # "bf16": the base checkpoint is stored in bf16 (both sides compute in fp32)
    sharded_base: bool = False     # base saved as several safetensors shards + index.json


ALL = tuple(R.LORA_TARGETS_ALL)

TRAIN_CASES = [
    TrainCase("llama-gqa-tied", "llama-gqa-tied", r=8, alpha=16, targets=ALL, warmup_steps=3, grad_accum=2,
              weight_decay=0.01),
    TrainCase("llama-mha-llama3-rslora", "llama-mha-llama3", r=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"),
              rslora=True, schedule="cosine", warmup_steps=2, max_grad_norm=0.5, beta2=0.99),
    TrainCase("qwen2-bias-randomB", "qwen2-bias", r=8, alpha=16, targets=ALL, random_b=True, batch_size=4,
              split_shards=True),
    TrainCase("llama-gqa-bf16base", "llama-gqa-tied", r=8, alpha=16, targets=("q_proj", "o_proj", "up_proj"),
              base_dtype="bf16", lr=2e-3),
    TrainCase("gemma", "gemma", r=4, alpha=4, targets=ALL, random_b=True, schedule="cosine", grad_accum=3,
              eps=1e-6),
    TrainCase("mistral-rslora", "mistral", r=16, alpha=32, targets=("q_proj", "v_proj", "gate_proj", "down_proj"),
              rslora=True, warmup_steps=5, batch_size=1, grad_accum=4, weight_decay=0.1, lr=2e-3, sharded_base=True),
    # long packed rows (T = 160, documents up to 80 tokens): multi-tile attention / matmul paths, RoPE at larger
    # positions, odd rank
    TrainCase("llama-odd-long", "llama-odd", r=6, alpha=12, targets=ALL, batch_size=3, seq_len=160, distinct=6,
              lr=2e-3, max_grad_norm=2.0),
    TrainCase("stories260K", "stories260K", r=8, alpha=16, targets=ALL, lr=2e-3, grad_accum=2, seq_len=64,
              max_grad_norm=1.0, weight_decay=0.01),
]
CASES_BY_NAME = {c.name: c for c in TRAIN_CASES}


@dataclass
class Prepared:
    case: TrainCase
    base: Path
    shards: list[Path]
    eval_shard: Path
    init_adapter: Path
    vocab_size: int
    work: Path
    cache: dict = field(default_factory=dict)


def vocab_of(arch: str) -> int:
    return 512 if arch == "stories260K" else R.TINY_ARCHS[arch][1]["vocab_size"]


@pytest.fixture(scope="session")
def engine() -> Path:
    exe = R.engine_path()
    assert exe.is_file(), (f"finetune-engine not found at {exe}: build it (cmake -S native -B native/build && "
                           f"cmake --build native/build) or set NXFT_ENGINE")
    return exe


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parity")


_bases: dict[str, Path] = {}


def base_model(arch: str, workdir: Path, dtype: str = "f32", sharded: bool = False) -> Path:
    """The HF folder for an arch (tiny models built once per session; stories260K is the fixture)."""
    if arch == "stories260K":
        assert R.STORIES_HF.is_dir(), f"fixture missing: {R.STORIES_HF}"
        return R.STORIES_HF
    key = f"{arch}-{dtype}" + ("-sharded" if sharded else "")
    if key not in _bases:
        import torch
        _bases[key] = R.make_model(arch, workdir / "models" / key, seed=0,
                                   save_dtype={"f32": torch.float32, "bf16": torch.bfloat16}[dtype],
                                   max_shard_size="60KB" if sharded else None)
        if sharded:
            assert len(list(_bases[key].glob("model-*.safetensors"))) >= 3, "base should be sharded"
    return _bases[key]


_prepared: dict[str, Prepared] = {}


def prepare(case: TrainCase, workdir: Path) -> Prepared:
    if case.name in _prepared:
        return _prepared[case.name]
    work = workdir / case.name
    work.mkdir(parents=True, exist_ok=True)
    base = base_model(case.arch, workdir, case.base_dtype, case.sharded_base)
    V = vocab_of(case.arch)
    n_rows = case.steps * case.batch_size * case.grad_accum
    if case.arch == "stories260K":
        # documents of at most ~half a row, so that rows hold several packed documents
        docs = R.text_documents_stories(n_docs=120, seed=0, max_tokens=case.seq_len // 2 - 2)
        tok, tgt, pos = R.pack_documents(docs, case.seq_len)
        assert len(tok) >= case.distinct + 4, len(tok)
        idx = [i % case.distinct for i in range(n_rows)]
        shard = R.write_shard(work / "train-000.tokens.bin", tok[idx], tgt[idx], pos[idx])
        eval_shard = R.write_shard(work / "eval-000.tokens.bin", tok[-4:], tgt[-4:], pos[-4:])
    else:
        tok, tgt, pos = R.make_training_rows(V, case.seq_len, n_rows, seed=1, n_distinct=case.distinct)
        if case.split_shards:   # 28 + 52 rows: a batch straddles the file boundary
            cut = 28
            shard = R.write_shard(work / "train-000.tokens.bin", tok[:cut], tgt[:cut], pos[:cut])
            R.write_shard(work / "train-001.tokens.bin", tok[cut:], tgt[cut:], pos[cut:])
        else:
            shard = R.write_shard(work / "train-000.tokens.bin", tok, tgt, pos)
        etok, etgt, epos = R.make_training_rows(V, case.seq_len, 4, seed=2)
        eval_shard = R.write_shard(work / "eval-000.tokens.bin", etok, etgt, epos)
    # packing must be exercised: most rows hold >= 2 documents with loss targets (plus maybe padding)
    shards = sorted(work.glob("train-*.tokens.bin"))
    tok, tgt, pos = R.load_rows(shards)
    assert len(tok) == n_rows or case.arch == "stories260K"
    docs_with_targets = [len({int(d) for d, t in zip(np.cumsum(pr == 0), tr) if t != -100}) for pr, tr in zip(pos, tgt)]
    assert sum(n >= 2 for n in docs_with_targets) >= len(tok) // 2, docs_with_targets
    init = R.make_peft_adapter(base, work / "init-adapter", case.r, case.alpha, list(case.targets), case.rslora,
                               seed=3, random_b=case.random_b)
    p = Prepared(case, base, shards, eval_shard, init, V, work)
    _prepared[case.name] = p
    return p


def job_for(p: Prepared, out: Path, **overrides) -> dict:
    c = p.case
    kw = dict(r=c.r, alpha=c.alpha, targets=list(c.targets), rslora=c.rslora, init_adapter=p.init_adapter,
              lr=c.lr, schedule=c.schedule, warmup_steps=c.warmup_steps, steps=c.steps, batch_size=c.batch_size,
              grad_accum=c.grad_accum, beta1=c.beta1, beta2=c.beta2, eps=c.eps, weight_decay=c.weight_decay,
              max_grad_norm=c.max_grad_norm)
    kw.update(overrides)
    job = R.train_job(p.base, p.shards, out, **kw)
    job["eval_shards"] = [str(p.eval_shard)]   # evaluated every 10 steps and at the end, on both sides
    job["train"]["eval_every"] = 10
    return job


def engine_trained(p: Prepared) -> tuple[Path, list[dict]]:
    """Runs the engine train job once; returns (adapter dir, step events)."""
    if "engine" not in p.cache:
        out = p.work / "engine-adapter"
        events = R.run_engine("train", job_for(p, out), p.work / "engine-train.json")
        p.cache["engine"] = (out, [e for e in events if e.get("event") == "step"], events)
        p.cache["engine_evals"] = [e for e in events if e.get("event") == "eval"]
    out, steps, _ = p.cache["engine"]
    return out, steps


def torch_trained(p: Prepared) -> tuple[Path, list[dict]]:
    if "torch" not in p.cache:
        out = p.work / "torch-adapter"
        recs = R.reference_train(job_for(p, out))
        p.cache["torch"] = (out, [r for r in recs if r["event"] == "step"])
        p.cache["torch_evals"] = [r for r in recs if r["event"] == "eval"]
    return p.cache["torch"]


@pytest.fixture(params=[c.name for c in TRAIN_CASES])
def prepared(request, workdir) -> Prepared:
    return prepare(CASES_BY_NAME[request.param], workdir)
