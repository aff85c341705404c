"""make_bnb_fixture.py — writes test/fixtures/bnb-nf4-tiny: a pre-quantized bitsandbytes 4-bit Llama (nf4, double
quantization, quant_state dtype bfloat16, like the "-bnb-4bit" checkpoints users start from) saved by transformers +
bitsandbytes on the CPU, with the demo tokenizer. The e2e test test/e2e/prequantized-base.test.ts runs it through
recipe → adapter → merged → gguf without Python; test_bnb4bit.py checks that this script still reproduces the
committed tensors.

  python test/parity/make_bnb_fixture.py [--out DIR]      # default: test/fixtures/bnb-nf4-tiny
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as R  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

FIXTURE = R.REPO_ROOT / "test" / "fixtures" / "bnb-nf4-tiny"
DEMO_TOKENIZER = R.REPO_ROOT / "recipes" / "demo" / "base"

# The demo tokenizer's 512 ids; every row a multiple of 64 wide. initializer_range 0.1 as in the demo base, so that a
# few LoRA steps change greedy outputs.
CONFIG = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
              num_key_value_heads=1, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5,
              initializer_range=0.1, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def make_fixture(out: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", architectures=["LlamaForCausalLM"], **CONFIG)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        R.make_bnb4bit_model(tmp, out, quant_type="nf4", double_quant=True, dtype=torch.bfloat16)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_TOKENIZER / f, out / f)
    (out / "generation_config.json").unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(FIXTURE))
    print(make_fixture(Path(ap.parse_args().out)))
