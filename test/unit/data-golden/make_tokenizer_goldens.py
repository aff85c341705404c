"""Writes the tokenizer goldens that test/unit/data-tokenizer.test.ts compares @huggingface/tokenizers against.

Ids come from Hugging Face's Python `tokenizers` (the Rust implementation), add_special_tokens=False.
Run from the repo root:  /work/pyenv/bin/python test/unit/data-golden/make_tokenizer_goldens.py

It also checks (and prints) that the demo tokenizer's BPE segments text exactly like llama.cpp's SentencePiece
algorithm with scores -(id - 259) (highest score first, leftmost on ties), which is what the GGUF export relies on.
"""
import json, os, sys
from tokenizers import Tokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FIX = os.path.join(ROOT, "..", "shared", "fixtures")
OUT = os.path.dirname(os.path.abspath(__file__))
N_LINES = 100

EXTRA = [
    "", " ", "  leading spaces", "trailing space ", "tabs\tand\nnewlines\n\n", "héllo wörld ünïcode", "emoji 🦙🦙 ok",
    "控制 文字", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis<|im_end|>\n",
    "<s>bos inside</s>", "x<|im_end|>y", "What colour is coal?", "Give the opposite of the word.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nWhat colour is coal?\n\n### Response:\n",
]


def story_lines():
    with open(os.path.join(FIX, "text", "tinystories_val_sample.txt"), encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if l.strip()]
    return lines[:N_LINES]


def encode_all(tok, texts):
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def spm_encode(text, vocab, first_merged, added):
    """llama.cpp's SPM algorithm on one text without special tokens: chars (unknown -> bytes), then repeatedly merge
    the adjacent pair whose concatenation is a vocab piece with the highest score -(id - first_merged)."""
    if text == "":
        return []  # both tokenizers give nothing for empty text
    s = "▁" + text.replace(" ", "▁")
    syms = list(s)
    while True:
        best = None
        for i in range(len(syms) - 1):
            p = syms[i] + syms[i + 1]
            if p in vocab and vocab[p] >= first_merged and p not in added:
                score = -(vocab[p] - first_merged)
                if best is None or score > best[0]:
                    best = (score, i)
        if best is None:
            break
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]
    ids = []
    for sym in syms:
        if sym in vocab:
            ids.append(vocab[sym])
        else:
            ids.extend(3 + b for b in sym.encode("utf-8"))
    return ids


def main():
    lines = story_lines()
    goldens = {}
    # stories260K-hf: a fixture tokenizer, so the golden stores only ids; the test re-reads the lines.
    st = Tokenizer.from_file(os.path.join(FIX, "models", "stories260K-hf", "tokenizer.json"))
    goldens["stories260K"] = {"source": "text/tinystories_val_sample.txt (non-empty lines)", "n_lines": N_LINES,
                              "lines": encode_all(st, lines), "extra": EXTRA, "extra_ids": encode_all(st, EXTRA)}
    demo_path = os.path.join(ROOT, "recipes", "demo", "base", "tokenizer.json")
    dt = Tokenizer.from_file(demo_path)
    demo_rows = []
    with open(os.path.join(ROOT, "datasets", "demo", "train.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                demo_rows.extend(v for v in json.loads(line).values() if isinstance(v, str) and v)
    goldens["demo"] = {"tokenizer_sha256_json": __import__("hashlib").sha256(open(demo_path, "rb").read()).hexdigest(),
                       "n_lines": N_LINES, "lines": encode_all(dt, lines), "extra": EXTRA + demo_rows,
                       "extra_ids": encode_all(dt, EXTRA + demo_rows)}

    # SPM-order check for the demo tokenizer (texts without special tokens).
    tj = json.load(open(demo_path, encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    added = {t["content"] for t in tj["added_tokens"]}
    texts = lines + [t for t in EXTRA + demo_rows if not any(a in t for a in added)]
    bad = 0
    for t in texts:
        if spm_encode(t, vocab, 259, added) != dt.encode(t, add_special_tokens=False).ids:
            bad += 1
    print(f"demo tokenizer: HF BPE vs SentencePiece merge order: {len(texts) - bad}/{len(texts)} texts identical")
    if bad:
        sys.exit(1)

    with open(os.path.join(OUT, "tokenizer-goldens.json"), "w", encoding="utf-8") as f:
        json.dump(goldens, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print("wrote", os.path.join(OUT, "tokenizer-goldens.json"))


main()
