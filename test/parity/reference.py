"""reference.py — the PyTorch + transformers + PEFT side of the engine parity tests.

The native engine (`finetune-engine`) must compute exactly what this file computes with the real libraries:
  * tiny HF models (llama GQA/tied, llama MHA/untied/llama3-rope, qwen2 with q/k/v bias, gemma, mistral) built
    from a config with a fixed seed and saved as HF folders;
  * token shards in our format (docs/engine-protocol.md), including packed rows;
  * a LoRA `train` job run in torch: same job JSON the engine reads, PEFT adapter, torch AdamW,
    transformers' LR schedules, clip_grad_norm_, gradient accumulation, loss = sum CE / targets of the step.

Importable helpers (used by test_*.py and bench/train-cpu.py) plus a small CLI:
  python test/parity/reference.py make-model --arch llama-gqa-tied --out DIR [--seed 0]
  python test/parity/reference.py make-shard --vocab 160 --seq-len 32 --rows 40 --out FILE.tokens.bin
  python test/parity/reference.py train --job JOB.json          # writes adapter + metrics.jsonl like the engine
  python test/parity/reference.py forward-loss --model DIR [--adapter DIR] --shard FILE
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np
import torch

import transformers
from transformers import AutoConfig, AutoModelForCausalLM

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
STORIES_HF = FIXTURES / "models" / "stories260K-hf"

LORA_TARGETS_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def engine_path() -> Path:
    """The engine binary: $NXFT_ENGINE, else native/build/finetune-engine (built by the CI test script)."""
    env = os.environ.get("NXFT_ENGINE")
    return Path(env) if env else REPO_ROOT / "native" / "build" / "finetune-engine"


# ---------------------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------------------

# name -> (model_type, config kwargs). Tiny on purpose: 2 layers, hidden 32-64, vocab 128-200.
# initializer_range is raised from 0.02 so that logits are far from uniform and the LoRA has a visible effect.
TINY_ARCHS: dict[str, tuple[str, dict]] = {
    # GQA (6 query heads share 2 KV heads), tied embeddings.
    "llama-gqa-tied": ("llama", dict(
        vocab_size=160, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_theta=10000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # MHA, untied lm_head, llama3 rope scaling. original_max_position_embeddings=64 so that, with head_dim 16 and
    # theta 5e5, one frequency is kept, one is in the smoothed band and six are divided by `factor`: positions
    # below 64 then see clearly different rotations than with plain RoPE.
    "llama-mha-llama3": ("llama", dict(
        vocab_size=200, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_theta=500000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64})),
    # q/k/v bias (perturbed to non-zero below), untied, theta 1e6.
    "qwen2-bias": ("qwen2", dict(
        vocab_size=180, hidden_size=48, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=256,
        rope_theta=1000000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        use_sliding_window=False)),
    # head_dim 16 != hidden 32 / 4 heads; tied; embed * sqrt(hidden); RMSNorm (1 + w); GeGLU tanh; MQA.
    "gemma": ("gemma", dict(
        vocab_size=150, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, tie_word_embeddings=True, rms_norm_eps=1e-6, max_position_embeddings=256,
        rope_theta=10000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    # awkward sizes for blocked/SIMD kernels: hidden 72, head_dim 12, intermediate 200, vocab 301, GQA 6/3.
    "llama-odd": ("llama", dict(
        vocab_size=301, hidden_size=72, intermediate_size=200, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=512,
        rope_theta=10000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 128})),
    # mistral: GQA, untied, sliding window far above the sequence lengths used here.
    "mistral": ("mistral", dict(
        vocab_size=140, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, tie_word_embeddings=False, rms_norm_eps=1e-5, max_position_embeddings=256,
        rope_theta=10000.0, initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        sliding_window=4096)),
}


ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM",
              "mistral": "MistralForCausalLM"}


def tiny_config(arch: str):
    model_type, kwargs = TINY_ARCHS[arch]
    return AutoConfig.for_model(model_type, architectures=[ARCH_CLASS[model_type]], **kwargs)


def make_model(arch: str, out_dir: str | Path, seed: int = 0, save_dtype=torch.float32,
               max_shard_size: str | None = None) -> Path:
    """Builds a tiny model from its config with a fixed seed and saves it as an HF folder (F32 safetensors).

    Norm weights get N(0, 0.1) noise and biases N(0, 0.1) values, because transformers initialises them to
    constants (1, 0, or 0 for gemma's 1+w), and a constant would hide an engine that ignores them."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = tiny_config(arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    if save_dtype != torch.float32:   # e.g. a bf16 checkpoint, as most HF models are stored
        model = model.to(save_dtype)
    if max_shard_size:   # several model-0000x-of-0000n.safetensors + model.safetensors.index.json
        model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    else:
        model.save_pretrained(out_dir)
    return out_dir


def load_model(model_dir: str | Path, dtype=torch.float32, attn: str = "eager"):
    """Loads an HF folder with eager attention by default (our 4D additive mask is used verbatim; "sdpa" takes the
    same mask and is what the benchmark uses)."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, attn_implementation=attn)
    # A pre-quantized bitsandbytes checkpoint keeps its unquantized tensors (embeddings, norms, lm_head) in the
    # checkpoint dtype whatever `dtype` says; compute in `dtype` like the engine (the 4-bit weights stay 4-bit).
    import bitsandbytes as bnb
    with torch.no_grad():
        for p in model.parameters():
            if not isinstance(p, bnb.nn.Params4bit) and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
        # bitsandbytes 0.50.2 on the CPU dequantizes a 4-bit weight to the input's dtype in forward (gemm_4bit) but
        # to quant_state.dtype in backward (MatMul4Bit.backward: dequantize_4bit(B, state)): with a bfloat16
        # checkpoint and fp32 compute, forward and backward would see different weights (FINDINGS.md). The engine
        # dequantizes to its compute dtype in both; so does bitsandbytes once quant_state.dtype is that dtype.
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit) and m.weight.quant_state.dtype != dtype:
                m.weight.quant_state.dtype = dtype
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------
# Token shards (docs/engine-protocol.md "Token shards")
# ---------------------------------------------------------------------------------------------------------

SHARD_MAGIC = b"NXFTSHD1"


def write_shard(path: str | Path, tokens: np.ndarray, targets: np.ndarray, positions: np.ndarray) -> Path:
    """tokens/targets/positions: (R, T) int arrays. Writes `*.tokens.bin` (little-endian)."""
    tokens, targets, positions = (np.asarray(a, dtype="<i4") for a in (tokens, targets, positions))
    assert tokens.shape == targets.shape == positions.shape and tokens.ndim == 2
    R, T = tokens.shape
    path = Path(path)
    with open(path, "wb") as f:
        f.write(SHARD_MAGIC)
        f.write(struct.pack("<IIII", 1, T, R, 0))
        rows = np.stack([tokens, targets, positions], axis=1)  # (R, 3, T)
        f.write(rows.astype("<i4").tobytes())
    return path


def read_shard(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = Path(path).read_bytes()
    if data[:8] != SHARD_MAGIC:
        raise ValueError(f"{path}: bad magic {data[:8]!r}")
    version, T, R, flags = struct.unpack("<IIII", data[8:24])
    if version != 1:
        raise ValueError(f"{path}: version {version}")
    rows = np.frombuffer(data, dtype="<i4", offset=24).reshape(R, 3, T)
    return rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()


def pack_documents(docs: list[tuple[list[int], int]], seq_len: int, pad_id: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy packing of documents into rows of seq_len.

    docs: (token ids, n_prompt) — the first n_prompt tokens are prompt: no loss on predicting them.
    target[t] = doc[t+1] when t+1 is inside the doc and not a prompt token, else -100 (so the last token of a
    doc predicts nothing: documents never leak into each other). Documents longer than seq_len are truncated.
    The row tail is a padding document (pad ids, positions 0.., targets -100)."""
    rows_tok, rows_tgt, rows_pos = [], [], []
    cur_tok: list[int] = []
    cur_tgt: list[int] = []
    cur_pos: list[int] = []

    def flush():
        n_pad = seq_len - len(cur_tok)
        rows_tok.append(cur_tok + [pad_id] * n_pad)
        rows_tgt.append(cur_tgt + [-100] * n_pad)
        rows_pos.append(cur_pos + list(range(n_pad)))
        cur_tok.clear(); cur_tgt.clear(); cur_pos.clear()

    for ids, n_prompt in docs:
        ids = list(ids)[:seq_len]
        if len(cur_tok) + len(ids) > seq_len:
            flush()
        for t, tok in enumerate(ids):
            cur_tok.append(int(tok))
            nxt = t + 1
            cur_tgt.append(int(ids[nxt]) if nxt < len(ids) and nxt >= n_prompt else -100)
            cur_pos.append(t)
    if cur_tok:
        flush()
    return (np.array(rows_tok, dtype=np.int32), np.array(rows_tgt, dtype=np.int32),
            np.array(rows_pos, dtype=np.int32))


def random_documents(vocab_size: int, n_docs: int, seed: int, min_len: int = 5, max_len: int = 20,
                     bos: int = 1, eos: int = 2) -> list[tuple[list[int], int]]:
    """Random documents [bos, prompt…, completion…, eos] with random prompt lengths (ids >= 3)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(min_len, max_len + 1))
        body = rng.integers(3, vocab_size, size=n).tolist()
        n_prompt = 1 + int(rng.integers(0, n // 2 + 1))
        docs.append(([bos] + body + [eos], n_prompt))
    return docs


def make_training_rows(vocab_size: int, seq_len: int, n_rows: int, seed: int, n_distinct: int | None = None,
                       pad_id: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n_rows packed rows. With n_distinct, the first n_distinct rows repeat cyclically, so training sees the
    same examples again and the loss falls visibly (a stronger test than a flat loss)."""
    base_rows = n_distinct or n_rows
    docs = random_documents(vocab_size, n_docs=base_rows * seq_len // 6 + 8, seed=seed,
                            max_len=max(6, seq_len // 2))
    tok, tgt, pos = pack_documents(docs, seq_len, pad_id)
    tok, tgt, pos = tok[:base_rows], tgt[:base_rows], pos[:base_rows]
    assert len(tok) == base_rows, "not enough documents for the requested rows"
    idx = np.arange(n_rows) % base_rows
    return tok[idx], tgt[idx], pos[idx]


def text_documents_stories(n_docs: int, seed: int = 0, max_tokens: int = 60) -> list[tuple[list[int], int]]:
    """Real TinyStories text tokenized with stories260K's tokenizer.json: each paragraph is a document whose
    first sentence is the prompt."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(STORIES_HF / "tokenizer.json"))
    text = (FIXTURES / "text" / "tinystories_val_sample.txt").read_text(encoding="utf-8")
    paras = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    rng = np.random.default_rng(seed)
    docs = []
    for i in rng.permutation(len(paras))[:n_docs]:
        para = paras[int(i)]
        first = para.split(". ")[0] + "."
        ids = [1] + tok.encode(para, add_special_tokens=False).ids[: max_tokens - 2] + [2]
        n_prompt = min(len(ids) - 2, 1 + len(tok.encode(first, add_special_tokens=False).ids))
        docs.append((ids, n_prompt))
    return docs


# ---------------------------------------------------------------------------------------------------------
# Attention mask and loss for packed rows
# ---------------------------------------------------------------------------------------------------------

def packed_causal_mask(positions: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """positions: (B, T) -> additive mask (B, 1, T, T): 0 where key k <= query q in the same document, else
    the dtype's most negative value. A document starts where positions == 0 (protocol)."""
    doc = torch.cumsum((positions == 0).to(torch.int64), dim=1)  # (B, T) document index per token
    T = positions.shape[1]
    same_doc = doc[:, :, None] == doc[:, None, :]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))[None]
    allowed = same_doc & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def forward_logits(model, tokens, positions) -> torch.Tensor:
    """(B, T) int arrays -> fp32 logits (B, T, V) with positions restarting per document and no attention
    across documents."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    positions = torch.as_tensor(np.asarray(positions), dtype=torch.long)
    out = model(input_ids=tokens, position_ids=positions, attention_mask=packed_causal_mask(positions),
                use_cache=False)
    return out.logits.float()


def ce_sum(logits: torch.Tensor, targets) -> torch.Tensor:
    """Sum of cross-entropy over targets != -100."""
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def forward_loss(model, tokens, targets, positions) -> float:
    """Mean CE over targets != -100 of the given rows (what the engine reports for one step)."""
    with torch.no_grad():
        logits = forward_logits(model, tokens, positions)
        n = int((np.asarray(targets) != -100).sum())
        return float(ce_sum(logits, targets)) / n


# ---------------------------------------------------------------------------------------------------------
# QLoRA base: bitsandbytes NF4
# ---------------------------------------------------------------------------------------------------------

QLORA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def nf4_roundtrip(w: torch.Tensor) -> torch.Tensor:
    """bitsandbytes NF4 quantize (quantize_4bit: blocksize 64 over the flattened row-major weight, fp32 absmax, no
    double quantization) then dequantize with bitsandbytes' generic torch implementation (code[q] · absmax of the
    element's block, element 2k in the high nibble).

    Not bnb's CPU `dequantize_4bit` kernel: in bitsandbytes 0.50.2 it returns wrong values when a 64-block spans two
    rows (e.g. a [48, 48] weight: 2052 of 2304 values differ from code[q]·absmax, max error 0.18 vs 0.033), while
    its own generic path and the quantizer's codes are right (see FINDINGS.md)."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code
    w = w.float().contiguous()
    q, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert state.absmax.dtype == torch.float32 and state.blocksize == 64
    code = _get_4bit_code("nf4", w.device)
    return _dequantize_4bit_compute(q.view(torch.uint8).reshape(-1), state.absmax, code, 64, tuple(w.shape),
                                    torch.float32)


def nf4_roundtrip_linear_weights(model) -> int:
    """Replaces the seven projection weights of every layer by their NF4 round trip (nf4_roundtrip) — the frozen
    base a QLoRA run computes with. Embeddings, norms, biases and lm_head stay as they are (transformers'
    BitsAndBytesConfig also skips lm_head). Returns the number of weights replaced."""
    n = 0
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in QLORA_LINEARS:
                mod.weight.data.copy_(nf4_roundtrip(mod.weight.data).to(mod.weight.dtype))
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------------
# Pre-quantized bitsandbytes 4-bit bases ("-bnb-4bit" checkpoints)
# ---------------------------------------------------------------------------------------------------------

def make_bnb4bit_model(src_dir: str | Path, out_dir: str | Path, quant_type: str = "nf4", double_quant: bool = True,
                       dtype=torch.float32) -> Path:
    """Quantizes an HF folder with transformers + bitsandbytes on the CPU (BitsAndBytesConfig load_in_4bit,
    blocksize 64; lm_head and embeddings stay unquantized) and saves the pre-quantized checkpoint: packed uint8
    weights with .absmax / .quant_map / (.nested_absmax, .nested_quant_map) / .quant_state.bitsandbytes__<type>,
    config.json with quantization_config. `dtype` is the model dtype at load: the quant_state dtype bitsandbytes
    dequantizes to, and the dtype of the unquantized tensors."""
    from transformers import BitsAndBytesConfig
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(src_dir), quantization_config=cfg, device_map="cpu", dtype=dtype)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def bnb4bit_linear_modules(model) -> dict[str, torch.nn.Module]:
    """The bitsandbytes Linear4bit modules of a model loaded from a pre-quantized checkpoint, by module name."""
    import bitsandbytes as bnb
    return {n: m for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def bnb4bit_dequantize(weight) -> torch.Tensor:
    """A Params4bit dequantized by bitsandbytes: the nested absmax as functional.dequantize_4bit restores it
    (dequantize_blockwise of the 8-bit absmax, + offset, fp32), then bitsandbytes' generic 4-bit dequantize
    (backends/default/ops.py::_dequantize_4bit_compute: code[q]·absmax in fp32, one rounding to the quant_state
    dtype — the CUDA kernel's arithmetic). Not the CPU kernel of dequantize_4bit: it is wrong when a block spans two
    rows (FINDINGS.md); test_bnb4bit.py compares both where the CPU kernel is right."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute
    from bitsandbytes.backends.utils import _get_4bit_code
    qs = weight.quant_state
    absmax = qs.absmax
    if qs.nested:
        absmax = bnbf.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset
    absmax = absmax.float()
    code = _get_4bit_code(qs.quant_type, absmax.device)
    return _dequantize_4bit_compute(weight.data.view(torch.uint8).reshape(-1), absmax, code, qs.blocksize,
                                    tuple(qs.shape), qs.dtype)


def dequantized_base(bnb_dir: str | Path, out_dir: str | Path) -> Path:
    """An fp32 HF folder equal to a pre-quantized base as bitsandbytes computes with it: every Linear4bit weight
    replaced by bnb4bit_dequantize, the other tensors upcast; config.json without quantization_config."""
    qmodel = AutoModelForCausalLM.from_pretrained(str(bnb_dir), dtype=torch.float32)
    lin = bnb4bit_linear_modules(qmodel)
    assert lin, f"{bnb_dir}: no Linear4bit modules"
    config = AutoConfig.from_pretrained(str(bnb_dir))
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for name, t in qmodel.state_dict().items():
        mod = name.rsplit(".", 1)[0]
        if mod in lin:
            if name.endswith(".weight"):
                state[name] = bnb4bit_dequantize(lin[mod].weight).float()
            elif name.endswith(".bias"):
                state[name] = t.float()
        elif ".weight." not in name:   # not a part of a quantized weight (.weight.absmax, .weight.quant_state…)
            state[name] = t.float()
    missing, unexpected = plain.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    assert not missing and not unexpected, (missing, unexpected)
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.save_pretrained(str(out_dir))
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------
# PEFT adapters
# ---------------------------------------------------------------------------------------------------------

def make_peft_adapter(base_dir: str | Path, out_dir: str | Path, r: int, alpha: float, targets: list[str],
                      rslora: bool = False, seed: int = 0, random_b: bool = False) -> Path:
    """The initial adapter both sides start from. PEFT default init (A kaiming-uniform, B = 0), or with
    random_b a non-zero B as well (PEFT's init_lora_weights=False) so that step 1 already has LoRA output and
    gradients on A. Saved with save_pretrained (adapter_config.json + adapter_model.safetensors)."""
    from peft import LoraConfig, get_peft_model
    base = load_model(base_dir)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), use_rslora=rslora,
                     bias="none", task_type="CAUSAL_LM", init_lora_weights=not random_b)
    peft_model = get_peft_model(base, cfg)
    if random_b:
        # PEFT's init_lora_weights=False gives B the same kaiming-uniform init as A (bound 1/sqrt(r)), which
        # makes the LoRA term as large as the base output; scale B down to a realistic "after some training".
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.05)
    peft_model.save_pretrained(str(out_dir))
    return Path(out_dir)


def load_peft(base_dir: str | Path, adapter_dir: str | Path, trainable: bool = False):
    from peft import PeftModel
    base = load_model(base_dir)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)
    model.eval()
    return model


def grow_vocabulary(model, vocab_size: int) -> None:
    """resize_token_embeddings to vocab_size with every new row of embed_tokens (and of an untied lm_head) set to the
    exact mean of the old rows: transformers' mean_resizing without its 1e-9·covariance noise, as the engine does."""
    emb = model.get_input_embeddings().weight
    old = emb.shape[0]
    mean_e = emb.detach().double().mean(0).float()
    head = model.get_output_embeddings().weight
    mean_h = head.detach().double().mean(0).float()
    model.resize_token_embeddings(vocab_size)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = mean_e
        if not model.config.tie_word_embeddings:
            model.get_output_embeddings().weight[old:] = mean_h


def peft_token_indices(model, token_indices):
    """LoraConfig.trainable_token_indices as the engine writes it: a list for a tied head (PEFT ties lm_head to the
    embedding's rows), {"embed_tokens": …, "lm_head": …} for an untied one."""
    if not token_indices:
        return None
    if model.config.tie_word_embeddings:
        return list(token_indices)
    return {"embed_tokens": list(token_indices), "lm_head": list(token_indices)}


def load_peft_grown(base_dir: str | Path, adapter_dir: str | Path):
    """PEFT loading an adapter with trainable tokens: the base is resized to the adapter's vocabulary first (what a
    user does with model.resize_token_embeddings(len(tokenizer)); the adapter's rows replace the new ones)."""
    from peft import PeftModel
    base = load_model(base_dir)
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    tti = cfg.get("trainable_token_indices")
    ids = tti if isinstance(tti, list) else (tti or {}).get("embed_tokens", [])
    if ids:
        base.resize_token_embeddings(max(base.config.vocab_size, max(ids) + 1))
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    return model


def load_adapter_tensors_torch(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def load_adapter_tensors(adapter_dir: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


# ---------------------------------------------------------------------------------------------------------
# The reference `train` job
# ---------------------------------------------------------------------------------------------------------

def make_scheduler(optimizer, schedule: str, warmup_steps: int, total_steps: int):
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)
    if schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup_steps, total_steps)
    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    raise ValueError(f"train.schedule: unknown schedule {schedule!r}")


def load_rows(shards: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    parts = [read_shard(s) for s in shards]
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def reference_train(job: dict, write_out: bool = True, threads: int | None = None,
                    on_step=None, attn: str = "eager") -> list[dict]:
    """Runs an engine `train` job (same JSON) with torch + PEFT in fp32. Rows are taken in file order
    (train.shuffle must be false): step s, micro-batch m uses rows [(s*GA + m)*B, +B), wrapping around.
    Returns one dict per step (event "step": step, loss, lr, grad_norm, tokens, elapsed_s) and per evaluation
    (event "eval": step, loss — every train.eval_every steps and after the last step, when eval_shards are given)."""
    tr = job["train"]
    lora = job["lora"]
    if tr.get("shuffle", True):
        raise ValueError("reference_train: train.shuffle must be false (row order must be reproducible)")
    if job.get("quantize_base") not in (None, "nf4"):
        raise ValueError(f"reference_train: quantize_base {job['quantize_base']!r}")
    if threads:
        torch.set_num_threads(threads)
    base = load_model(job["base"], attn=attn)
    if job.get("quantize_base") == "nf4":
        nf4_roundtrip_linear_weights(base)
    token_indices = lora.get("trainable_token_indices") or None
    if token_indices:
        grow_vocabulary(base, max(base.config.vocab_size, max(token_indices) + 1))
    if lora.get("init_adapter") and token_indices:
        # LoRA weights from init_adapter, token rows from the grown base (as the engine starts them)
        from peft import LoraConfig, get_peft_model
        init_cfg = json.loads((Path(lora["init_adapter"]) / "adapter_config.json").read_text())
        if init_cfg.get("trainable_token_indices"):
            raise ValueError("reference_train: init_adapter with trainable tokens is not supported")
        model = get_peft_model(base, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                target_modules=lora["targets"], use_rslora=lora.get("rslora", False),
                                                task_type="CAUSAL_LM",
                                                trainable_token_indices=peft_token_indices(base, token_indices)))
        init = load_adapter_tensors_torch(lora["init_adapter"])
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in init.items():   # saved "…lora_A.weight" is the parameter "…lora_A.default.weight"
                params[k.replace(".weight", ".default.weight")].copy_(v)
    elif lora.get("init_adapter"):
        from peft import PeftModel
        model = PeftModel.from_pretrained(base, lora["init_adapter"], is_trainable=True)
    else:
        from peft import LoraConfig, get_peft_model
        torch.manual_seed(tr.get("seed", 0))
        model = get_peft_model(base, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                target_modules=lora["targets"], use_rslora=lora.get("rslora", False),
                                                task_type="CAUSAL_LM",
                                                trainable_token_indices=peft_token_indices(base, token_indices)))
    model.train()  # dropout is 0 in the parity jobs; train() only matters for dropout
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr["lr"], betas=(tr["beta1"], tr["beta2"]), eps=tr["eps"],
                                  weight_decay=tr["weight_decay"])
    steps = int(tr["steps"])
    scheduler = make_scheduler(optimizer, tr["schedule"], int(tr.get("warmup_steps", 0)), steps)
    tokens, targets, positions = load_rows(job["train_shards"])
    B, GA = int(tr["batch_size"]), int(tr["grad_accum"])
    n_rows = len(tokens)
    max_norm = tr.get("max_grad_norm") or 0.0

    eval_rows = load_rows(job["eval_shards"]) if job.get("eval_shards") else None
    eval_every = int(tr.get("eval_every") or 0)

    def run_eval(step: int):
        """Mean CE over all target tokens of the eval shards (rows in file order), as the engine's `eval`."""
        etok, etgt, epos = eval_rows
        with torch.no_grad():
            total = sum(float(ce_sum(forward_logits(model, etok[i:i + B], epos[i:i + B]), etgt[i:i + B]))
                        for i in range(0, len(etok), B))
        rec = {"event": "eval", "step": step, "loss": total / int((etgt != -100).sum()),
               "tokens": int((etgt != -100).sum())}
        records.append(rec)
        if on_step:
            on_step(rec)

    records = []
    t0 = time.perf_counter()
    for step in range(steps):
        row_idx = [((step * GA + m) * B + b) % n_rows for m in range(GA) for b in range(B)]
        n_items = int((targets[row_idx] != -100).sum())
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for m in range(GA):
            idx = row_idx[m * B:(m + 1) * B]
            logits = forward_logits(model, tokens[idx], positions[idx])
            ce = ce_sum(logits, targets[idx])
            (ce / n_items).backward()
            loss_sum += float(ce.detach())
        if max_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        rec = {"event": "step", "step": step + 1, "total_steps": steps, "loss": loss_sum / n_items, "lr": lr,
               "grad_norm": grad_norm, "tokens": B * GA * tokens.shape[1],
               "elapsed_s": time.perf_counter() - t0}
        records.append(rec)
        if on_step:
            on_step(rec)
        if eval_rows is not None and eval_every > 0 and (step + 1) % eval_every == 0:
            run_eval(step + 1)
    if eval_rows is not None and (not records or records[-1]["event"] != "eval"):
        run_eval(steps)   # the engine also evaluates at the end
    if write_out:
        out = Path(job["out"])
        # with trainable tokens PEFT would also save the whole resized embedding ("auto"); the engine saves only
        # the adapter (trainable_tokens_delta rows), the format PEFT documents for trainable_token_indices
        model.save_pretrained(str(out), **({"save_embedding_layers": False} if token_indices else {}))
        with open(out / "metrics.jsonl", "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    return records


# ---------------------------------------------------------------------------------------------------------
# Running the engine
# ---------------------------------------------------------------------------------------------------------

class EngineError(RuntimeError):
    pass


def run_engine(command: str, job: dict, job_path: str | Path, timeout: float = 300) -> list[dict]:
    """Writes the job file, runs `finetune-engine <command> --job <job>`, returns the parsed stdout events.
    Raises EngineError with the error event / stderr on failure."""
    job_path = Path(job_path)
    job_path.write_text(json.dumps(job, indent=2))
    exe = engine_path()
    proc = subprocess.run([str(exe), command, "--job", str(job_path)], capture_output=True, text=True,
                          timeout=timeout)
    events = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EngineError(f"engine stdout line is not JSON: {line!r}") from e
    if proc.returncode != 0:
        errors = [e for e in events if e.get("event") == "error"]
        raise EngineError(f"finetune-engine {command} exited {proc.returncode}: "
                          f"{errors[-1] if errors else ''}\nstderr: {proc.stderr[-3000:]}")
    return events


def train_job(base: str | Path, shards: list[str | Path], out: str | Path, *, r: int, alpha: float,
              targets: list[str], rslora: bool = False, init_adapter: str | Path | None = None, lr: float = 1e-3,
              schedule: str = "linear", warmup_steps: int = 0, steps: int = 20, batch_size: int = 2,
              grad_accum: int = 1, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
              weight_decay: float = 0.0, max_grad_norm: float = 1.0, threads: int = 2) -> dict:
    """A protocol `train` job (docs/engine-protocol.md) for the CPU backend, fp32, no shuffling."""
    return {
        "command": "train",
        "base": str(base),
        "train_shards": [str(s) for s in shards],
        "eval_shards": [],
        "out": str(out),
        "backend": "cpu",
        "threads": threads,
        "lora": {"r": r, "alpha": alpha, "dropout": 0.0, "targets": list(targets), "rslora": rslora,
                 "init_adapter": str(init_adapter) if init_adapter else None},
        "quantize_base": None,
        "train": {"seed": 0, "lr": lr, "schedule": schedule, "warmup_steps": warmup_steps, "steps": steps,
                  "epochs": None, "batch_size": batch_size, "grad_accum": grad_accum, "optimizer": "adamw",
                  "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
                  "max_grad_norm": max_grad_norm, "gradient_checkpointing": False, "eval_every": 0,
                  "save_every": 0, "resume": False, "shuffle": False},
        "base_model_name_or_path": str(base),
    }


def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, stop_ids: list[int]) -> list[int]:
    """Greedy decoding with transformers; returns only the new ids (the stop id included when hit, as the engine's
    `summary.ids`). With stop_ids: model.generate (KV cache). Without: transformers' generate always stops at the
    config's eos, so a plain loop of full forwards takes the argmax of the last position max_new_tokens times."""
    if stop_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=list(stop_ids), pad_token_id=0,
                                 attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long))
        return out[0, len(prompt_ids):].tolist()
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):]


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-model"); p.add_argument("--arch", choices=sorted(TINY_ARCHS), required=True)
    p.add_argument("--out", required=True); p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("make-shard"); p.add_argument("--vocab", type=int, required=True)
    p.add_argument("--seq-len", type=int, required=True); p.add_argument("--rows", type=int, required=True)
    p.add_argument("--distinct", type=int, default=None); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("make-adapter"); p.add_argument("--base", required=True); p.add_argument("--out", required=True)
    p.add_argument("--r", type=int, default=8); p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default=",".join(LORA_TARGETS_ALL)); p.add_argument("--rslora", action="store_true")
    p.add_argument("--random-b", action="store_true"); p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("train"); p.add_argument("--job", required=True); p.add_argument("--threads", type=int)
    p = sub.add_parser("forward-loss"); p.add_argument("--model", required=True); p.add_argument("--adapter")
    p.add_argument("--shard", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "make-model":
        print(make_model(a.arch, a.out, a.seed))
    elif a.cmd == "make-shard":
        tok, tgt, pos = make_training_rows(a.vocab, a.seq_len, a.rows, a.seed, a.distinct)
        print(write_shard(a.out, tok, tgt, pos))
    elif a.cmd == "make-adapter":
        print(make_peft_adapter(a.base, a.out, a.r, a.alpha, a.targets.split(","), a.rslora, a.seed, a.random_b))
    elif a.cmd == "train":
        job = json.loads(Path(a.job).read_text())
        reference_train(job, threads=a.threads, on_step=lambda rec: print(json.dumps(rec), flush=True))
    elif a.cmd == "forward-loss":
        model = load_peft(a.model, a.adapter) if a.adapter else load_model(a.model)
        tok, tgt, pos = read_shard(a.shard)
        print(json.dumps({"loss": forward_loss(model, tok, tgt, pos)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
