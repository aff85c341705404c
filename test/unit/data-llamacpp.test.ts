// The demo tokenizer in llama.cpp: a vocab-only GGUF (llama SPM vocab, score of a merged piece = -(id - 259), as in
// stories260K.gguf) loaded by node-llama-cpp's prebuilt llama.cpp must tokenize exactly like our
// @huggingface/tokenizers path — the property the GGUF export relies on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { tokenizerFor } from "../../plugins/nx-finetune/src/data";

const ROOT = resolve(__dirname, "../..");
const DEMO = join(ROOT, "recipes/demo/base");

// Minimal GGUF v3 writer: key/value metadata only, no tensors (enough for llama.cpp's vocab_only load).
type Kv = [string, "u32" | "f32" | "bool" | "str", unknown] | [string, "arr", "str" | "f32" | "i32", unknown[]];
function gguf(kvs: Kv[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); parts.push(b); };
  const u64 = (v: number) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); parts.push(b); };
  const str = (s: string) => { const b = Buffer.from(s, "utf8"); u64(b.length); parts.push(b); };
  const T = { u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9 } as const;
  const scalar = (type: "u32" | "i32" | "f32" | "bool" | "str", v: any) => {
    if (type === "u32") u32(v);
    else if (type === "i32") { const b = Buffer.alloc(4); b.writeInt32LE(v); parts.push(b); }
    else if (type === "f32") { const b = Buffer.alloc(4); b.writeFloatLE(v); parts.push(b); }
    else if (type === "bool") parts.push(Buffer.from([v ? 1 : 0]));
    else str(v);
  };
  parts.push(Buffer.from("GGUF", "latin1"));
  u32(3);
  u64(0); // tensors
  u64(kvs.length);
  for (const kv of kvs) {
    str(kv[0]);
    u32(T[kv[1]]);
    if (kv[1] === "arr") { u32(T[kv[2]]); u64(kv[3].length); for (const v of kv[3]) scalar(kv[2], v); }
    else scalar(kv[1], kv[2]);
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([body, Buffer.alloc((32 - (body.length % 32)) % 32)]);
}

test("demo tokenizer: llama.cpp (SPM, scores -(id-259)) gives the same ids as our tokenizer", async (t) => {
  let getLlama: any;
  try {
    ({ getLlama } = await import("node-llama-cpp"));
  } catch {
    t.skip("node-llama-cpp is not installed");
    return;
  }
  const json = JSON.parse(readFileSync(join(DEMO, "tokenizer.json"), "utf8"));
  const vocab: Record<string, number> = json.model.vocab;
  const n = Math.max(...Object.values(vocab), ...json.added_tokens.map((a: any) => a.id)) + 1;
  const tokens: string[] = new Array(n), scores = new Array(n).fill(0), types = new Array(n).fill(1);
  for (const [p, id] of Object.entries(vocab)) { tokens[id] = p; if (id >= 259) scores[id] = -(id - 259); if (id >= 3 && id < 259) types[id] = 6; }
  for (const a of json.added_tokens) { tokens[a.id] = a.content; types[a.id] = a.id === 0 ? 2 : 3; }
  const file = join(mkdtempSync(join(tmpdir(), "nxft-gguf-")), "demo-vocab.gguf");
  writeFileSync(file, gguf([
    ["general.architecture", "str", "llama"],
    ["llama.context_length", "u32", 256], ["llama.embedding_length", "u32", 128], ["llama.block_count", "u32", 1],
    ["llama.feed_forward_length", "u32", 344], ["llama.attention.head_count", "u32", 4], ["llama.attention.head_count_kv", "u32", 2],
    ["llama.rope.dimension_count", "u32", 32], ["llama.attention.layer_norm_rms_epsilon", "f32", 1e-5],
    ["tokenizer.ggml.model", "str", "llama"],
    ["tokenizer.ggml.tokens", "arr", "str", tokens], ["tokenizer.ggml.scores", "arr", "f32", scores], ["tokenizer.ggml.token_type", "arr", "i32", types],
    ["tokenizer.ggml.unknown_token_id", "u32", 0], ["tokenizer.ggml.bos_token_id", "u32", 1], ["tokenizer.ggml.eos_token_id", "u32", 2],
    ["tokenizer.ggml.add_bos_token", "bool", true], ["tokenizer.ggml.add_space_prefix", "bool", true],
  ]));
  const llama = await getLlama({ gpu: false, build: "never", logLevel: "error" });
  const model = await llama.loadModel({ modelPath: file, vocabOnly: true });
  try {
    const tok = tokenizerFor(DEMO);
    const texts = [
      ...readFileSync(join(ROOT, "datasets/demo/train.jsonl"), "utf8").trim().split("\n").flatMap((l) => Object.values(JSON.parse(l)) as string[]).filter((s) => s !== ""),
      ...readFileSync(resolve(ROOT, "../shared/fixtures/text/tinystories_val_sample.txt"), "utf8").split("\n").filter((l) => l.trim()).slice(0, 200),
      "What is the capital of France?", "  two leading spaces", "tabs\tand ünïcode 🦙",
    ];
    let same = 0;
    for (const text of texts) {
      const ours = tok.encode(text);
      const theirs = Array.from(model.tokenize(text, false) as number[]);
      assert.deepEqual(theirs, ours, JSON.stringify(text));
      same++;
    }
    assert.ok(same > 250, `${same} texts compared`);
    console.log(`# llama.cpp == ours on ${same} texts`);
    // Special tokens in text (llama.cpp parse_special) map to the same ids, with "▁" after each special as HF does.
    const chat = "<|im_start|>user\nWhat colour is coal?<|im_end|>\n<|im_start|>assistant\n";
    assert.deepEqual(Array.from(model.tokenize(chat, true) as number[]), tok.encode(chat));
  } finally {
    await model.dispose();
  }
});
