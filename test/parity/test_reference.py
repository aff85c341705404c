"""Self-checks of the Python reference (no engine needed): if these fail, the parity tests would compare the
engine against a wrong reference."""
from __future__ import annotations

import numpy as np
import torch

import reference as R
from conftest import base_model


def test_shard_roundtrip_and_layout(tmp_path):
    tok, tgt, pos = R.make_training_rows(160, 16, 5, seed=0)
    path = R.write_shard(tmp_path / "a.tokens.bin", tok, tgt, pos)
    raw = path.read_bytes()
    # header: magic, version 1, T, R, flags 0; then per row tokens[T], targets[T], positions[T]
    assert raw[:8] == b"NXFTSHD1"
    assert np.frombuffer(raw[8:24], "<u4").tolist() == [1, 16, 5, 0]
    assert len(raw) == 24 + 5 * 3 * 16 * 4
    row0 = np.frombuffer(raw[24:24 + 3 * 16 * 4], "<i4").reshape(3, 16)
    assert (row0[0] == tok[0]).all() and (row0[1] == tgt[0]).all() and (row0[2] == pos[0]).all()
    t2, g2, p2 = R.read_shard(path)
    assert (t2 == tok).all() and (g2 == tgt).all() and (p2 == pos).all()


def test_packing_targets_and_positions():
    docs = [([1, 10, 11, 12, 2], 2), ([1, 20, 21, 2], 1)]
    tok, tgt, pos = R.pack_documents(docs, 12, pad_id=0)
    assert tok.tolist() == [[1, 10, 11, 12, 2, 1, 20, 21, 2, 0, 0, 0]]
    # doc 1: predicting 10 is prompt (n_prompt=2 covers ids 1,10) -> first target is 11 at t=1
    assert tgt.tolist() == [[-100, 11, 12, 2, -100, 20, 21, 2, -100, -100, -100, -100]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]]


def test_packed_mask_equals_per_document_forward(workdir):
    """A packed row through the 4D block-diagonal mask gives the same logits as each document on its own."""
    model = R.load_model(base_model("llama-mha-llama3", workdir))
    tok, tgt, pos = R.make_training_rows(200, 48, 3, seed=5)
    packed = R.forward_logits(model, tok, pos)
    worst = 0.0
    for row in range(len(tok)):
        doc = np.cumsum(pos[row] == 0)
        assert doc.max() >= 2, "rows must hold several documents for this check"
        for k in np.unique(doc):
            sel = np.where(doc == k)[0]
            alone = R.forward_logits(model, tok[row][sel][None], pos[row][sel][None])[0]
            worst = max(worst, float((alone - packed[row][sel]).abs().max()))
    assert worst < 1e-5, worst


def test_reference_first_step_loss_is_forward_loss(workdir, tmp_path):
    """Step 1 of the reference train loop reports mean CE over all targets of the step (GA micro-batches)."""
    base = base_model("llama-gqa-tied", workdir)
    tok, tgt, pos = R.make_training_rows(160, 32, 6, seed=7)
    shard = R.write_shard(tmp_path / "s.tokens.bin", tok, tgt, pos)
    init = R.make_peft_adapter(base, tmp_path / "init", 4, 8, ["q_proj", "v_proj"], random_b=True)
    job = R.train_job(base, [shard], tmp_path / "out", r=4, alpha=8, targets=["q_proj", "v_proj"],
                      init_adapter=init, steps=1, batch_size=2, grad_accum=3)
    rec = R.reference_train(job, write_out=False)[0]
    expected = R.forward_loss(R.load_peft(base, init), tok, tgt, pos)
    assert abs(rec["loss"] - expected) <= 1e-6 * expected
    assert rec["tokens"] == 6 * 32


def test_rope_scaling_is_effective(workdir):
    """The llama3 rope_scaling of the tiny model changes the logits (so a parity pass proves the engine applies
    it): same weights with rope_scaling removed give different logits."""
    from transformers import AutoModelForCausalLM
    base = base_model("llama-mha-llama3", workdir)
    model = R.load_model(base)
    cfg = R.tiny_config("llama-mha-llama3")
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
    plain = AutoModelForCausalLM.from_pretrained(str(base), config=cfg, dtype=torch.float32,
                                                 attn_implementation="eager")
    tok, tgt, pos = R.make_training_rows(200, 48, 2, seed=5)
    diff = float((R.forward_logits(model, tok, pos) - R.forward_logits(plain, tok, pos)).abs().max())
    assert diff > 1e-2, diff


def test_nf4_roundtrip_is_nearest_code_per_64_block():
    """The QLoRA reference base: every value is the NF4 code nearest to w/absmax of its 64-block, times absmax
    (blocks spanning rows included: [48, 48] has 36 blocks, most crossing a row boundary)."""
    code = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                         -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                         0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                         0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0])
    torch.manual_seed(0)
    for shape in [(48, 48), (64, 40), (16, 128)]:
        w = torch.randn(shape) * 0.1
        got = R.nf4_roundtrip(w)
        blocks = w.reshape(-1, 64)
        absmax = blocks.abs().max(1, keepdim=True)[0]
        scaled = blocks / absmax
        dist = (scaled[..., None] - code).abs()
        best = dist.min(-1)[0]
        chosen = (got.reshape(-1, 64) / absmax)
        # the chosen code is a nearest one (ties/rounding at a midpoint may pick either neighbour)
        chosen_dist = (scaled - chosen).abs()
        assert float((chosen_dist - best).max()) < 1e-6, shape
        assert bool(torch.isin(chosen.reshape(-1).round(decimals=5), code.round(decimals=5)).all()), shape
