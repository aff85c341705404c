# make_seeds.py — writes the hand-made seed inputs of native/fuzz/corpus/{json,safetensors} (seed-*). Inputs the
# fuzzers found later are saved next to them under libFuzzer's hash names. Plain python3, no dependencies.
# Run from the repo root: python3 native/fuzz/make_seeds.py
import json, os, struct

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
J = os.path.join(root, "json"); S = os.path.join(root, "safetensors")
os.makedirs(J, exist_ok=True); os.makedirs(S, exist_ok=True)

def wj(name, text):
    with open(os.path.join(J, "seed-" + name), "w", encoding="utf-8", newline="") as f:
        f.write(text)

wj("llama3-config.json", json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True, "vocab_size": 256, "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16"}, indent=2))
wj("gemma-config.json", json.dumps({"model_type": "gemma", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh",
    "vocab_size": 100, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}))
wj("qwen2-config.json", json.dumps({"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50, "rope_theta": 1000000.0, "use_sliding_window": False,
    "rope_scaling": {"type": "linear", "factor": 2.0}}))
wj("train-job.json", json.dumps({"command": "train", "base": "/m", "lr": 2e-4, "steps": 60, "targets": ["q_proj", "v_proj"],
    "train": {"shuffle": True}, "nested": {"a": [1, 2.5, -3e-7, None, True, False, "x\u00e9\U0001F600"]}}, indent=2))
wj("adapter-config.json", json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
    "rank_pattern": {}, "base_model_name_or_path": None}, indent=2, sort_keys=True))
wj("index.json", json.dumps({"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}))
wj("escapes.json", '["\\u0000\\ud83d\\ude00\\n\\t\\"\\\\\\/", "\u2581x", -0, 0.1, 1E+2, 123456789012345678901234567890]')
wj("numbers.json", "[0, -0.0, 1e-400, 5e-324, 1.7976931348623157e308, 2.2250738585072014e-308, 9007199254740993, 1.5e300]")
wj("deep.json", "[" * 40 + "{}" + "]" * 40)
wj("bad-trailing-comma.json", '{"a": [1, 2,], }')
wj("bad-dup.json", '{"a": 1, "a": 2}')
wj("bad-surrogate.json", '"\\ud800x"')
wj("bad-number.json", "[01, 1., .5, -, 1e]")
wj("empty-object.json", "{}")

def st(name, header_obj, buf, pad=True, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header_obj, separators=(",", ":")).encode()
    if pad and raw_header is None:
        h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(S, "seed-" + name), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + buf)

f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.0)
st("valid-f32.safetensors", {"__metadata__": {"format": "pt"}, "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, f32)
st("valid-mixed.safetensors", {"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
   "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}, "c": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},
   "d": {"dtype": "U8", "shape": [0], "data_offsets": [16, 16]}, "e": {"dtype": "F64", "shape": [], "data_offsets": [16, 24]}},
   bytes(range(24)))
st("valid-empty.safetensors", {}, b"")
st("valid-unpadded.safetensors", {"x": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]}}, b"\1\2\3\4", pad=False)
st("valid-lora.safetensors", {"__metadata__": {"format": "pt"},
   "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
   "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": {"dtype": "F32", "shape": [2, 1], "data_offsets": [8, 16]}}, f32)
st("bad-overlap.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
   "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, f32[:12])
st("bad-hole.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
   "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, f32[:12])
st("bad-size.safetensors", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, f32)
st("bad-dtype.safetensors", {"a": {"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}}, f32)
st("bad-range.safetensors", {"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, f32)
st("bad-json.safetensors", None, f32, raw_header=b'{"a":{"dtype":"F32",')
st("bad-notobject.safetensors", None, b"", raw_header=b"[1,2,3] ")
with open(os.path.join(S, "seed-bad-headerlen.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", 1 << 40) + b"{}")
with open(os.path.join(S, "seed-bad-short.safetensors"), "wb") as f:
    f.write(b"\x02\x00\x00")
