// A pre-quantized bitsandbytes 4-bit base end to end, with the real nx and engine in a temp copy of the workspace:
// test/fixtures/bnb-nf4-tiny (saved by transformers + bitsandbytes: nf4, double quantization, bf16 quant_state; see
// test/parity/make_bnb_fixture.py) as a recipe's local base → dataset → shards → adapter (QLoRA on the 4-bit
// weights) → merged (dequantized + LoRA, f16, no quantization_config) → gguf, and llama.cpp (node-llama-cpp) loads
// and runs both GGUF files. A base with a quantization the engine cannot read fails recipe validation first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { greedy, logprobs } from "../gguf/gguf-helpers";
import { makeWorkspace, repoRoot, runNx, removeTestDirs } from "./temp-workspace";

const FIXTURE = join(repoRoot, "test", "fixtures", "bnb-nf4-tiny");
let ws = "", shared = "", engine = "";

// recipes/bnb: the demo's data and template on the fixture base; few steps (this checks the pipeline, not learning).
function addRecipe(dir: string): void {
  const recipeDir = join(dir, "recipes", "bnb");
  mkdirSync(recipeDir, { recursive: true });
  cpSync(FIXTURE, join(recipeDir, "base"), { recursive: true });
  const demo = JSON.parse(readFileSync(join(dir, "recipes", "demo", "recipe.json"), "utf8"));
  const recipe = {
    ...demo,
    description: "QLoRA on a pre-quantized bitsandbytes 4-bit base (test fixture)",
    base: "base",
    train: { ...demo.train, steps: 24, warmup_steps: 2, eval_every: 12 },
    quantize_base: null,
    export: { merged_dtype: "f16", gguf: ["f16", "q8_0"], adapter_gguf: false, ollama: false },
  };
  writeFileSync(join(recipeDir, "recipe.json"), JSON.stringify(recipe, null, 2) + "\n");
}

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-bnb-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, addRecipe);
});

after(() => removeTestDirs(shared));

test("a bitsandbytes 4-bit base runs recipe → adapter → merged → gguf, and llama.cpp runs the GGUF files", async () => {
  const r = runNx(ws, { shared, engine }, "run", "bnb:gguf");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /bitsandbytes 4-bit nf4 double-quantized/, "the base stage reports the quantization");
  const out = join(ws, "recipes", "bnb", "out");

  // adapter: trained on the 4-bit weights (the engine's start event), the loss fell
  const metrics = readFileSync(join(out, "adapter", "metrics.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const steps = metrics.filter((m) => m.event === "step");
  assert.equal(steps.length, 24);
  assert.ok(steps.at(-1).loss < steps[0].loss, `loss ${steps[0].loss} → ${steps.at(-1).loss}`);
  const run = JSON.parse(readFileSync(join(out, "adapter", "run.json"), "utf8"));
  assert.equal(run.summary.base_4bit, "bitsandbytes", "the engine trained QLoRA on the stored 4-bit weights");

  // merged: a plain f16 HF model (the quant-state tensors gone, config without quantization_config)
  const cfg = JSON.parse(readFileSync(join(out, "merged", "config.json"), "utf8"));
  assert.equal(cfg.quantization_config, undefined);
  assert.equal(cfg.dtype ?? cfg.torch_dtype, "float16");
  const st = readFileSync(join(out, "merged", "model.safetensors"));
  const header = JSON.parse(st.subarray(8, 8 + Number(st.readBigUInt64LE(0))).toString("utf8"));
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  assert.ok(!names.some((k) => /absmax|quant_map|quant_state/.test(k)), names.join(" "));
  assert.deepEqual(header["model.layers.0.mlp.up_proj.weight"], { ...header["model.layers.0.mlp.up_proj.weight"], dtype: "F16", shape: [128, 64] });

  // gguf: both files load in llama.cpp and run; their next-token distributions agree (the same model, q8_0 vs f16)
  const gguf = join(out, "gguf");
  assert.deepEqual(readdirSync(gguf).filter((f) => f.endsWith(".gguf")).sort(), ["bnb.f16.gguf", "bnb.q8_0.gguf"]);
  const ids = [1, 17, 99, 4, 250, 31, 7, 402];
  const [f16, q8] = [await logprobs(join(gguf, "bnb.f16.gguf"), ids), await logprobs(join(gguf, "bnb.q8_0.gguf"), ids)];
  assert.equal(f16.length, ids.length);
  let worst = 0;
  for (let i = 0; i < ids.length; i++) {
    const mass = f16[i].reduce((s, lp) => s + Math.exp(lp), 0);
    assert.ok(Math.abs(mass - 1) < 1e-3, `row ${i}: probabilities sum to ${mass}`);
    for (let t = 0; t < f16[i].length; t++) worst = Math.max(worst, Math.abs(f16[i][t] - q8[i][t]));
  }
  assert.ok(worst < 0.1, `q8_0 vs f16 log-probabilities differ by ${worst}`);
  const g = await greedy(join(gguf, "bnb.q8_0.gguf"), "What is the capital of France?", 8);
  assert.equal(typeof g.text, "string");
});

test("a base whose quantization_config the engine cannot read fails recipe validation, naming the field", () => {
  const base = join(ws, "recipes", "bnb", "base", "config.json");
  const cfg = JSON.parse(readFileSync(base, "utf8"));
  cfg.quantization_config = { quant_method: "gptq", bits: 4 };
  writeFileSync(base, JSON.stringify(cfg, null, 2));
  const r = runNx(ws, { shared, engine }, "run", "bnb:adapter");
  assert.notEqual(r.code, 0);
  assert.match(r.out, /quantization_config\.quant_method.*"gptq" is not supported/);
  assert.ok(existsSync(join(ws, "recipes", "bnb", "recipe.json")));
});
