// template.add_special_tokens in the shards stage (src/data/added-tokens.ts): the demo tokenizer (vocab 512, ChatML
// tokens but no Llama-3 ones) with the llama3 template gets its four special tokens as ids 512–515, in a grown
// tokenizer folder written next to the shards that tokenizes them as single tokens; a template whose tokens the base
// has adds nothing and leaves no tokenizer files behind; the recipe refuses an adapter GGUF with added tokens.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseShard, runDatasetStage, runShardsStage, tokenizerFor } from "../../plugins/nx-finetune/src/data";
import { loadRecipe } from "../../plugins/nx-finetune/src/recipe";

const ROOT = resolve(__dirname, "../..");
const DEMO = join(ROOT, "recipes/demo/base");
const LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"];

async function dataset(dir: string) {
  const rows = ["What is the capital of France?", "Name a colour.", "Count to three."].map((q, i) =>
    JSON.stringify({ instruction: q, input: "", output: ["Paris.", "Blue.", "One, two, three."][i] }));
  writeFileSync(join(dir, "d.jsonl"), rows.join("\n") + "\n");
  await runDatasetStage({ recipePath: join(dir, "recipe.json"), data: { path: "d.jsonl", format: "alpaca" }, outDir: join(dir, "ds"), workspaceRoot: dir });
  return join(dir, "ds");
}

test("llama3 on the demo tokenizer: four tokens appended, tokenized as single ids, listed in the manifest", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-addtok-"));
  const ds = await dataset(dir);
  const out = join(dir, "shards");
  const template = { name: "llama3" as const, max_seq_len: 64 };
  await assert.rejects(runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: out }),
                       /template "llama3" needs the special tokens <\|begin_of_text\|>, .*template\.add_special_tokens: true/);

  const m = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: out, addSpecialTokens: true });
  assert.deepEqual(m.added_tokens, LLAMA3_SPECIALS.map((content, i) => ({ id: 512 + i, content })));
  assert.equal(m.vocab_size, 516);
  assert.deepEqual(m.stop_ids, [515, 2]);   // <|eot_id|>, then EOS
  const tok = tokenizerFor(out);
  for (const [i, s] of LLAMA3_SPECIALS.entries()) assert.deepEqual(tok.encode(s), [512 + i]);
  const config = JSON.parse(readFileSync(join(out, "tokenizer_config.json"), "utf8"));
  assert.equal(config.added_tokens_decoder["515"].content, "<|eot_id|>");
  assert.equal(config.added_tokens_decoder["515"].special, true);
  assert.match(config.chat_template, /<\|start_header_id\|>/);
  // the base folder is untouched
  assert.equal(tokenizerFor(DEMO).tokenId("<|eot_id|>"), undefined);

  // every row starts with <|begin_of_text|> and each response ends with <|eot_id|>, as single tokens
  const shard = parseShard(readFileSync(join(out, m.shards[0].file)), m.shards[0].file);
  const T = shard.seqLen;
  for (let r = 0; r < shard.nRows; r++) {
    const row = Array.from(shard.tokens.subarray(r * T, (r + 1) * T));
    const targets = Array.from(shard.targets.subarray(r * T, (r + 1) * T));
    assert.equal(row[0], 512);
    assert.ok(targets.includes(515), `row ${r} never predicts <|eot_id|>`);
    assert.equal(row.filter((id) => id === 513).length, 2);   // a user and an assistant header
  }

  // a template the base has every token of: nothing added, the grown tokenizer's files removed from the folder
  const again = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "chatml", max_seq_len: 64 }, outDir: out, addSpecialTokens: true });
  assert.equal(again.added_tokens, undefined);
  assert.equal(again.vocab_size, 512);
  assert.ok(!existsSync(join(out, "tokenizer.json")));
});

test("recipe: template.add_special_tokens with export.adapter_gguf is an error naming the field", () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-addtok-recipe-"));
  writeFileSync(join(dir, "recipe.json"), JSON.stringify({
    base: DEMO, data: { path: join(ROOT, "datasets/demo/train.jsonl"), format: "alpaca" },
    template: { name: "llama3", add_special_tokens: true }, lora: { r: 8 }, train: { steps: 10 },
    export: { gguf: ["q8_0"], adapter_gguf: true },
  }, null, 2));
  assert.throws(() => loadRecipe(join(dir, "recipe.json"), dir), /export\.adapter_gguf: a GGUF LoRA adapter cannot carry the token rows template\.add_special_tokens trains/);
});
