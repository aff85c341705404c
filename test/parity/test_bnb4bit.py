"""Pre-quantized bitsandbytes 4-bit bases: checkpoints that transformers + bitsandbytes save on the CPU (nf4 and fp4,
with and without double quantization, quant_state dtype float32 and bfloat16) against the engine.

  * dequantization: the engine's merge of an all-zero adapter (f32 output) holds every 4-bit weight exactly as
    bitsandbytes dequantizes it (bit for bit), the other tensors unchanged;
  * training: the engine's QLoRA on the 4-bit base equals PEFT on transformers' Linear4bit model (real
    bitsandbytes matmul_4bit on the CPU) within the train-parity tolerances of test_train_parity.py;
  * merge: the merged model (dequantize, + s·B·A, 16/32-bit, no quantization_config) loads in transformers as a
    plain model with the logits of PEFT's merge on the dequantized base;
  * quantize_base "nf4" on a 16-bit base: the engine's codes and absmax equal bitsandbytes' quantize_4bit;
  * the committed fixture test/fixtures/bnb-nf4-tiny is what make_bnb_fixture.py (transformers + bitsandbytes)
    writes.

Architectures: "llama-mha-llama3" has rows of 64 and 128 values, so no 64-block spans two rows and bitsandbytes' CPU
dequantize kernel is right (the training reference uses it); "llama-gqa-tied" has 48-wide rows (blocks span rows):
dequantization is checked there against bitsandbytes' generic path (FINDINGS.md).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import reference as R
from conftest import base_model

LOSS_RTOL = 1e-5
ADAPTER_ATOL = 1e-4
LOGITS_ATOL = 1e-4

# (quant_type, double_quant, dtype at quantization)
VARIANTS = {
    "nf4-dq-f32": ("nf4", True, torch.float32),
    "nf4-f32": ("nf4", False, torch.float32),
    "fp4-dq-f32": ("fp4", True, torch.float32),
    "fp4-f32": ("fp4", False, torch.float32),
    "nf4-dq-bf16": ("nf4", True, torch.bfloat16),
}

_made: dict[str, Path] = {}


def bnb_base(arch: str, variant: str, workdir: Path) -> Path:
    key = f"{arch}-{variant}"
    if key not in _made:
        qt, dq, dtype = VARIANTS[variant]
        _made[key] = R.make_bnb4bit_model(base_model(arch, workdir), workdir / "bnb" / key, qt, dq, dtype)
    return _made[key]


def zero_adapter(base: Path, out: Path) -> Path:
    if not out.exists():
        R.make_peft_adapter(base, out, 4, 8, R.LORA_TARGETS_ALL, False, seed=3, random_b=False)
    return out


@pytest.mark.parametrize("arch,variant", [("llama-mha-llama3", v) for v in VARIANTS] +
                         [("llama-gqa-tied", "nf4-dq-f32"), ("llama-gqa-tied", "fp4-f32")])
def test_engine_dequantizes_exactly_like_bitsandbytes(engine, workdir, arch, variant):
    base = bnb_base(arch, variant, workdir)
    cfg = json.loads((base / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "bitsandbytes"
    out = workdir / "bnb" / f"{arch}-{variant}-deq"
    job = {"command": "merge", "base": str(base), "adapter": str(zero_adapter(base_model(arch, workdir), workdir / "bnb" / f"{arch}-zero")),
           "dtype": "f32", "out": str(out), "threads": 2}
    R.run_engine("merge", job, workdir / "bnb" / f"{arch}-{variant}-merge.json")
    merged = load_file(str(out / "model.safetensors"))
    assert not any(k.endswith(("absmax", "quant_map")) or "quant_state" in k for k in merged)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())

    qmodel = load_4bit(base)
    lin = R.bnb4bit_linear_modules(qmodel)
    assert len(lin) == 7 * qmodel.config.num_hidden_layers
    import bitsandbytes.functional as bnbf
    rows_64 = all(m.weight.quant_state.shape[-1] % 64 == 0 for m in lin.values())
    for name, mod in lin.items():
        ours = merged[name + ".weight"]
        ref = R.bnb4bit_dequantize(mod.weight).float()
        assert ours.dtype == torch.float32 and ours.shape == ref.shape, name
        assert torch.equal(ours, ref), f"{name}: {int((ours != ref).sum())} values differ, max {float((ours - ref).abs().max()):.3e}"
        if rows_64:   # bitsandbytes' public dequantize_4bit (its CPU kernel) where that kernel is right
            pub = bnbf.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
            assert torch.equal(ours, pub), name
    # the 4-bit weights are really 4-bit: far from the original fp32 weights, which the engine never saw
    orig = load_file(str(base_model(arch, workdir) / "model.safetensors"))
    w = "model.layers.0.mlp.up_proj.weight"
    assert float((merged[w] - orig[w]).abs().max()) > 1e-3
    for k, v in merged.items():   # unquantized tensors: unchanged (upcast exactly from bf16)
        if k[:-len(".weight")] not in lin and k in orig:
            assert torch.equal(v, orig[k].to(v.dtype if VARIANTS[variant][2] == torch.float32 else torch.bfloat16).float()), k


def load_4bit(base: Path):
    """transformers' own load of a pre-quantized checkpoint (Linear4bit modules, bitsandbytes quant states)."""
    return R.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)


TRAIN_VARIANTS = ["nf4-dq-f32", "fp4-f32", "nf4-dq-bf16"]
_trained: dict[str, tuple] = {}


def train_both(workdir: Path, variant: str):
    """(engine adapter dir, engine steps, torch adapter dir, torch steps, work dir) on llama-mha-llama3."""
    if variant in _trained:
        return _trained[variant]
    arch = "llama-mha-llama3"
    base = bnb_base(arch, variant, workdir)
    work = workdir / "bnb-train" / variant
    work.mkdir(parents=True, exist_ok=True)
    V = R.TINY_ARCHS[arch][1]["vocab_size"]
    tok, tgt, pos = R.make_training_rows(V, 32, 40, seed=1, n_distinct=8)
    shard = R.write_shard(work / "train-000.tokens.bin", tok, tgt, pos)
    init = R.make_peft_adapter(base_model(arch, workdir), work / "init", 8, 16, R.LORA_TARGETS_ALL, False, seed=3,
                               random_b=True)
    job = R.train_job(base, [shard], work / "engine", r=8, alpha=16, targets=R.LORA_TARGETS_ALL, init_adapter=init,
                      lr=3e-3, warmup_steps=2, grad_accum=2, steps=10)
    events = R.run_engine("train", job, work / "engine.json")
    start = next(e for e in events if e.get("event") == "start")
    assert start.get("base_4bit") == "bitsandbytes", start
    eng = [e for e in events if e.get("event") == "step"]
    ref_job = dict(job, out=str(work / "torch"))
    ref = [r for r in R.reference_train(ref_job) if r["event"] == "step"]
    plain_job = dict(job, base=str(base_model(arch, workdir)), out=str(work / "torch-fp32"))
    plain = [r for r in R.reference_train(plain_job) if r["event"] == "step"]
    _trained[variant] = (work / "engine", eng, work / "torch", ref, plain, work, base, init)
    return _trained[variant]


@pytest.mark.parametrize("variant", TRAIN_VARIANTS)
def test_qlora_on_prequantized_base_matches_peft_bitsandbytes(engine, workdir, variant):
    # the reference really trains through bitsandbytes' Linear4bit (load_model reads quantization_config)
    assert R.bnb4bit_linear_modules(load_4bit(bnb_base("llama-mha-llama3", variant, workdir)))
    eng_dir, eng, ref_dir, ref, plain, *_ = train_both(workdir, variant)
    assert len(eng) == len(ref) == 10
    effect = max(abs(t["loss"] - q["loss"]) / q["loss"] for t, q in zip(ref, plain))
    assert effect > 10 * LOSS_RTOL, effect   # 4-bit must matter far more than the tolerance
    worst = max(abs(e["loss"] - t["loss"]) / t["loss"] for e, t in zip(eng, ref))
    gn = max(abs(e["grad_norm"] - t["grad_norm"]) / t["grad_norm"] for e, t in zip(eng, ref))
    ea, ta = R.load_adapter_tensors(eng_dir), R.load_adapter_tensors(ref_dir)
    d = max(float(np.abs(ea[k] - ta[k]).max()) for k in ta)
    print(f"\n[bnb {variant}] loss worst rel {worst:.2e}, grad_norm worst rel {gn:.2e}, adapter max abs {d:.2e} "
          f"(4-bit vs fp32 base: {effect:.2e})")
    assert worst <= LOSS_RTOL and gn <= 1e-4 and d <= ADAPTER_ATOL, (worst, gn, d)


@pytest.mark.parametrize("variant", ["nf4-dq-f32", "nf4-dq-bf16"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_merged_prequantized_model_matches_peft_merge(engine, workdir, variant, dtype):
    """merge = dequantize like bitsandbytes, + s·B·A in fp32, stored 16/32-bit: transformers loads it as a plain
    model whose logits equal PEFT merge_and_unload on the dequantized base (f32: 1e-4; bf16: the bf16 rounding of
    the same merge, checked tensor by tensor)."""
    eng_dir, _, _, _, _, work, base, _ = train_both(workdir, variant)
    out = work / f"merged-{dtype}"
    R.run_engine("merge", {"command": "merge", "base": str(base), "adapter": str(eng_dir), "dtype": dtype,
                           "out": str(out), "threads": 2}, work / f"merge-{dtype}.json")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    deq = work / "dequantized-base"
    if not deq.exists():
        R.dequantized_base(base, deq)
    from peft import PeftModel
    ref = PeftModel.from_pretrained(R.load_model(deq), str(eng_dir)).merge_and_unload()
    ours = R.load_model(out)
    assert not R.bnb4bit_linear_modules(ours)
    ref_sd = ref.state_dict()
    merged = load_file(str(out / "model.safetensors"))
    for k, v in merged.items():   # f32: PEFT's merge exactly; bf16: its round-to-nearest-even
        want = ref_sd[k].to(torch.bfloat16) if dtype == "bf16" else ref_sd[k]
        assert v.dtype == want.dtype and torch.equal(v, want), (k, float((v.float() - want.float()).abs().max()))
    if dtype == "f32":
        V = ours.config.vocab_size
        tok, _, pos = R.make_training_rows(V, 32, 4, seed=5)
        with torch.no_grad():
            lo, lr = R.forward_logits(ours, tok, pos), R.forward_logits(ref, tok, pos)
        d = float((lo - lr).abs().max())
        print(f"\n[bnb {variant} merged f32] logits max abs diff {d:.2e}")
        assert d <= LOGITS_ATOL, d


def test_quantize_base_nf4_equals_bitsandbytes_quantize_4bit(engine, workdir):
    """quantize_base "nf4" on a 16-bit (here f32) base quantizes exactly like bitsandbytes' quantize_4bit (nf4,
    blocksize 64, no double quantization): QLoRA with quantize_base "nf4" on the base and QLoRA on the checkpoint
    that transformers + bitsandbytes quantized from the same base train bit-identically (any differing code or
    absmax would move a weight by at least one NF4 step)."""
    arch = "llama-gqa-tied"
    base = base_model(arch, workdir)
    q = bnb_base(arch, "nf4-f32", workdir)
    work = workdir / "bnb-quantize"
    work.mkdir(parents=True, exist_ok=True)
    V = R.TINY_ARCHS[arch][1]["vocab_size"]
    tok, tgt, pos = R.make_training_rows(V, 32, 16, seed=1, n_distinct=8)
    shard = R.write_shard(work / "train-000.tokens.bin", tok, tgt, pos)
    init = R.make_peft_adapter(base, work / "init", 8, 16, R.LORA_TARGETS_ALL, False, seed=3, random_b=True)
    runs = {}
    for name, b, quant in (("quantize", base, "nf4"), ("prequantized", q, None)):
        job = R.train_job(b, [shard], work / name, r=8, alpha=16, targets=R.LORA_TARGETS_ALL, init_adapter=init,
                          steps=8)
        job["quantize_base"] = quant
        runs[name] = [e["loss"] for e in R.run_engine("train", job, work / f"{name}.json") if e.get("event") == "step"]
    assert runs["quantize"] == runs["prequantized"], runs
    ea, eb = R.load_adapter_tensors(work / "quantize"), R.load_adapter_tensors(work / "prequantized")
    assert all(np.array_equal(ea[k], eb[k]) for k in ea)


def test_committed_fixture_is_what_transformers_bitsandbytes_save(workdir):
    import make_bnb_fixture as F
    fresh = F.make_fixture(workdir / "bnb-fixture")
    want, got = load_file(str(fresh / "model.safetensors")), load_file(str(F.FIXTURE / "model.safetensors"))
    assert sorted(want) == sorted(got)
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k
    cw, cg = json.loads((fresh / "config.json").read_text()), json.loads((F.FIXTURE / "config.json").read_text())
    cw.pop("transformers_version", None), cg.pop("transformers_version", None)
    assert cw == cg


@pytest.mark.parametrize("save_dtype", ["f32", "bf16"])
def test_quantize_command_writes_what_bitsandbytes_quantize_4bit_computes(engine, workdir, save_dtype):
    """`finetune-engine quantize` (streaming, multi-threaded) on a 16/32-bit base: packed codes and absmax equal
    bitsandbytes.functional.quantize_4bit (nf4, blocksize 64) bit for bit; with double quantization the nested map
    equals create_dynamic_map, the offset the mean of the absmax, nested absmax and codes bitsandbytes'
    quantize_blockwise (its torch kernel: nearest map value) of absmax − offset. transformers loads the result."""
    import bitsandbytes.functional as F
    base = base_model("llama-mha-llama3", workdir, save_dtype)
    orig = load_file(str(base / "model.safetensors"))
    for dq in (False, True):
        out = workdir / "bnb-quantize-cmd" / f"{save_dtype}-{int(dq)}"
        ev = R.run_engine("quantize", {"command": "quantize", "base": str(base), "out": str(out), "double_quant": dq,
                                       "threads": 2}, workdir / "bnb-quantize-cmd.json")
        assert ev[-1]["summary"]["quantized_params"] > 0
        ours = load_file(str(out / "model.safetensors"))
        cpu_kernel_diffs = 0
        for name in [k for k in orig if k.endswith("proj.weight")]:
            packed, st = F.quantize_4bit(orig[name], blocksize=64, quant_type="nf4", compress_statistics=False)
            assert torch.equal(packed.view(-1), ours[name].view(-1)), name
            assert torch.equal(st.code, ours[name + ".quant_map"])
            qs = json.loads(bytes(ours[name + ".quant_state.bitsandbytes__nf4"].tolist()).decode())
            assert qs["dtype"] == {"f32": "float32", "bf16": "bfloat16"}[save_dtype] and qs["shape"] == list(orig[name].shape)
            if not dq:
                assert torch.equal(st.absmax, ours[name + ".absmax"]), name
                continue
            _, st2 = F.quantize_4bit(orig[name], blocksize=64, quant_type="nf4", compress_statistics=True)
            assert torch.equal(st2.state2.code, ours[name + ".nested_quant_map"])
            offset = torch.tensor(qs["nested_offset"], dtype=torch.float32)
            # ours is the exactly rounded mean; torch's fp32 mean (cascade sum) may be a few ulps off it
            ulps = abs(float(offset) - float(st2.offset)) / float(np.spacing(np.float32(st2.offset)))
            assert ulps <= 4, (offset, st2.offset)
            x = st.absmax - offset
            absmax2 = x.view(-1, 256).abs().max(dim=1).values if x.numel() % 256 == 0 else None
            if absmax2 is None:
                absmax2 = torch.stack([c.abs().max() for c in x.split(256)])
            assert torch.equal(absmax2, ours[name + ".nested_absmax"]), name
            scaled = torch.clamp(x * (1 / absmax2.repeat_interleave(256)[: x.numel()]), -1, 1)
            nearest = torch.argmin((scaled.unsqueeze(-1) - st2.state2.code).abs(), dim=-1).to(torch.uint8)
            assert torch.equal(nearest, ours[name + ".absmax"]), name
            q_cpu, _ = F.quantize_blockwise(x, blocksize=256)   # bitsandbytes' CPU kernel: a LUT approximation
            cpu_kernel_diffs += int((q_cpu != nearest).sum())
        if dq:
            print(f"\n[quantize {save_dtype}] nested codes differing from bitsandbytes' CPU kernel: {cpu_kernel_diffs}")
        qmodel = load_4bit(out)
        assert len(R.bnb4bit_linear_modules(qmodel)) == 7 * qmodel.config.num_hidden_layers


def test_double_quant_training_equals_training_on_the_double_quantized_checkpoint(engine, workdir):
    """quantize_base "nf4" + double_quant on the base trains bit-identically to QLoRA on the checkpoint `quantize`
    wrote with double quantization (the same weights), and differently from quantize_base "nf4" without it."""
    arch = "llama-mha-llama3"
    base = base_model(arch, workdir)
    work = workdir / "bnb-dq-train"
    work.mkdir(parents=True, exist_ok=True)
    q = work / "bnb"
    R.run_engine("quantize", {"command": "quantize", "base": str(base), "out": str(q), "double_quant": True}, work / "q.json")
    V = R.TINY_ARCHS[arch][1]["vocab_size"]
    tok, tgt, pos = R.make_training_rows(V, 32, 16, seed=1, n_distinct=8)
    shard = R.write_shard(work / "train-000.tokens.bin", tok, tgt, pos)
    init = R.make_peft_adapter(base, work / "init", 8, 16, R.LORA_TARGETS_ALL, False, seed=3, random_b=True)
    runs = {}
    for name, b, quant, dq in (("dq", base, "nf4", True), ("checkpoint", q, None, False), ("no-dq", base, "nf4", False)):
        job = R.train_job(b, [shard], work / name, r=8, alpha=16, targets=R.LORA_TARGETS_ALL, init_adapter=init, steps=6)
        job["quantize_base"] = quant
        if dq:
            job["double_quant"] = True
        runs[name] = [e["loss"] for e in R.run_engine("train", job, work / f"{name}.json") if e.get("event") == "step"]
    assert runs["dq"] == runs["checkpoint"], runs
    assert runs["dq"] != runs["no-dq"]
