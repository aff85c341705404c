# make_stories_logprobs.py — golden next-token log-probabilities of stories260K-hf from transformers (fp32, CPU),
# for test/gguf/gguf-export.test.ts: llama.cpp running our F32 GGUF export must reproduce them.
#   /work/pyenv/bin/python test/gguf/golden/make_stories_logprobs.py
# Writes stories260K-logprobs.json: {"ids": [...], "logprobs": [[V floats] per position]} (log_softmax of the
# logits at every position of the prompt, rounded to 6 decimals).
import json
import os

import torch
from transformers import AutoModelForCausalLM

here = os.path.dirname(os.path.abspath(__file__))
model_dir = os.path.join(here, "..", "..", "..", "..", "shared", "fixtures", "models", "stories260K-hf")
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
# BOS + "Once upon a time, there was a little girl" as the stories260K tokenizer encodes it.
ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421]
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].double()
logprobs = torch.log_softmax(logits, dim=-1)
out = {"model": "stories260K-hf", "transformers": __import__("transformers").__version__, "torch": torch.__version__,
       "ids": ids, "logprobs": [[round(float(v), 6) for v in row] for row in logprobs]}
with open(os.path.join(here, "stories260K-logprobs.json"), "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("greedy next ids:", logprobs.argmax(-1).tolist())
