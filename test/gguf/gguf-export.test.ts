// GGUF export of real and synthetic models, checked by running the files in llama.cpp (node-llama-cpp 3.21.1,
// prebuilt CPU binary):
//   - stories260K-hf in every preset loads and generates; F32 greedy text equals transformers'; F32 next-token
//     log-probabilities equal transformers' (committed golden, test/gguf/golden) and our engine's forward pass
//     (native/tests/test_gguf_engine_logits) within 1e-4; Q8_0's greedy tokens equal F32's.
//   - a synthetic 256-wide llama (untied output) gets llama-quantize's per-tensor types for q4_k_m / q5_k_m /
//     q6_k / q4_0 / q8_0 and every file runs; a Q8_0 export stays close to F32 in log-probabilities.
//   - qwen2 (q/k/v biases) and gemma (norm +1, tied) synthetic models export and run.
//   - Llama-3.1 rope scaling becomes rope_freqs.weight with the converter's values.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ggufTokenizerMetadata } from "../../plugins/nx-finetune/src/gguf";
import { ENGINE, ROOT, STORIES, exportGguf, toBf16, writeSafetensors, readGgufHeader, tensorTypes, greedy, logprobs, writeRandomModel, GGML_TYPE_NAMES } from "./gguf-helpers";

const TRANSFORMERS_TEXT = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball.";
const PRESETS = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"];

let dir: string;
const storiesFile = (t: string) => join(dir, `stories.${t}.gguf`);

before(() => {
  dir = mkdtempSync(join(tmpdir(), "nxft-gguf-export-"));
  const tokenizer = ggufTokenizerMetadata(STORIES);
  for (const type of PRESETS) exportGguf({ model: STORIES, out: storiesFile(type), type, tokenizer, name: "stories260K" }, dir);
});
after(() => rmSync(dir, { recursive: true, force: true }));

test("stories260K: F32 greedy continuation equals transformers'", async () => {
  const r = await greedy(storiesFile("f32"), "Once upon a time", 40);
  assert.ok(r.text.startsWith(TRANSFORMERS_TEXT), `llama.cpp continued ${JSON.stringify(r.text)}`);
});

test("stories260K: F32 next-token log-probabilities equal transformers' within 1e-4", async (t) => {
  const golden = JSON.parse(readFileSync(join(__dirname, "golden/stories260K-logprobs.json"), "utf8"));
  const lp = await logprobs(storiesFile("f32"), golden.ids);
  assert.equal(lp.length, golden.ids.length);
  let max = 0;
  lp.forEach((row, i) => {
    assert.equal(row.length, 512);
    row.forEach((v, t) => { max = Math.max(max, Math.abs(v - golden.logprobs[i][t])); });
  });
  t.diagnostic(`max |Δ log p| over ${lp.length} positions × 512 tokens: ${max.toExponential(2)}`);
  assert.ok(max < 1e-4, `max |Δ log p| = ${max}`);
});

test("stories260K: F32 next-token log-probabilities equal our engine's within 1e-4", async (t) => {
  // native/tests/test_gguf_engine_logits runs our engine's forward pass (CPU backend) on the golden prompt and
  // dumps its log-probabilities; it is built next to the engine binary.
  const helper = join(dirname(ENGINE), "test_gguf_engine_logits");
  assert.ok(existsSync(helper), `${helper} not built`);
  const dump = join(dir, "engine-logprobs.json");
  const r = spawnSync(helper, ["--dump", dump], { cwd: ROOT, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const engine = JSON.parse(readFileSync(dump, "utf8"));
  const lp = await logprobs(storiesFile("f32"), engine.ids);
  let max = 0;
  lp.forEach((row, i) => row.forEach((v, k) => { max = Math.max(max, Math.abs(v - engine.logprobs[i][k])); }));
  t.diagnostic(`llama.cpp vs engine: max |Δ log p| over ${lp.length} positions × 512 tokens: ${max.toExponential(2)}`);
  assert.ok(max < 1e-4, `max |Δ log p| = ${max}`);
});

test("stories260K: every preset loads in llama.cpp and generates; Q8_0 follows F32 greedily", async () => {
  const f32 = await greedy(storiesFile("f32"), "Once upon a time", 24);
  for (const type of PRESETS) {
    const r = await greedy(storiesFile(type), "Once upon a time", 24);
    assert.ok(r.ids.length >= 12, `${type}: generated only ${JSON.stringify(r.text)}`);
    if (type === "q8_0") assert.deepEqual(r.ids.slice(0, 16), f32.ids.slice(0, 16), `q8_0 diverged: ${JSON.stringify(r.text)}`);
  }
});

test("stories260K: metadata and tensor types as the converter + llama-quantize write them", () => {
  const h = readGgufHeader(storiesFile("q4_k_m"));
  assert.equal(h.version, 3);
  assert.equal(h.kv.get("general.architecture"), "llama");
  assert.equal(h.kv.get("general.file_type"), 15);
  assert.equal(h.kv.get("general.quantization_version"), 2);
  assert.equal(h.kv.get("llama.block_count"), 5);
  assert.equal(h.kv.get("llama.context_length"), 512);
  assert.equal(h.kv.get("llama.embedding_length"), 64);
  assert.equal(h.kv.get("llama.feed_forward_length"), 172);
  assert.equal(h.kv.get("llama.attention.head_count"), 8);
  assert.equal(h.kv.get("llama.attention.head_count_kv"), 4);
  assert.equal(h.kv.get("llama.rope.dimension_count"), 8);
  assert.equal(h.kv.get("llama.rope.freq_base"), 10000);
  assert.equal(h.kv.get("llama.attention.key_length"), 8);   // config.json gives head_dim explicitly
  assert.equal(h.kv.get("tokenizer.ggml.model"), "llama");
  assert.equal((h.kv.get("tokenizer.ggml.tokens") as string[]).length, 512);
  assert.equal(h.kv.get("tokenizer.ggml.bos_token_id"), 1);
  assert.equal(h.kv.get("tokenizer.ggml.eos_token_id"), 2);
  assert.equal(h.kv.get("tokenizer.ggml.add_bos_token"), true);
  const types = tensorTypes(h);
  assert.equal(types["output.weight"], undefined, "tied embeddings: no output.weight");
  // Rows of 64 and 172 are not multiples of 256: llama-quantize's fallbacks.
  assert.equal(types["token_embd.weight"], "Q8_0");      // tied → output rules: Q6_K → Q8_0
  assert.equal(types["blk.0.attn_q.weight"], "Q5_0");    // Q4_K → Q5_0
  assert.equal(types["blk.2.attn_v.weight"], "Q8_0");    // use_more_bits(2, 5): Q6_K → Q8_0
  assert.equal(types["blk.1.attn_v.weight"], "Q5_0");
  assert.equal(types["blk.0.ffn_down.weight"], "F16");   // 172 % 32 != 0: F16
  assert.equal(types["blk.0.attn_norm.weight"], "F32");
  const f32 = readGgufHeader(storiesFile("f32"));
  assert.ok(Object.values(tensorTypes(f32)).every((t) => t === "F32"));
  assert.equal(f32.kv.get("general.file_type"), 0);
});

// ---------------------------------------------------------------------------------------------------------------

test("synthetic 256-wide llama: llama-quantize's per-tensor types; every file runs within its quantization noise of F32", async (t) => {
  const model = join(dir, "syn-llama");
  writeRandomModel(model, { hidden: 256, intermediate: 512, layers: 8, heads: 4, kvHeads: 2, vocab: 512, tied: false }, 11);
  cpSync(join(STORIES, "tokenizer.json"), join(model, "tokenizer.json"));
  cpSync(join(STORIES, "tokenizer_config.json"), join(model, "tokenizer_config.json"));
  const tokenizer = ggufTokenizerMetadata(model);
  // use_more_bits(i, 8): i < 1 || i >= 7 || (i − 1) % 3 == 2 → layers 0, 3, 6, 7
  const more = new Set([0, 3, 6, 7]);
  const expect: Record<string, (name: string, layer: number) => string> = {
    q4_k_m: (n, l) => n === "output.weight" ? "Q6_K" : (n.includes("attn_v") || n.includes("ffn_down")) && more.has(l) ? "Q6_K" : "Q4_K",
    q5_k_m: (n, l) => n === "output.weight" ? "Q6_K" : (n.includes("attn_v") || n.includes("ffn_down")) && more.has(l) ? "Q6_K" : "Q5_K",
    q6_k: () => "Q6_K",
    q4_0: (n) => n === "output.weight" ? "Q6_K" : "Q4_0",
    q8_0: () => "Q8_0",
    f16: () => "F16",
  };
  exportGguf({ model, out: join(dir, "syn.f32.gguf"), type: "f32", tokenizer }, dir);
  const ids = [1, 403, 407, 261, 378, 432, 383];
  const ref = await logprobs(join(dir, "syn.f32.gguf"), ids);
  // Random weights give a flat next-token distribution, so instead of text we compare log-probabilities with
  // the F32 file: each type must stay within its quantization noise (a wrong scale or packing is far off).
  // Measured here: f16 0.005, q8_0 0.08, q6_k 0.24, q5_k_m 0.46, q4_k_m 0.82, q4_0 1.04 (max over 7 positions × 512).
  const tolerance: Record<string, number> = { f16: 0.02, q8_0: 0.15, q6_k: 0.4, q5_k_m: 0.7, q4_k_m: 1.2, q4_0: 1.5 };
  const deltas: Record<string, number> = {};
  for (const [type, rule] of Object.entries(expect)) {
    const out = join(dir, `syn.${type}.gguf`);
    exportGguf({ model, out, type, tokenizer }, dir);
    const h = readGgufHeader(out);
    for (const t of h.tensors) {
      const layer = /^blk\.(\d+)\./.exec(t.name);
      const want = t.ne.length === 1 ? "F32" : rule(t.name, layer ? Number(layer[1]) : -1);
      assert.equal(GGML_TYPE_NAMES[t.type], want, `${type}: ${t.name}`);
    }
    assert.equal(h.tensors.length, 1 + 8 * 9 + 2);
    const lp = await logprobs(out, ids);
    let max = 0;
    lp.forEach((row, i) => row.forEach((v, t) => { max = Math.max(max, Math.abs(v - ref[i][t])); }));
    assert.ok(max < tolerance[type], `${type}: max |Δ log p| vs F32 = ${max}`);
    deltas[type] = max;
  }
  t.diagnostic(`max |Δ log p| vs F32: ${JSON.stringify(Object.fromEntries(Object.entries(deltas).map(([k, v]) => [k, +v.toFixed(4)])))}`);
  // More bits, less noise: the error must shrink with the bit width.
  assert.ok(deltas.f16 < deltas.q8_0 && deltas.q8_0 < deltas.q6_k && deltas.q6_k < deltas.q5_k_m && deltas.q5_k_m < deltas.q4_k_m,
    JSON.stringify(deltas));
});

test("qwen2 and gemma synthetic models export and run (biases; norm +1, tied output)", async () => {
  for (const modelType of ["qwen2", "gemma"]) {
    const model = join(dir, `syn-${modelType}`);
    const extra = modelType === "gemma" ? { head_dim: 64 } : {};
    writeRandomModel(model, { hidden: 256, intermediate: 512, layers: 2, heads: 4, kvHeads: modelType === "gemma" ? 1 : 2, vocab: 512, tied: true, modelType, extra }, 21);
    cpSync(join(STORIES, "tokenizer.json"), join(model, "tokenizer.json"));
    cpSync(join(STORIES, "tokenizer_config.json"), join(model, "tokenizer_config.json"));
    const tokenizer = ggufTokenizerMetadata(model);
    for (const type of ["f32", "q4_k_m"]) {
      const out = join(dir, `syn-${modelType}.${type}.gguf`);
      exportGguf({ model, out, type, tokenizer }, dir);
      const h = readGgufHeader(out);
      assert.equal(h.kv.get("general.architecture"), modelType);
      const names = h.tensors.map((t) => t.name);
      assert.equal(names.includes("output.weight"), false);
      if (modelType === "qwen2") assert.ok(names.includes("blk.0.attn_q.bias") && names.includes("blk.1.attn_v.bias"));
      if (modelType === "gemma") assert.equal(h.kv.get("gemma.attention.key_length"), 64);
      const r = await greedy(out, "Once upon a time", 8);
      assert.ok(r.ids.length > 0, `${modelType} ${type}: nothing generated`);
    }
  }
});

test("gemma norms get +1 baked in; llama q/k rows are permuted, qwen2's are not", () => {
  const read = (file: string, name: string): Float32Array => {
    const h = readGgufHeader(file);
    const t = h.tensors.find((x) => x.name === name)!;
    const n = t.ne.reduce((a, b) => a * b, 1);
    const buf = readFileSync(file);
    return new Float32Array(buf.buffer.slice(buf.byteOffset + h.dataOffset + t.offset, buf.byteOffset + h.dataOffset + t.offset + 4 * n));
  };
  const st = (dirName: string, name: string): { shape: number[]; data: Float32Array } => {
    const buf = readFileSync(join(dir, dirName, "model.safetensors"));
    const hl = Number(buf.readBigUInt64LE(0));
    const hdr = JSON.parse(buf.toString("utf8", 8, 8 + hl));
    const [a, b] = hdr[name].data_offsets;
    return { shape: hdr[name].shape, data: new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + hl + a, buf.byteOffset + 8 + hl + b)) };
  };
  const gNorm = read(join(dir, "syn-gemma.f32.gguf"), "blk.0.attn_norm.weight");
  const hfNorm = st("syn-gemma", "model.layers.0.input_layernorm.weight").data;
  hfNorm.forEach((v, i) => assert.equal(gNorm[i], Math.fround(v + 1)));
  // llama: GGUF row h·d + 2i + j = HF row h·d + j·d/2 + i (d = 64)
  const q = st("syn-llama", "model.layers.1.self_attn.k_proj.weight");
  const gq = read(join(dir, "syn.f32.gguf"), "blk.1.attn_k.weight");
  const C = q.shape[1], d = 64;
  for (const [h, i, j] of [[0, 0, 1], [1, 5, 0], [1, 31, 1]]) {
    const newRow = h * d + 2 * i + j, oldRow = h * d + j * (d / 2) + i;
    assert.deepEqual(gq.slice(newRow * C, newRow * C + C), q.data.slice(oldRow * C, oldRow * C + C));
  }
  const qq = st("syn-qwen2", "model.layers.0.self_attn.q_proj.weight");
  assert.deepEqual(read(join(dir, "syn-qwen2.f32.gguf"), "blk.0.attn_q.weight"), qq.data);
});

test("Llama-3.1 rope scaling is written as rope_freqs.weight with the converter's factors", () => {
  const model = join(dir, "syn-llama31");
  const rope = { rope_type: "llama3", factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 };
  writeRandomModel(model, { hidden: 256, intermediate: 512, layers: 1, heads: 2, kvHeads: 1, vocab: 512, tied: true, extra: { rope_theta: 500000.0, rope_scaling: rope } }, 31);
  const tokenizer = ggufTokenizerMetadata(STORIES);
  const out = join(dir, "syn-llama31.gguf");
  exportGguf({ model, out, type: "f32", tokenizer }, dir);
  const h = readGgufHeader(out);
  const t = h.tensors.find((x) => x.name === "rope_freqs.weight");
  assert.ok(t, "rope_freqs.weight missing");
  assert.deepEqual(t!.ne, [64]);
  assert.equal(h.kv.get("llama.rope.freq_base"), 500000);
  const buf = readFileSync(out);
  const f = new Float32Array(buf.buffer.slice(buf.byteOffset + h.dataOffset + t!.offset, buf.byteOffset + h.dataOffset + t!.offset + 256));
  // The converter's formula (conversion/llama.py generate_extra_tensors), head_dim 128.
  for (let k = 0; k < 64; k++) {
    const freq = 1 / Math.pow(500000, (2 * k) / 128);
    const wavelen = (2 * Math.PI) / freq;
    const want = wavelen < 8192 / 4 ? 1 : wavelen > 8192 / 1 ? 8 : 1 / ((1 - (8192 / wavelen - 1) / 3) / 8 + (8192 / wavelen - 1) / 3);
    assert.ok(Math.abs(f[k] - want) <= 1e-5 * want, `rope_freqs[${k}] = ${f[k]}, want ${want}`);
  }
});

test("sharded BF16 checkpoints: tensors come from the right shard, BF16 stays bit-exact, the model still tells the story", async () => {
  // stories260K as BF16, split over two shards with an index (as transformers saves big models).
  const buf = readFileSync(join(STORIES, "model.safetensors"));
  const hl = Number(buf.readBigUInt64LE(0));
  const hdr = JSON.parse(buf.toString("utf8", 8, 8 + hl));
  const names = Object.keys(hdr).filter((k) => k !== "__metadata__").sort();
  const model = join(dir, "stories-bf16-sharded");
  mkdirSync(model, { recursive: true });
  const shards: Record<string, { shape: number[]; data: Uint16Array }>[] = [{}, {}];
  const weightMap: Record<string, string> = {};
  names.forEach((n, i) => {
    const [a, b] = hdr[n].data_offsets;
    const f32 = new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + hl + a, buf.byteOffset + 8 + hl + b));
    shards[i % 2][n] = { shape: hdr[n].shape, data: toBf16(f32) };
    weightMap[n] = `model-0000${(i % 2) + 1}-of-00002.safetensors`;
  });
  writeSafetensors(join(model, "model-00001-of-00002.safetensors"), shards[0]);
  writeSafetensors(join(model, "model-00002-of-00002.safetensors"), shards[1]);
  writeFileSync(join(model, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }));
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) cpSync(join(STORIES, f), join(model, f));
  const out = join(dir, "stories-bf16.bf16.gguf");
  exportGguf({ model, out, type: "bf16", tokenizer: ggufTokenizerMetadata(model) }, dir);
  const h = readGgufHeader(out);
  const file = readFileSync(out);
  const bf16Of = (name: string) => {
    const t = h.tensors.find((x) => x.name === name)!;
    assert.equal(GGML_TYPE_NAMES[t.type], "BF16");
    const n = t.ne.reduce((a, b) => a * b, 1);
    return new Uint16Array(file.buffer.slice(file.byteOffset + h.dataOffset + t.offset, file.byteOffset + h.dataOffset + t.offset + 2 * n));
  };
  const srcOf = (name: string) => shards[0][name]?.data ?? shards[1][name].data;
  assert.deepEqual(bf16Of("blk.3.ffn_up.weight"), srcOf("model.layers.3.mlp.up_proj.weight"));
  assert.deepEqual(bf16Of("token_embd.weight"), srcOf("model.embed_tokens.weight"));
  // The model still runs and tells the story (bf16 weights of an fp32-trained 260K model).
  const r = await greedy(out, "Once upon a time", 12);
  assert.ok(r.text.startsWith(", there was a little girl"), JSON.stringify(r.text));
});
