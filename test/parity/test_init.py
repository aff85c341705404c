"""`finetune-engine init` writes an HF folder that transformers loads with no missing/unexpected keys, the same
config, the tokenizer files copied verbatim, transformers' init conventions (norm weights 1, or 0 for gemma's
(1 + w); biases 0; matrices ~ N(0, initializer_range)), and the same bytes for the same seed."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reference as R


def run_init(tmp_path, arch, seed, dtype="f32", name=None):
    cfg_path = tmp_path / f"{arch}-config.json"
    cfg = json.loads(R.tiny_config(arch).to_json_string())  # what save_pretrained writes
    cfg_path.write_text(json.dumps(cfg, indent=2))
    out = tmp_path / (name or f"{arch}-{seed}-{dtype}")
    R.run_engine("init", {"command": "init", "config": str(cfg_path), "seed": seed, "dtype": dtype, "out": str(out),
                          "tokenizer_files": [str(R.STORIES_HF / "tokenizer.json"),
                                              str(R.STORIES_HF / "tokenizer_config.json")]},
                 tmp_path / f"init-{arch}-{seed}-{dtype}.json")
    return cfg_path, out


@pytest.mark.parametrize("arch", ["llama-gqa-tied", "llama-mha-llama3", "qwen2-bias", "gemma", "mistral"])
def test_init_loads_in_transformers(engine, tmp_path, arch):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg_path, out = run_init(tmp_path, arch, seed=0)
    model, info = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    want = AutoConfig.from_pretrained(str(cfg_path)).to_dict()
    got = AutoConfig.from_pretrained(str(out)).to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype", "_name_or_path"):
        want.pop(k, None); got.pop(k, None)
    assert got == want
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / f).read_bytes() == (R.STORIES_HF / f).read_bytes(), f
    rng = R.tiny_config(arch).initializer_range
    norm_value = 0.0 if R.TINY_ARCHS[arch][0] == "gemma" else 1.0
    for name, p in model.named_parameters():
        w = p.detach().numpy()
        assert np.isfinite(w).all(), name
        if "norm" in name:
            assert (w == norm_value).all(), (name, w[:4])
        elif name.endswith(".bias"):
            assert (w == 0).all(), name
        else:
            assert 0.7 * rng < w.std() < 1.3 * rng and abs(w.mean()) < 0.2 * rng, (name, w.mean(), w.std())
    tok, tgt, pos = R.make_training_rows(R.TINY_ARCHS[arch][1]["vocab_size"], 16, 2, seed=0)
    with torch.no_grad():
        assert torch.isfinite(R.forward_logits(model, tok, pos)).all()


def test_init_is_deterministic_and_seeded(engine, tmp_path):
    _, a = run_init(tmp_path, "llama-gqa-tied", seed=0, name="a")
    _, b = run_init(tmp_path, "llama-gqa-tied", seed=0, name="b")
    _, c = run_init(tmp_path, "llama-gqa-tied", seed=1, name="c")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_init_bf16_loads(engine, tmp_path):
    from transformers import AutoModelForCausalLM
    _, out = run_init(tmp_path, "qwen2-bias", seed=0, dtype="bf16")
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    model, info = AutoModelForCausalLM.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
