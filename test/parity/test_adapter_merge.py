"""Our adapter in PEFT, and our merged model in transformers.

For every train case, the adapter the ENGINE trained is:
  * loaded by PEFT (PeftModel.from_pretrained): its loss on held-out rows equals the engine's forward loss
    (an engine train job with lr 0, one step, on those rows) within 1e-5 relative, and greedy generation with
    the adapter gives the same token ids in both;
  * merged by the engine (`merge` job, f32): transformers loads the folder, and its logits equal the PEFT model's
    (base + our adapter) within 1e-4 max abs and PEFT's own merge_and_unload within 1e-4 max abs; the merged
    tensors equal merge_and_unload's within 1e-6 max abs and every other tensor is bit-identical;
  * merged to bf16: every tensor is the round-to-nearest-even bf16 of the fp32 merge (1 bf16 ulp allowed,
    in at most 0.1% of the values, for fp32 sums that land next to a rounding boundary).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import reference as R
from conftest import engine_trained, job_for

LOSS_RTOL = 1e-5
LOGITS_ATOL = 1e-4
MERGED_W_ATOL = 1e-6


def merged_state(folder, as_f32=True):
    """All tensors of an HF folder (torch tensors; as_f32: upcast to float32 numpy, exact for bf16/f16)."""
    from safetensors.torch import load_file as load_torch
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_torch(str(f)))
    if as_f32:
        return {k: (v.float().numpy(), v.dtype) for k, v in out.items()}
    return out


def peft_merged_state(p, adapter_dir):
    merged = R.load_peft(p.base, adapter_dir).merge_and_unload()
    return merged, {k: v.detach().numpy() for k, v in merged.state_dict().items()}


def test_peft_loss_with_engine_adapter_equals_engine_forward(engine, prepared):
    adapter, _ = engine_trained(prepared)
    tok, tgt, pos = R.read_shard(prepared.eval_shard)
    want = R.forward_loss(R.load_peft(prepared.base, adapter), tok, tgt, pos)
    job = job_for(prepared, prepared.work / "lr0-out", init_adapter=adapter, lr=0.0, steps=1, warmup_steps=0,
                  batch_size=len(tok), grad_accum=1, weight_decay=0.0)
    job["train_shards"] = [str(prepared.eval_shard)]
    events = R.run_engine("train", job, prepared.work / "lr0.json")
    got = [e for e in events if e.get("event") == "step"][0]["loss"]
    print(f"\n[{prepared.case.name}] PEFT(base+engine adapter) loss {want:.7f}, engine {got:.7f}")
    assert abs(got - want) <= LOSS_RTOL * want, (got, want)


@pytest.mark.parametrize("stop_ids", [[2], []], ids=["stop-eos", "no-stop"])
def test_generate_with_engine_adapter_matches_peft(engine, prepared, stop_ids):
    adapter, _ = engine_trained(prepared)
    tok, _, pos = R.read_shard(prepared.eval_shard)
    end = int(np.argmax(pos[0][1:] == 0)) + 1 if (pos[0][1:] == 0).any() else len(pos[0])
    prompt = tok[0][: max(2, end // 2)].tolist()
    want = R.greedy_generate(R.load_peft(prepared.base, adapter), prompt, 24, stop_ids)
    if not stop_ids:
        assert len(want) == 24
    events = R.run_engine("generate", {
        "command": "generate", "model": str(prepared.base), "adapter": str(adapter), "prompt_ids": prompt,
        "max_new_tokens": 24, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop_ids": stop_ids,
        "backend": "cpu", "threads": 2}, prepared.work / "gen.json")
    got = [e for e in events if e.get("event") == "done"][-1]["summary"]["ids"]
    assert got == want, (prompt, got, want)


def test_merge_f32_loads_in_transformers_and_matches_peft(engine, prepared):
    adapter, _ = engine_trained(prepared)
    out = prepared.work / "merged-f32"
    R.run_engine("merge", {"command": "merge", "base": str(prepared.base), "adapter": str(adapter), "dtype": "f32",
                           "out": str(out)}, prepared.work / "merge-f32.json")
    from transformers import AutoModelForCausalLM
    ours, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager",
                                                      output_loading_info=True)
    ours.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    tok, _, pos = R.read_shard(prepared.eval_shard)
    with torch.no_grad():
        peft_model = R.load_peft(prepared.base, adapter)
        want = R.forward_logits(peft_model, tok, pos)
        got = R.forward_logits(ours, tok, pos)
        merged_model, merged_sd = peft_merged_state(prepared, adapter)
        merged_logits = R.forward_logits(merged_model, tok, pos)
    d_peft = float((got - want).abs().max())
    d_mu = float((got - merged_logits).abs().max())
    print(f"\n[{prepared.case.name}] merged logits vs PEFT {d_peft:.3e}, vs merge_and_unload {d_mu:.3e}")
    assert d_peft <= LOGITS_ATOL and d_mu <= LOGITS_ATOL, (d_peft, d_mu)
    # the adapter must matter, or the comparison proves nothing
    base_logits = R.forward_logits(R.load_model(prepared.base), tok, pos)
    assert float((base_logits - want).abs().max()) > 100 * LOGITS_ATOL

    ours_sd = merged_state(out)
    base_sd = merged_state(prepared.base)
    assert set(ours_sd) == set(base_sd), sorted(set(ours_sd) ^ set(base_sd))
    lora_targets = set(prepared.case.targets)
    for name, (w, dtype) in ours_sd.items():
        assert dtype == torch.float32, (name, dtype)
        if any(f".{t}.weight" in name for t in lora_targets):
            d = float(np.abs(w - merged_sd[name]).max())
            assert d <= MERGED_W_ATOL, (name, d)
        else:
            assert np.array_equal(w, base_sd[name][0]), f"{name} changed by merge"
    # "sharded like the base" (protocol): same shard files, same index
    base_files = sorted(f.name for f in prepared.base.glob("*.safetensors"))
    assert sorted(f.name for f in out.glob("*.safetensors")) == base_files
    if (prepared.base / "model.safetensors.index.json").exists():
        want_map = json.loads((prepared.base / "model.safetensors.index.json").read_text())["weight_map"]
        got_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
        assert got_map == want_map
    cfg_base = json.loads((prepared.base / "config.json").read_text())
    cfg_ours = json.loads((out / "config.json").read_text())
    for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "tie_word_embeddings", "head_dim", "rope_theta", "rope_parameters", "rope_scaling"):
        assert cfg_ours.get(k) == cfg_base.get(k), k


def half_bits(x: np.ndarray, dtype) -> np.ndarray:
    """fp32 -> bf16/f16 bits with round-to-nearest-even (torch's .to(dtype)), as int32 for ulp differences."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dtype)
    return t.view(torch.int16).numpy().astype(np.int32)


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
def test_merge_half_rounds_like_torch(engine, prepared, dtype):
    adapter, _ = engine_trained(prepared)
    tdtype, hf_name = {"bf16": (torch.bfloat16, "bfloat16"), "f16": (torch.float16, "float16")}[dtype]
    out = prepared.work / f"merged-{dtype}"
    R.run_engine("merge", {"command": "merge", "base": str(prepared.base), "adapter": str(adapter),
                           "dtype": dtype, "out": str(out)}, prepared.work / f"merge-{dtype}.json")
    cfg = json.loads((out / "config.json").read_text())
    for key in ("torch_dtype", "dtype"):
        assert cfg.get(key, hf_name) == hf_name, (key, cfg.get(key))
    assert "torch_dtype" in cfg or "dtype" in cfg
    ours = merged_state(out, as_f32=False)
    _, merged_sd = peft_merged_state(prepared, adapter)
    n_total, n_off = 0, 0
    for name, want32 in merged_sd.items():
        if name not in ours:
            assert name == "lm_head.weight" and cfg.get("tie_word_embeddings"), name
            continue
        got = ours[name]
        assert got.dtype == tdtype, (name, got.dtype)
        ulps = np.abs(got.view(torch.int16).numpy().astype(np.int32) - half_bits(want32, tdtype))
        assert ulps.max() <= 1, (name, int(ulps.max()))
        n_total += ulps.size
        n_off += int((ulps > 0).sum())
    assert n_off <= 1e-3 * n_total, (n_off, n_total)
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(str(out), dtype=tdtype)
    assert next(m.parameters()).dtype == tdtype
