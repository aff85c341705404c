# generate_run.py — the engine's `generate` job on the GPU machine, as the eval stage and `nx run <recipe>:generate`
# write it (docs/engine-protocol.md "generate"), timed from its events as they arrive; prints one JSON line.
#   python3 bench/generate_run.py ENGINE MODEL_DIR PROMPT_TOKENS NEW_TOKENS [OUT_DIR]
# The prompt is PROMPT_TOKENS ids drawn from a fixed seed (bench/generate_peer.py draws the same ones); greedy, no
# stop ids, so exactly NEW_TOKENS come out. prompt_s: weights loaded → first token (the prompt read into the KV
# cache, then one token); decode tok/s: the tokens after the first over the time after it.
import json, os, random, sys
from engine_events import EngineRun, weights_loaded

engine, model, P, N = sys.argv[1], os.path.abspath(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = sys.argv[5] if len(sys.argv) > 5 else "/tmp/generate-run"
os.makedirs(out, exist_ok=True)
V = json.load(open(os.path.join(model, "config.json")))["vocab_size"]
rng = random.Random(0)
ids = [rng.randrange(V // 100, V) for _ in range(P)]   # the same ids as bench/generate_peer.py
job = {"command": "generate", "model": model, "prompt_ids": ids, "max_new_tokens": N,
       "temperature": 0.0, "stop_ids": [], "backend": os.environ.get("BACKEND", "cuda")}
job_file = os.path.join(out, f"generate-{P}-{N}.json")
json.dump(job, open(job_file, "w"))
run = EngineRun(engine, "generate", job_file)
loaded, tokens, summary = None, [], None
for t, e in run:
    if weights_loaded(e):
        loaded = t
    elif e.get("event") == "token":
        tokens.append(t)
    elif e.get("event") == "done":
        summary = e.get("summary")
err, rc = run.stderr, run.rc
if rc != 0 or len(tokens) != N:
    print(err[-3000:], file=sys.stderr)
    print(json.dumps({"prompt_tokens": P, "new_tokens": N, "rc": rc, "error": "engine failed"}))
    sys.exit(1)
sys.stderr.write(err[-20000:])   # the tail: with NXFT_CUDA_PROFILE=1, the per-op table
print(json.dumps({
    "peer": "ours", "attention_decode": os.environ.get("NXFT_ATTN_DECODE", "split"), "prompt_tokens": P,
    "new_tokens": N, "load_s": loaded, "prompt_s": tokens[0] - loaded,
    "decode_tokens_per_s": (N - 1) / (tokens[-1] - tokens[0]), "ids_head": (summary or {}).get("ids", [])[:8],
}), flush=True)
