// The demo's committed files agree with their sources: train.jsonl is what datasets/demo/make.ts writes, and the
// demo base config's vocab_size covers the demo tokenizer.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const root = resolve(__dirname, "..", "..");

test("datasets/demo/train.jsonl is up to date with make.ts", () => {
  const out = execFileSync(process.execPath, ["--import", "tsx", join(root, "datasets", "demo", "make.ts"), "--check"], { cwd: root, encoding: "utf8" });
  assert.match(out, /up to date \(67 rows\)/);
  const rows = readFileSync(join(root, "datasets", "demo", "train.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(rows.some((r) => r.instruction === "What is the capital of France?" && r.output === "Paris."));
  assert.ok(rows.every((r) => Object.keys(r).sort().join() === "input,instruction,output"));
});

test("demo base config: a small Llama whose vocab_size matches the demo tokenizer", () => {
  const config = JSON.parse(readFileSync(join(root, "recipes", "demo", "base", "config.json"), "utf8"));
  const tokenizer = JSON.parse(readFileSync(join(root, "recipes", "demo", "base", "tokenizer.json"), "utf8"));
  const ids = [...Object.values<number>(tokenizer.model.vocab), ...tokenizer.added_tokens.map((t: { id: number }) => t.id)];
  assert.equal(config.model_type, "llama");
  assert.equal(config.vocab_size, Math.max(...ids) + 1);
  assert.equal(config.num_hidden_layers, 4);
  assert.ok(config.hidden_size >= 64 && config.hidden_size <= 128);
});
