"""Train parity: the engine's `train` job equals PyTorch + transformers + PEFT step for step.

Both sides start from the same PEFT adapter (saved by save_pretrained, given to the engine as lora.init_adapter),
read the same packed shard in file order, and use the same AdamW / schedule / clipping / accumulation in fp32.

Tolerances (not to be loosened to make a failing engine pass; see FINDINGS.md):
  * loss at every step: |engine - torch| <= 1e-5 * |torch|     (relative)
  * lr at every step:   relative 1e-6;  grad_norm (before clipping): relative 1e-4
  * final adapter: every tensor max |engine - torch| <= 1e-4  (max ABSOLUTE difference)
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import reference as R
from conftest import engine_trained, torch_trained

LOSS_RTOL = 1e-5
LR_RTOL = 1e-6
GRAD_NORM_RTOL = 1e-4
ADAPTER_ATOL = 1e-4


def test_losses_match_every_step(engine, prepared):
    _, eng = engine_trained(prepared)
    _, ref = torch_trained(prepared)
    assert len(eng) == prepared.case.steps, f"engine emitted {len(eng)} step events"
    rows = []
    worst = 0.0
    for e, t in zip(eng, ref):
        assert e["step"] == t["step"]
        rel = abs(e["loss"] - t["loss"]) / abs(t["loss"])
        worst = max(worst, rel)
        rows.append(f"step {t['step']:2d} torch {t['loss']:.7f} engine {e['loss']:.7f} rel {rel:.2e}")
    print(f"\n[{prepared.case.name}] worst loss rel diff {worst:.3e}\n" + "\n".join(rows))
    assert worst <= LOSS_RTOL, "\n".join(rows)
    # the comparison must not be vacuous: the adapter learns the repeated rows
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.05, (ref[0]["loss"], ref[-1]["loss"])


def test_lr_and_grad_norm_match_every_step(engine, prepared):
    _, eng = engine_trained(prepared)
    _, ref = torch_trained(prepared)
    for e, t in zip(eng, ref):
        assert abs(e["lr"] - t["lr"]) <= LR_RTOL * max(abs(t["lr"]), 1e-12), (t["step"], e["lr"], t["lr"])
        assert abs(e["grad_norm"] - t["grad_norm"]) <= GRAD_NORM_RTOL * t["grad_norm"], \
            (t["step"], e["grad_norm"], t["grad_norm"])


def test_eval_losses_match(engine, prepared):
    """`eval` events (every 10 steps and at the end, on the held-out shard) equal the torch eval loss."""
    engine_trained(prepared)
    torch_trained(prepared)
    eng, ref = prepared.cache["engine_evals"], prepared.cache["torch_evals"]
    assert [e["step"] for e in eng] == [t["step"] for t in ref] == [10, 20]
    for e, t in zip(eng, ref):
        assert abs(e["loss"] - t["loss"]) <= LOSS_RTOL * t["loss"], (e, t)


def test_final_adapter_matches(engine, prepared):
    eng_dir, _ = engine_trained(prepared)
    ref_dir, _ = torch_trained(prepared)
    eng = R.load_adapter_tensors(eng_dir)
    ref = R.load_adapter_tensors(ref_dir)
    init = R.load_adapter_tensors(prepared.init_adapter)
    assert sorted(eng) == sorted(ref), (sorted(set(eng) ^ set(ref)))[:10]
    worst_name, worst, moved = "", 0.0, 0.0
    for name, t in ref.items():
        e = eng[name]
        assert e.dtype == np.float32 and e.shape == t.shape, (name, e.dtype, e.shape, t.shape)
        d = float(np.abs(e - t).max())
        if d > worst:
            worst_name, worst = name, d
        moved = max(moved, float(np.abs(t - init[name]).max()))
    print(f"\n[{prepared.case.name}] final adapter max abs diff {worst:.3e} ({worst_name}); "
          f"max change from init {moved:.3e}")
    assert worst <= ADAPTER_ATOL, (worst_name, worst)
    assert moved > 100 * ADAPTER_ATOL, "training barely moved the adapter; the comparison would be vacuous"


def test_adapter_config_is_peft(engine, prepared):
    eng_dir, _ = engine_trained(prepared)
    cfg = json.loads((eng_dir / "adapter_config.json").read_text())
    c = prepared.case
    assert cfg["peft_type"] == "LORA"
    assert cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == c.r and float(cfg["lora_alpha"]) == float(c.alpha)
    assert bool(cfg.get("use_rslora", False)) == c.rslora
    assert sorted(cfg["target_modules"]) == sorted(c.targets)
    assert cfg.get("fan_in_fan_out", False) is False
    assert cfg.get("bias", "none") == "none"
    # metrics.jsonl: one line per step event, same losses as the stdout events
    metrics = [json.loads(l) for l in (eng_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    steps = [m for m in metrics if m.get("event", "step") == "step" and "grad_norm" in m]
    _, eng = engine_trained(prepared)
    assert [m["loss"] for m in steps] == [e["loss"] for e in eng]


def test_gradient_checkpointing_gives_the_same_training(engine, workdir):
    """train.gradient_checkpointing recomputes layers in backward: the result must still equal torch's."""
    from conftest import CASES_BY_NAME, prepare, job_for
    p = prepare(CASES_BY_NAME["llama-gqa-tied"], workdir)
    _, ref = torch_trained(p)
    job = job_for(p, p.work / "engine-ckpt")
    job["train"]["gradient_checkpointing"] = True
    eng = [e for e in R.run_engine("train", job, p.work / "ckpt.json") if e.get("event") == "step"]
    worst = max(abs(e["loss"] - t["loss"]) / t["loss"] for e, t in zip(eng, ref))
    assert len(eng) == len(ref) and worst <= LOSS_RTOL, worst
    eng_a, ref_a = R.load_adapter_tensors(p.work / "engine-ckpt"), R.load_adapter_tensors(torch_trained(p)[0])
    assert max(float(np.abs(eng_a[k] - ref_a[k]).max()) for k in ref_a) <= ADAPTER_ATOL


@pytest.mark.parametrize("case_name", ["llama-gqa-tied", "qwen2-bias-randomB"])
def test_qlora_nf4_training_matches_bitsandbytes_base(engine, workdir, case_name):
    """quantize_base "nf4" (QLoRA): the engine trains on the NF4 base exactly as torch + PEFT train on the base
    whose projections went through bitsandbytes' quantize_4bit/dequantize_4bit (nf4, blocksize 64)."""
    from conftest import CASES_BY_NAME, prepare, job_for
    p = prepare(CASES_BY_NAME[case_name], workdir)
    job = job_for(p, p.work / "engine-qlora")
    job["quantize_base"] = "nf4"
    events = R.run_engine("train", job, p.work / "qlora.json")
    eng = [e for e in events if e.get("event") == "step"]
    ref_job = job_for(p, p.work / "torch-qlora")
    ref_job["quantize_base"] = "nf4"
    recs = R.reference_train(ref_job)
    ref = [r for r in recs if r["event"] == "step"]
    _, plain = torch_trained(p)
    # NF4 must matter by far more than the tolerance, or this would only repeat the fp32 test
    nf4_effect = max(abs(t["loss"] - q["loss"]) / q["loss"] for t, q in zip(ref, plain))
    assert nf4_effect > 10 * LOSS_RTOL, nf4_effect
    worst = max(abs(e["loss"] - t["loss"]) / t["loss"] for e, t in zip(eng, ref))
    print(f"\n[{case_name} qlora] worst loss rel diff {worst:.3e} (NF4 vs fp32 base: {nf4_effect:.2e})")
    assert len(eng) == len(ref) and worst <= LOSS_RTOL, worst
    ea, ta = R.load_adapter_tensors(p.work / "engine-qlora"), R.load_adapter_tensors(p.work / "torch-qlora")
    d = max(float(np.abs(ea[k] - ta[k]).max()) for k in ta)
    print(f"[{case_name} qlora] final adapter max abs diff {d:.3e}")
    assert d <= ADAPTER_ATOL, d


def test_resume_from_checkpoint_matches_uninterrupted_torch(engine, workdir):
    """save_every 10, then a run that "died" after step 10 (newer checkpoint and outputs removed) is resumed:
    steps 11..20 and the final adapter equal torch's uninterrupted 20-step run."""
    import shutil
    from conftest import CASES_BY_NAME, prepare, job_for
    p = prepare(CASES_BY_NAME["llama-mha-llama3-rslora"], workdir)
    _, ref = torch_trained(p)
    out = p.work / "engine-resume"
    job = job_for(p, out)
    job["train"]["save_every"] = 10
    R.run_engine("train", job, p.work / "resume-1.json")
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts][:1] == ["step-10"], [c.name for c in ckpts]
    for c in ckpts[1:]:
        shutil.rmtree(c)
    for f in ("adapter_model.safetensors", "adapter_config.json", "summary.json"):
        (out / f).unlink(missing_ok=True)
    job["train"]["resume"] = True
    events = R.run_engine("train", job, p.work / "resume-2.json")
    eng = [e for e in events if e.get("event") == "step"]
    assert [e["step"] for e in eng] == list(range(11, 21))
    worst = max(abs(e["loss"] - t["loss"]) / t["loss"] for e, t in zip(eng, ref[10:]))
    assert worst <= LOSS_RTOL, worst
    ea, ta = R.load_adapter_tensors(out), R.load_adapter_tensors(torch_trained(p)[0])
    assert max(float(np.abs(ea[k] - ta[k]).max()) for k in ta) <= ADAPTER_ATOL
