"""stories260K (a real trained llama, shared fixture): the engine's greedy continuation of "<s>Once upon a time"
has exactly transformers' token ids (computed live), and the streamed `token` events agree with summary.ids."""
from __future__ import annotations

import reference as R


def prompt_ids() -> list[int]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(R.STORIES_HF / "tokenizer.json"))
    return [1] + tok.encode("Once upon a time", add_special_tokens=False).ids


def test_stories260k_greedy_equals_transformers(engine, tmp_path):
    prompt = prompt_ids()
    assert prompt[0] == 1 and len(prompt) > 2
    want = R.greedy_generate(R.load_model(R.STORIES_HF), prompt, 64, [2])
    events = R.run_engine("generate", {
        "command": "generate", "model": str(R.STORIES_HF), "adapter": None, "prompt_ids": prompt,
        "max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop_ids": [2],
        "backend": "cpu", "threads": 2}, tmp_path / "gen.json")
    got = [e for e in events if e.get("event") == "done"][-1]["summary"]["ids"]
    streamed = [e for e in events if e.get("event") == "token"]
    assert [e["id"] for e in streamed] == got
    assert [e["index"] for e in streamed] == list(range(len(got)))
    assert got == want, (got, want)
    # independent of transformers: the known llama2.c output for this model
    from tokenizers import Tokenizer
    text = Tokenizer.from_file(str(R.STORIES_HF / "tokenizer.json")).decode(prompt + got)
    assert text.startswith("Once upon a time, there was a little girl named Lily."), text
