// Bad export-gguf input fails with an `error` event that names the problem (and the file/field), exit code 1,
// and no output file (nor temp file) left behind.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ggufTokenizerMetadata } from "../../plugins/nx-finetune/src/gguf";
import { STORIES, runEngine, writeRandomModel } from "./gguf-helpers";

let dir: string;
let tokenizer: any;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "nxft-gguf-err-"));
  tokenizer = ggufTokenizerMetadata(STORIES);
});
after(() => rmSync(dir, { recursive: true, force: true }));

function expectFailure(job: Record<string, unknown>, pattern: RegExp, field?: string) {
  const outDir = mkdtempSync(join(dir, "out-"));
  const out = join(outDir, "model.gguf");
  const r = runEngine("export-gguf", { out, threads: 1, ...job }, dir);
  assert.equal(r.code, 1, `exit code ${r.code}; stderr: ${r.stderr}`);
  const err = r.events.find((e) => e.event === "error");
  assert.ok(err, "no error event");
  assert.match(err.message, pattern);
  if (field) assert.equal(err.field, field);
  assert.equal(existsSync(out), false, "an output file was written");
  assert.deepEqual(readdirSync(outDir), [], "something was left in the output folder");
  assert.equal(r.events.some((e) => e.event === "done"), false);
}

function modelVariant(name: string, edit: (cfg: any) => void, tensors?: (dir: string) => void): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  for (const f of ["model.safetensors", "tokenizer.json", "tokenizer_config.json"]) cpSync(join(STORIES, f), join(d, f));
  const cfg = JSON.parse(readFileSync(join(STORIES, "config.json"), "utf8"));
  edit(cfg);
  writeFileSync(join(d, "config.json"), JSON.stringify(cfg));
  tensors?.(d);
  return d;
}

test("unknown architecture", () => {
  const m = modelVariant("gpt2", (c) => { c.model_type = "gpt2"; c.architectures = ["GPT2LMHeadModel"]; });
  expectFailure({ model: m, type: "f16", tokenizer }, /config\.json.*model_type.*gpt2/);
});

test("missing tokenizer object", () => {
  expectFailure({ model: STORIES, type: "q8_0" }, /tokenizer/, "tokenizer");
});

test("tokenizer that does not match the model's vocabulary", () => {
  const t = { ...tokenizer, tokens: tokenizer.tokens.slice(0, 500), scores: tokenizer.scores.slice(0, 500), token_types: tokenizer.token_types.slice(0, 500) };
  expectFailure({ model: STORIES, type: "f32", tokenizer: t }, /500 entries.*512 rows/);
});

test("malformed tokenizer fields name the field", () => {
  expectFailure({ model: STORIES, type: "f32", tokenizer: { ...tokenizer, scores: [1, 2, 3] } }, /scores.*3 entries/, "tokenizer.scores");
  expectFailure({ model: STORIES, type: "f32", tokenizer: { ...tokenizer, model: "wordpiece" } }, /tokenizer\.model/, "tokenizer.model");
  expectFailure({ model: STORIES, type: "f32", tokenizer: { ...tokenizer, eos_id: 9999 } }, /outside the vocabulary/, "tokenizer.eos_id");
  expectFailure({ model: STORIES, type: "f32", tokenizer: { ...tokenizer, surprise: 1 } }, /surprise/);
});

test("unknown GGUF type", () => {
  expectFailure({ model: STORIES, type: "q3_k_s", tokenizer }, /type/, "type");
});

test("tensor shapes that contradict config.json", () => {
  const m = modelVariant("wrong-ffn", (c) => { c.intermediate_size = 176; });
  expectFailure({ model: m, type: "f16", tokenizer }, /gate_proj\.weight has shape \[172, 64\] but config\.json implies \[176, 64\]/);
});

test("missing and unexpected tensors", () => {
  const missing = join(dir, "missing");
  writeRandomModel(missing, { hidden: 64, intermediate: 128, layers: 2, heads: 2, kvHeads: 1, vocab: 512, tied: true }, 3);
  const cfg = JSON.parse(readFileSync(join(missing, "config.json"), "utf8"));
  cfg.num_hidden_layers = 3;
  writeFileSync(join(missing, "config.json"), JSON.stringify(cfg));
  expectFailure({ model: missing, type: "f16", tokenizer }, /missing tensor model\.layers\.2\./);
  const extra = join(dir, "extra");
  writeRandomModel(extra, { hidden: 64, intermediate: 128, layers: 2, heads: 2, kvHeads: 1, vocab: 512, tied: true }, 3);
  cfg.num_hidden_layers = 1;
  writeFileSync(join(extra, "config.json"), JSON.stringify(cfg));
  expectFailure({ model: extra, type: "f16", tokenizer }, /model\.layers\.1\..* has no GGUF mapping/);
});

test("output folder that does not exist", () => {
  const r = runEngine("export-gguf", { model: STORIES, out: join(dir, "nope/x.gguf"), type: "f32", tokenizer }, dir);
  assert.equal(r.code, 1);
  assert.match(r.events.find((e) => e.event === "error").message, /does not exist/);
});
