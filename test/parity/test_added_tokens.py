"""Tokens added to the vocabulary (template.add_special_tokens): the engine's `lora.trainable_token_indices`.

Two new tokens V and V+1 (beyond the base's vocab_size V) frame every document, as <|im_start|> / <|im_end|> would
on a base without ChatML. For a tied head (llama-gqa-tied, gemma: embedding scale) and an untied one (qwen2-bias):
  * training: the engine grows embed_tokens (and lm_head) by two rows set to the mean of the old rows and trains
    them with the LoRA; torch + PEFT (LoraConfig(trainable_token_indices=…) on the same grown base) gives the same
    loss and grad norm every step (1e-5 / 1e-4 relative) and the same final adapter, token rows included (1e-4);
  * the adapter is PEFT's format: PEFT loads it into the resized base and its loss on held-out rows equals the
    engine's `eval` of base + adapter (1e-5 relative);
  * the engine's merge writes a (V+2)-row model that transformers loads with config vocab_size V+2; its logits
    equal PEFT's (base + our adapter) within 1e-4, and its new rows are the adapter's.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import reference as R
from conftest import base_model

LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
ADAPTER_ATOL = 1e-4
LOGITS_ATOL = 1e-4
CASES = ["llama-gqa-tied", "qwen2-bias", "gemma"]
STEPS = 12


def framed_rows(vocab: int, seed: int, n_rows: int, seq_len: int = 32):
    """Documents [V, bos, prompt…, completion…, eos, V+1]: the new tokens are inputs and (V+1) a target."""
    docs = [([vocab] + ids + [vocab + 1], n_prompt + 1)
            for ids, n_prompt in R.random_documents(vocab, n_docs=n_rows * 4, seed=seed, max_len=10)]
    tok, tgt, pos = R.pack_documents(docs, seq_len)
    assert len(tok) >= n_rows
    return tok[:n_rows], tgt[:n_rows], pos[:n_rows]


_prepared: dict[str, dict] = {}


def prepare(arch: str, workdir):
    if arch in _prepared:
        return _prepared[arch]
    work = workdir / f"added-tokens-{arch}"
    work.mkdir(parents=True, exist_ok=True)
    base = base_model(arch, workdir)
    V = R.tiny_config(arch).vocab_size
    train = R.write_shard(work / "train.tokens.bin", *framed_rows(V, 1, 8))
    held = R.write_shard(work / "eval.tokens.bin", *framed_rows(V, 2, 4))
    targets = ["q_proj", "v_proj", "down_proj"]
    init = R.make_peft_adapter(base, work / "init", r=4, alpha=8, targets=targets, random_b=True)
    job = R.train_job(base, [train], work / "engine", r=4, alpha=8, targets=targets, init_adapter=init, lr=1e-2,
                      steps=STEPS, batch_size=2, weight_decay=0.01)
    job["lora"]["trainable_token_indices"] = [V, V + 1]
    eng = [e for e in R.run_engine("train", job, work / "train.json") if e.get("event") == "step"]
    ref_job = json.loads(json.dumps(job))
    ref_job["out"] = str(work / "torch")
    ref = [e for e in R.reference_train(ref_job, threads=2) if e.get("event") == "step"]
    _prepared[arch] = dict(base=base, V=V, held=held, job=job, engine=eng, torch=ref, work=work)
    return _prepared[arch]


@pytest.mark.parametrize("arch", CASES)
def test_training_matches_peft_trainable_tokens(engine, workdir, arch):
    p = prepare(arch, workdir)
    assert len(p["engine"]) == len(p["torch"]) == STEPS
    for e, t in zip(p["engine"], p["torch"]):
        assert abs(e["loss"] - t["loss"]) <= LOSS_RTOL * t["loss"], (arch, e["step"], e["loss"], t["loss"])
        assert abs(e["grad_norm"] - t["grad_norm"]) <= GRAD_NORM_RTOL * t["grad_norm"], (arch, e["step"], e["grad_norm"], t["grad_norm"])
    ea = R.load_adapter_tensors(p["work"] / "engine")
    ta = R.load_adapter_tensors(p["work"] / "torch")
    assert sorted(ea) == sorted(ta), (sorted(set(ea) ^ set(ta)))
    deltas = [k for k in ta if k.endswith("token_adapter.trainable_tokens_delta")]
    tied = R.tiny_config(arch).tie_word_embeddings
    assert len(deltas) == (1 if tied else 2), deltas
    worst = max(float(np.abs(ea[k] - ta[k]).max()) for k in ta)
    loss_rel = max(abs(e["loss"] - t["loss"]) / t["loss"] for e, t in zip(p["engine"], p["torch"]))
    print(f"\n[{arch}] max rel loss diff {loss_rel:.2e} over {STEPS} steps, max adapter diff {worst:.2e} "
          f"(token rows: {max(float(np.abs(ea[k] - ta[k]).max()) for k in deltas):.2e})")
    assert worst <= ADAPTER_ATOL, worst
    # the token rows moved from their mean start by much more than the tolerance
    init = R.load_model(p["base"]).get_input_embeddings().weight.detach().double().mean(0).float().numpy()
    emb = ea["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert float(np.abs(emb - init[None, :]).max()) > 100 * ADAPTER_ATOL


@pytest.mark.parametrize("arch", CASES)
def test_adapter_config_is_peft(engine, workdir, arch):
    p = prepare(arch, workdir)
    cfg = json.loads((p["work"] / "engine" / "adapter_config.json").read_text())
    V = p["V"]
    want = [V, V + 1] if R.tiny_config(arch).tie_word_embeddings else {"embed_tokens": [V, V + 1], "lm_head": [V, V + 1]}
    assert cfg["trainable_token_indices"] == want


@pytest.mark.parametrize("arch", CASES)
def test_peft_loads_adapter_and_matches_engine_eval(engine, workdir, arch):
    p = prepare(arch, workdir)
    adapter = p["work"] / "engine"
    model = R.load_peft_grown(p["base"], adapter)
    assert model.get_input_embeddings().weight.shape[0] == p["V"] + 2
    tok, tgt, pos = R.read_shard(p["held"])
    want = R.forward_loss(model, tok, tgt, pos)
    events = R.run_engine("eval", {"command": "eval", "model": str(p["base"]), "adapter": str(adapter),
                                   "shards": [str(p["held"])], "batch_size": 4, "backend": "cpu", "threads": 2},
                          p["work"] / "eval.json")
    got = [e for e in events if e.get("event") == "done"][0]["summary"]["loss"]
    assert abs(got - want) <= LOSS_RTOL * want, (got, want)


@pytest.mark.parametrize("arch", CASES)
def test_merged_model_loads_in_transformers(engine, workdir, arch):
    p = prepare(arch, workdir)
    adapter, merged = p["work"] / "engine", p["work"] / "merged"
    R.run_engine("merge", {"command": "merge", "base": str(p["base"]), "adapter": str(adapter), "dtype": "f32",
                           "out": str(merged), "threads": 2}, p["work"] / "merge.json")
    config = json.loads((merged / "config.json").read_text())
    assert config["vocab_size"] == p["V"] + 2
    m = R.load_model(merged)
    assert m.get_input_embeddings().weight.shape[0] == p["V"] + 2
    peft = R.load_peft_grown(p["base"], adapter)
    tok, _, pos = R.read_shard(p["held"])
    with torch.no_grad():
        a = R.forward_logits(m, tok, pos)
        b = R.forward_logits(peft, tok, pos)
    assert float((a - b).abs().max()) <= LOGITS_ATOL
    rows = R.load_adapter_tensors(adapter)["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    got = m.get_input_embeddings().weight.detach().numpy()[p["V"]:]
    assert np.array_equal(got, rows)


def test_resume_with_trainable_tokens_matches_uninterrupted(engine, workdir):
    """A run with trainable tokens that "died" after step 6 (checkpoint at 6 kept, outputs removed) resumes: steps
    7..12 and the final adapter, token rows included, equal torch's uninterrupted run (the untied case: both row
    blocks and their AdamW moments go through the checkpoint)."""
    import shutil
    p = prepare("qwen2-bias", workdir)
    out = p["work"] / "engine-resume"
    job = json.loads(json.dumps(p["job"]))
    job["out"] = str(out)
    job["train"]["save_every"] = 6
    R.run_engine("train", job, p["work"] / "resume-1.json")
    ckpts = sorted((out / "checkpoints").iterdir(), key=lambda c: int(c.name.split("-")[1]))
    assert [c.name for c in ckpts] == ["step-6", "step-12"], [c.name for c in ckpts]
    shutil.rmtree(ckpts[1])
    for f in ("adapter_model.safetensors", "adapter_config.json", "summary.json"):
        (out / f).unlink(missing_ok=True)
    job["train"]["resume"] = True
    eng = [e for e in R.run_engine("train", job, p["work"] / "resume-2.json") if e.get("event") == "step"]
    assert [e["step"] for e in eng] == list(range(7, STEPS + 1))
    for e, t in zip(eng, p["torch"][6:]):
        assert abs(e["loss"] - t["loss"]) <= LOSS_RTOL * t["loss"], (e["step"], e["loss"], t["loss"])
    ea, ta = R.load_adapter_tensors(out), R.load_adapter_tensors(p["work"] / "torch")
    assert sorted(ea) == sorted(ta)
    assert max(float(np.abs(ea[k] - ta[k]).max()) for k in ta) <= ADAPTER_ATOL
