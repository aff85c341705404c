// A ChatML recipe on a base whose tokenizer has no <|im_start|> / <|im_end|> (the demo base without its two ChatML
// tokens, config vocab_size 510), with the real nx, engine and llama.cpp:
//   - without template.add_special_tokens the shards stage fails, naming the missing tokens and the option;
//   - with it, the tokens become ids 510 and 511 of a grown tokenizer, the adapter trains their rows (PEFT
//     trainable_token_indices), the merged model has 512 rows and the grown tokenizer, the GGUF lists them as
//     control tokens and llama.cpp tokenizes them as single tokens; chat answers through the new template.
import { test, before, after } from "node:test";
import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readGgufHeader } from "../gguf/gguf-helpers";
import { startFakeHub } from "../support/fake-hub";
import { makeWorkspace, nxBin, nxEnvironment, removeTestDirs, runNx } from "./temp-workspace";

let ws = "";
let shared = "";
const nx = (...args: string[]) => runNx(ws, { shared, engine: process.env.NXFT_ENGINE ?? "" }, ...args);
const out = (...p: string[]) => join(ws, "recipes", "chatml", "out", ...p);
const CHATML = ["<|im_start|>", "<|im_end|>"];

function recipe(addSpecialTokens: boolean) {
  return {
    base: { init: "base/config.json", tokenizer: "base", seed: 0 },
    data: { path: "../../datasets/demo/train.jsonl", format: "alpaca", eval_fraction: 0.1, split_seed: 0 },
    template: { name: "chatml", max_seq_len: 64, rows_per_shard: 16, ...(addSpecialTokens ? { add_special_tokens: true } : {}) },
    lora: { r: 16, alpha: 32, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
    train: { lr: 0.003, warmup_steps: 10, steps: 200, batch_size: 8, seed: 0 },
    export: { merged_dtype: "f16", gguf: ["f16"] },
    chat: { prompt: "What is the capital of France?", max_new_tokens: 16 },
  };
}

before(() => {
  const root = mkdtempSync(join(tmpdir(), "nxft-addtok-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, (dir) => {
    const demoBase = join(dir, "recipes", "demo", "base"), base = join(dir, "recipes", "chatml", "base");
    mkdirSync(base, { recursive: true });
    const config = JSON.parse(readFileSync(join(demoBase, "config.json"), "utf8"));
    writeFileSync(join(base, "config.json"), JSON.stringify({ ...config, vocab_size: 510 }, null, 2));
    const tok = JSON.parse(readFileSync(join(demoBase, "tokenizer.json"), "utf8"));
    tok.added_tokens = tok.added_tokens.filter((t: any) => !CHATML.includes(t.content));
    writeFileSync(join(base, "tokenizer.json"), JSON.stringify(tok, null, 2));
    const cfg = JSON.parse(readFileSync(join(demoBase, "tokenizer_config.json"), "utf8"));
    for (const [id, t] of Object.entries<any>(cfg.added_tokens_decoder)) if (CHATML.includes(t.content)) delete cfg.added_tokens_decoder[id];
    delete cfg.chat_template;
    writeFileSync(join(base, "tokenizer_config.json"), JSON.stringify(cfg, null, 2));
    writeFileSync(join(dir, "recipes", "chatml", "recipe.json"), JSON.stringify(recipe(false), null, 2) + "\n");
  });
});

after(() => removeTestDirs(shared));

test("a ChatML template on a base without its tokens fails at shards and names template.add_special_tokens", () => {
  const r = nx("run", "chatml:shards");
  assert.notEqual(r.code, 0, r.out);
  assert.match(r.out, /template "chatml" needs the special tokens <\|im_start\|>, <\|im_end\|>, which the tokenizer in \S+ does not have \(template\.name\)\. With this base use template\.add_special_tokens: true/);
});

test("template.add_special_tokens: trained token rows through adapter, merge, GGUF, llama.cpp and chat", async () => {
  writeFileSync(join(ws, "recipes", "chatml", "recipe.json"), JSON.stringify(recipe(true), null, 2) + "\n");
  const r = nx("run", "chatml:gguf");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /added <\|im_start\|> \(id 510\), <\|im_end\|> \(id 511\) to the tokenizer/);

  const shards = JSON.parse(readFileSync(out("shards", "manifest.json"), "utf8"));
  assert.deepEqual(shards.added_tokens, [{ id: 510, content: "<|im_start|>" }, { id: 511, content: "<|im_end|>" }]);
  assert.equal(shards.vocab_size, 512);
  assert.deepEqual(shards.stop_ids.slice(0, 1), [511]);

  // the demo base has its own lm_head: both the embedding and the head rows are trained
  const adapterConfig = JSON.parse(readFileSync(out("adapter", "adapter_config.json"), "utf8"));
  assert.deepEqual(adapterConfig.trainable_token_indices, { embed_tokens: [510, 511], lm_head: [510, 511] });

  const merged = JSON.parse(readFileSync(out("merged", "config.json"), "utf8"));
  assert.equal(merged.vocab_size, 512);
  const mergedTok = JSON.parse(readFileSync(out("merged", "tokenizer.json"), "utf8"));
  assert.deepEqual(mergedTok.added_tokens.filter((t: any) => t.id >= 510).map((t: any) => [t.id, t.content, t.special]),
                   [[510, "<|im_start|>", true], [511, "<|im_end|>", true]]);
  const mergedTokConfig = JSON.parse(readFileSync(out("merged", "tokenizer_config.json"), "utf8"));
  assert.match(mergedTokConfig.chat_template, /<\|im_start\|>/);

  const gguf = out("gguf", "chatml.f16.gguf");
  const header = readGgufHeader(gguf);
  const tokens = header.kv.get("tokenizer.ggml.tokens") as string[];
  const types = header.kv.get("tokenizer.ggml.token_type") as number[];
  assert.equal(tokens.length, 512);
  assert.deepEqual([tokens[510], tokens[511], types[510], types[511]], ["<|im_start|>", "<|im_end|>", 3, 3]);   // 3: control

  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: gguf });
  try {
    const ids = Array.from(model.tokenize("<|im_start|>user\nhi<|im_end|>", true));
    assert.equal(ids[0], 510, JSON.stringify(ids));
    assert.equal(ids.at(-1), 511, JSON.stringify(ids));
    assert.equal(ids.filter((id) => id >= 510).length, 2, JSON.stringify(ids));
  } finally {
    await model.dispose();
  }

  const chat = nx("run", "chatml:chat");
  assert.equal(chat.code, 0, chat.out);
  assert.match(chat.out, /Paris/);
});

test("eval measures the base with the grown vocabulary; publish puts the grown tokenizer beside the adapter", async () => {
  const ev = nx("run", "chatml:eval");
  assert.equal(ev.code, 0, ev.out);
  const metrics = JSON.parse(readFileSync(out("eval", "metrics.json"), "utf8")).metrics;
  for (const k of ["base_eval_loss", "eval_loss", "merged_eval_loss"]) assert.equal(typeof metrics[k], "number", `${k}: ${metrics[k]}`);
  assert.ok(metrics.eval_loss < metrics.base_eval_loss, JSON.stringify(metrics));

  const TOKEN = "hf_fake_addtok_SECRET";
  const hub = await startFakeHub(TOKEN);
  try {
    // asynchronously: the fake Hub answers from this process
    const r = await new Promise<{ code: number; out: string }>((resolve) => {
      const env = nxEnvironment(ws, { shared, engine: process.env.NXFT_ENGINE ?? "", extra: { HF_ENDPOINT: hub.url, HF_TOKEN: TOKEN } });
      const child = spawn(process.execPath, [nxBin(), "run", "chatml:publish", "--repo=me/chatml", "--outputStyle=stream"], { cwd: ws, env });
      let text = "";
      child.stdout.on("data", (d) => (text += d));
      child.stderr.on("data", (d) => (text += d));
      child.on("close", (code) => resolve({ code: code ?? -1, out: text }));
    });
    assert.equal(r.code, 0, r.out);
    const files = [...hub.repos.get("me/chatml")!.files.keys()].sort();
    for (const f of ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "chatml.f16.gguf", "README.md"]) {
      assert.ok(files.includes(f), `${f} not in ${files}`);
    }
    assert.ok(hub.repos.get("me/chatml")!.files.get("tokenizer.json")!.equals(readFileSync(out("shards", "tokenizer.json"))));
  } finally {
    await hub.close();
  }
});
