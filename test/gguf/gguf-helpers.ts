// gguf-helpers.ts — shared by the test/gguf suites: paths, running the engine's export-gguf, a minimal GGUF
// header reader (metadata + tensor infos, to check what the exporter chose), a safetensors writer for synthetic
// models, a seeded RNG, and node-llama-cpp helpers (single-threaded: the CI machine has 2 cores and llama.cpp's
// spinning thread barrier crawls when cores are oversubscribed).
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const ROOT = resolve(__dirname, "../..");
export const FIXTURES = resolve(ROOT, "../shared/fixtures");
export const STORIES = join(FIXTURES, "models/stories260K-hf");
export const ENGINE = process.env.NXFT_ENGINE ?? join(ROOT, "native/build/finetune-engine");

export interface EngineRun { code: number; events: any[]; stderr: string }

export function runEngine(command: string, job: Record<string, unknown>, dir: string): EngineRun {
  if (!existsSync(ENGINE)) throw new Error(`engine not built: ${ENGINE} (set NXFT_ENGINE or build native/build)`);
  const jobPath = join(dir, `job-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(jobPath, JSON.stringify({ command, ...job }));
  const r = spawnSync(ENGINE, [command, "--job", jobPath], { encoding: "utf8", maxBuffer: 1 << 28 });
  const events = (r.stdout ?? "").split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l));
  return { code: r.status ?? -1, events, stderr: r.stderr ?? "" };
}

export function exportGguf(job: Record<string, unknown>, dir: string): any {
  const r = runEngine("export-gguf", { threads: 2, ...job }, dir);
  const done = r.events.find((e) => e.event === "done");
  if (r.code !== 0 || !done) {
    const err = r.events.find((e) => e.event === "error");
    throw new Error(`export-gguf failed (${r.code}): ${err ? err.message : r.stderr}`);
  }
  return done.summary;
}

// ---- GGUF header reader -------------------------------------------------------------------------------------

export interface GgufHeader {
  version: number;
  kv: Map<string, unknown>;
  tensors: { name: string; ne: number[]; type: number; offset: number }[];
  dataOffset: number;
}
export const GGML_TYPE_NAMES: Record<number, string> = {
  0: "F32", 1: "F16", 2: "Q4_0", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 30: "BF16",
};

export function readGgufHeader(path: string): GgufHeader {
  const fd = openSync(path, "r");
  let buf = Buffer.alloc(0);
  let pos = 0;
  const need = (n: number) => {
    while (buf.length < pos + n) {
      const chunk = Buffer.alloc(Math.max(1 << 20, n));
      const got = readSync(fd, chunk, 0, chunk.length, buf.length);
      if (got === 0) throw new Error(`${path}: truncated GGUF`);
      buf = Buffer.concat([buf, chunk.subarray(0, got)]);
    }
  };
  const u32 = () => { need(4); const v = buf.readUInt32LE(pos); pos += 4; return v; };
  const u64 = () => { need(8); const v = Number(buf.readBigUInt64LE(pos)); pos += 8; return v; };
  const str = () => { const n = u64(); need(n); const s = buf.toString("utf8", pos, pos + n); pos += n; return s; };
  const value = (t: number): unknown => {
    switch (t) {
      case 0: need(1); return buf.readUInt8(pos++);
      case 1: need(1); return buf.readInt8(pos++);
      case 2: need(2); pos += 2; return buf.readUInt16LE(pos - 2);
      case 3: need(2); pos += 2; return buf.readInt16LE(pos - 2);
      case 4: return u32();
      case 5: need(4); pos += 4; return buf.readInt32LE(pos - 4);
      case 6: need(4); pos += 4; return buf.readFloatLE(pos - 4);
      case 7: need(1); return buf.readUInt8(pos++) !== 0;
      case 8: return str();
      case 9: { const et = u32(); const n = u64(); const a: unknown[] = []; for (let i = 0; i < n; i++) a.push(value(et)); return a; }
      case 10: return u64();
      case 11: need(8); pos += 8; return Number(buf.readBigInt64LE(pos - 8));
      case 12: need(8); pos += 8; return buf.readDoubleLE(pos - 8);
      default: throw new Error(`${path}: unknown GGUF value type ${t}`);
    }
  };
  need(24);
  if (buf.toString("latin1", 0, 4) !== "GGUF") throw new Error(`${path}: not a GGUF file`);
  pos = 4;
  const version = u32();
  const nTensors = u64(), nKv = u64();
  const kv = new Map<string, unknown>();
  for (let i = 0; i < nKv; i++) { const k = str(); kv.set(k, value(u32())); }
  const tensors = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(u64());
    tensors.push({ name, ne, type: u32(), offset: u64() });
  }
  closeSync(fd);
  const align = (kv.get("general.alignment") as number | undefined) ?? 32;
  return { version, kv, tensors, dataOffset: Math.ceil(pos / align) * align };
}

export function tensorTypes(h: GgufHeader): Record<string, string> {
  const r: Record<string, string> = {};
  for (const t of h.tensors) r[t.name] = GGML_TYPE_NAMES[t.type] ?? `type${t.type}`;
  return r;
}

// ---- synthetic models -----------------------------------------------------------------------------------------

// Deterministic N(0, std) values (xorshift + Box-Muller), so synthetic models are the same on every run.
export function randn(n: number, seed: number, std: number): Float32Array {
  let s = (seed * 2654435761 + 1) >>> 0 || 1;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s + 0.5) / 4294967296; };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = next(), v = next();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v) * std;
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v) * std;
  }
  return out;
}

// fp32 → bf16 bits, round to nearest even (as torch's .to(torch.bfloat16)).
export function toBf16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16;
  return out;
}

// Tensors are F32 (Float32Array) or BF16 (Uint16Array of bf16 bits).
export function writeSafetensors(path: string, tensors: Record<string, { shape: number[]; data: Float32Array | Uint16Array }>): void {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let off = 0;
  const names = Object.keys(tensors);
  for (const n of names) {
    const bytes = tensors[n].data.byteLength;
    header[n] = { dtype: tensors[n].data instanceof Uint16Array ? "BF16" : "F32", shape: tensors[n].shape, data_offsets: [off, off + bytes] };
    off += bytes;
  }
  let h = JSON.stringify(header);
  while ((8 + Buffer.byteLength(h)) % 8 !== 0) h += " ";
  const hb = Buffer.from(h);
  const out = Buffer.alloc(8 + hb.length + off);
  out.writeBigUInt64LE(BigInt(hb.length), 0);
  hb.copy(out, 8);
  let p = 8 + hb.length;
  for (const n of names) {
    const d = tensors[n].data;
    Buffer.from(d.buffer, d.byteOffset, d.byteLength).copy(out, p);
    p += d.byteLength;
  }
  writeFileSync(path, out);
}

export interface LlamaShape {
  hidden: number; intermediate: number; layers: number; heads: number; kvHeads: number; vocab: number;
  tied: boolean; modelType?: string; extra?: Record<string, unknown>;
}

// An HF folder with a random llama-family model of the given shape (norms around 1, weights N(0, 0.05)).
export function writeRandomModel(dir: string, s: LlamaShape, seed: number): Record<string, { shape: number[]; data: Float32Array }> {
  mkdirSync(dir, { recursive: true });
  const hd = s.hidden / s.heads;
  const t: Record<string, { shape: number[]; data: Float32Array }> = {};
  let k = seed;
  const mat = (name: string, rows: number, cols: number) => { t[name] = { shape: [rows, cols], data: randn(rows * cols, k++, 0.05) }; };
  const norm = (name: string, n: number) => {
    const v = randn(n, k++, 0.1);
    for (let i = 0; i < n; i++) v[i] += s.modelType === "gemma" ? 0 : 1;
    t[name] = { shape: [n], data: v };
  };
  const vec = (name: string, n: number) => { t[name] = { shape: [n], data: randn(n, k++, 0.05) }; };
  mat("model.embed_tokens.weight", s.vocab, s.hidden);
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    norm(p + "input_layernorm.weight", s.hidden);
    mat(p + "self_attn.q_proj.weight", s.heads * hd, s.hidden);
    mat(p + "self_attn.k_proj.weight", s.kvHeads * hd, s.hidden);
    mat(p + "self_attn.v_proj.weight", s.kvHeads * hd, s.hidden);
    mat(p + "self_attn.o_proj.weight", s.hidden, s.heads * hd);
    if (s.modelType === "qwen2") {
      vec(p + "self_attn.q_proj.bias", s.heads * hd);
      vec(p + "self_attn.k_proj.bias", s.kvHeads * hd);
      vec(p + "self_attn.v_proj.bias", s.kvHeads * hd);
    }
    norm(p + "post_attention_layernorm.weight", s.hidden);
    mat(p + "mlp.gate_proj.weight", s.intermediate, s.hidden);
    mat(p + "mlp.up_proj.weight", s.intermediate, s.hidden);
    mat(p + "mlp.down_proj.weight", s.hidden, s.intermediate);
  }
  norm("model.norm.weight", s.hidden);
  if (!s.tied) mat("lm_head.weight", s.vocab, s.hidden);
  writeSafetensors(join(dir, "model.safetensors"), t);
  const arch = s.modelType === "qwen2" ? "Qwen2ForCausalLM" : s.modelType === "gemma" ? "GemmaForCausalLM" : "LlamaForCausalLM";
  writeFileSync(join(dir, "config.json"), JSON.stringify({
    architectures: [arch], model_type: s.modelType ?? "llama", hidden_size: s.hidden, intermediate_size: s.intermediate,
    num_hidden_layers: s.layers, num_attention_heads: s.heads, num_key_value_heads: s.kvHeads, vocab_size: s.vocab,
    max_position_embeddings: 256, rms_norm_eps: 1e-5, rope_theta: 10000.0, tie_word_embeddings: s.tied,
    hidden_act: s.modelType === "gemma" ? "gelu_pytorch_tanh" : "silu", torch_dtype: "float32", ...(s.extra ?? {}),
  }, null, 2));
  return t;
}

// ---- node-llama-cpp ----------------------------------------------------------------------------------------------

let llamaPromise: Promise<any> | undefined;
export function llama(): Promise<any> {
  llamaPromise ??= import("node-llama-cpp").then((m) => m.getLlama({ gpu: false, build: "never", logLevel: m.LlamaLogLevel.error }));
  return llamaPromise;
}

// Greedy continuation of `prompt` (BOS added by the model's own settings), `maxTokens` tokens.
export async function greedy(modelPath: string, prompt: string, maxTokens: number, lora?: { filePath: string; scale?: number }): Promise<{ text: string; ids: number[] }> {
  const { LlamaCompletion } = await import("node-llama-cpp");
  const l = await llama();
  const model = await l.loadModel({ modelPath });
  const ctx = await model.createContext({ contextSize: 256, threads: 1, flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", ...(lora ? { lora: { adapters: [lora] } } : {}) });
  try {
    const completion = new LlamaCompletion({ contextSequence: ctx.getSequence() });
    const text = await completion.generateCompletion(prompt, { maxTokens, temperature: 0 });
    return { text, ids: model.tokenize(text) };
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

// llama.cpp's next-token log-probabilities after each prefix of `ids` (ids[0..i] → row i).
export async function logprobs(modelPath: string, ids: number[], lora?: { filePath: string; scale?: number }): Promise<Float64Array[]> {
  const l = await llama();
  const model = await l.loadModel({ modelPath });
  const ctx = await model.createContext({ contextSize: 256, threads: 1, flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", ...(lora ? { lora: { adapters: [lora] } } : {}) });
  try {
    const seq = ctx.getSequence();
    const input = ids.map((id) => [id, { generateNext: { probabilities: true } }] as [number, any]);
    const res = await seq.controlledEvaluate(input);
    return res.map((r: any) => {
      const p: Map<number, number> = r.next.probabilities;
      const row = new Float64Array(p.size);
      for (const [tok, prob] of p) row[tok] = Math.log(prob);
      return row;
    });
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}
