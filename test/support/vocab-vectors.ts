// vocab-vectors.ts — llama.cpp's tokenizer test vectors (../shared/fixtures/tokenizers/*/ggml-vocab-*.gguf.inp/.out):
// the inputs are separated by "\n__ggml_vocab_test__\n" (the file also ends with one), and each line of the .out
// file holds the expected ids of one input, without BOS. Shared by the HF-tokenizers and the GGUF tokenizer tests.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

export function vocabVectors(inp: string, out: string): Array<[string, number[]]> {
  const inputs = readFileSync(inp, "utf8").split("\n__ggml_vocab_test__\n");
  const outputs = readFileSync(out, "utf8").split("\n");
  assert.equal(inputs.pop(), "");
  assert.equal(outputs.pop(), "");
  assert.equal(inputs.length, outputs.length);
  return inputs.map((text, i) => [text, outputs[i].trim() === "" ? [] : outputs[i].trim().split(/\s+/).map(Number)]);
}
