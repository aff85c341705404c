# generate_peer.py — the peers of bench/generate_run.py on the same model, prompt ids and lengths: transformers'
# generate (PEER=hf, SDPA attention, its default dynamic KV cache) or Unsloth's (PEER=unsloth:
# FastLanguageModel.for_inference, Unsloth 2026.10.9 from .carry/unsloth-site.tar.xz). Greedy, exactly NEW tokens.
#   PEER=hf MODEL=dir P=512,4096 N=256 [PYTHONPATH=/opt/uns] python3 bench/generate_peer.py   (one line per P)
# prompt_s: one generate of a single token (the prompt, then one token); decode tok/s: the N − 1 tokens after the
# first over (time of an N-token generate − prompt_s). One warm-up generate first (CUDA context, kernels).
import json, os, random, time
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
peer = os.environ.get("PEER", "hf")
if peer == "unsloth":
    from unsloth import FastLanguageModel
import torch, transformers

path, N = os.environ["MODEL"], int(os.environ.get("N", "256"))
prompts = [int(p) for p in os.environ.get("P", "512").split(",")]
dev = os.environ.get("DEVICE", "cuda")   # cpu: a check of this script on a small model, without a GPU
t = time.time()
if peer == "unsloth":
    import unsloth
    model, _ = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=max(prompts) + N, dtype=torch.bfloat16,
                                                 load_in_4bit=False, local_files_only=True)
    FastLanguageModel.for_inference(model)
    version = unsloth.__version__
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").to(dev)
    version = transformers.__version__
model.eval()
load_s = time.time() - t
V = json.load(open(os.path.join(path, "config.json")))["vocab_size"]
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

def gen(ids, n):
    sync(); t = time.time()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    sync()
    assert out.shape[1] == ids.shape[1] + n, out.shape
    return time.time() - t, out

for P in prompts:
    rng = random.Random(0)
    ids = torch.tensor([[rng.randrange(V // 100, V) for _ in range(P)]], device=dev)   # bench/generate_run.py's ids
    gen(ids, 8)
    prompt_s, _ = gen(ids, 1)
    full_s, out = gen(ids, N)
    print(json.dumps({"peer": peer, "version": version, "torch": torch.__version__, "prompt_tokens": P, "new_tokens": N,
                      "load_s": load_s, "prompt_s": prompt_s, "decode_tokens_per_s": (N - 1) / (full_s - prompt_s),
                      "ids_head": out[0, P:P + 8].tolist(),
                      "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None}), flush=True)
