"""Python twin of bench/tokenize.ts: Hugging Face `tokenizers` (Rust) speed on the same corpus.

  python bench/tokenize_hf_python.py <corpus.txt> <tokenizer-dir> [<tokenizer-dir> ...]
Prints one JSON line per tokenizer: {"tokenizer", "mb", "tokens", "single_s", "batch_s", "threads"}.
single: encode() line by line on one thread; batch: encode_batch() over all lines (Rust thread pool).
"""
import json, os, sys, time

from tokenizers import Tokenizer


def main():
    corpus, dirs = sys.argv[1], sys.argv[2:]
    with open(corpus, encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if l.strip()]
    mb = sum(len(l.encode("utf-8")) for l in lines) / 1e6
    for d in dirs:
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        for l in lines[:200]:  # warm-up
            tok.encode(l, add_special_tokens=False)
        best_single, tokens = float("inf"), 0
        for _ in range(3):
            t0 = time.perf_counter()
            n = 0
            for l in lines:
                n += len(tok.encode(l, add_special_tokens=False).ids)
            best_single = min(best_single, time.perf_counter() - t0)
            tokens = n
        best_batch = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            enc = tok.encode_batch(lines, add_special_tokens=False)
            best_batch = min(best_batch, time.perf_counter() - t0)
            assert sum(len(e.ids) for e in enc) == tokens
        print(json.dumps({"tokenizer": d, "mb": mb, "tokens": tokens, "single_s": best_single, "batch_s": best_batch,
                          "threads": os.cpu_count()}))


main()
