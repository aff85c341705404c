// The stage executor around the engine: a stage that fails leaves no output (and no temp folder); one that
// succeeds swaps in a folder whose manifest lists its files, stored in the content store, and logs that it ran.
// The postTasksExecution hook relinks the big files of stages Nx restored from cache.
// A stand-in engine plays `finetune-engine init` here (the real one runs in test/e2e).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import stageExecutor from "../../plugins/nx-finetune/src/executors/stage";
import { postTasksExecution } from "../../plugins/nx-finetune/src/index";

let ws = "";
const saved = { engine: process.env.NXFT_ENGINE, store: process.env.NXFT_STORE };

before(() => {
  ws = mkdtempSync(join(tmpdir(), "nxft-exec-"));
  mkdirSync(join(ws, "recipes", "r", "base"), { recursive: true });
  writeFileSync(join(ws, "recipes", "r", "base", "config.json"), "{}");
  writeFileSync(join(ws, "recipes", "r", "base", "tokenizer.json"), "{}");
  writeFileSync(join(ws, "recipes", "r", "train.jsonl"), "{}\n");
  writeFileSync(join(ws, "recipes", "r", "recipe.json"), JSON.stringify({
    base: { init: "base/config.json", tokenizer: "base", seed: 3 },
    data: { path: "train.jsonl", format: "alpaca" },
    template: { name: "alpaca" }, lora: { r: 4 }, train: { steps: 1 }, export: { gguf: ["q8_0"] },
  }, null, 2));
  // init: writes model.safetensors into job.out; job.seed 3 = fail half-way (after writing a partial file).
  const engine = join(ws, "fake-engine");
  writeFileSync(engine, `#!/usr/bin/env node
const fs = require("fs"), path = require("path");
const job = JSON.parse(fs.readFileSync(process.argv[4], "utf8"));
const emit = (e) => process.stdout.write(JSON.stringify(e) + "\\n");
fs.writeFileSync(path.join(job.out, "model.safetensors"), "weights-" + job.seed);
if (process.env.FAKE_FAIL) { emit({ event: "error", message: "out of memory allocating 12 GiB", field: "config.hidden_size" }); process.exit(1); }
for (const f of job.tokenizer_files) fs.copyFileSync(f, path.join(job.out, path.basename(f)));
fs.copyFileSync(job.config, path.join(job.out, "config.json"));
emit({ event: "done", summary: { files: fs.readdirSync(job.out) } });
`);
  chmodSync(engine, 0o755);
  process.env.NXFT_ENGINE = engine;
  process.env.NXFT_STORE = join(ws, "store");
});

after(() => {
  for (const [k, v] of [["NXFT_ENGINE", saved.engine], ["NXFT_STORE", saved.store]] as const) {
    if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
});

const context = { root: "", projectName: "r", nxJsonConfiguration: {}, cwd: "", isVerbose: false } as unknown as ExecutorContext;
const outDir = () => join(ws, "recipes", "r", "out");

async function quietly<T>(fn: () => Promise<T>): Promise<{ result: T; text: string }> {
  const log = console.log, error = console.error;
  let text = "";
  console.log = console.error = (...a: unknown[]) => { text += a.join(" ") + "\n"; };
  try { return { result: await fn(), text }; } finally { console.log = log; console.error = error; }
}

test("a failing engine stage reports the engine's message and leaves no output, no temp folder", async () => {
  process.env.FAKE_FAIL = "1";
  const { result, text } = await quietly(() => stageExecutor({ recipe: "recipes/r/recipe.json", stage: "base" }, { ...context, root: ws }));
  delete process.env.FAKE_FAIL;
  assert.deepEqual(result, { success: false });
  assert.match(text, /r:base failed: finetune-engine init: out of memory allocating 12 GiB \(config\.hidden_size\)/);
  assert.ok(!existsSync(join(outDir(), "base")));
  assert.deepEqual(readdirSync(outDir()).filter((f) => f.startsWith(".tmp")), []);
  assert.ok(!existsSync(join(outDir(), "runs.log")), "a failed stage is not logged as run");
});

test("a recipe mistake fails the stage with file:line before anything runs", async () => {
  const file = join(ws, "recipes", "r", "recipe.json");
  const good = readFileSync(file, "utf8");
  writeFileSync(file, good.replace('"r": 4', '"r": 0'));
  const { result, text } = await quietly(() => stageExecutor({ recipe: "recipes/r/recipe.json", stage: "base" }, { ...context, root: ws }));
  writeFileSync(file, good);
  assert.deepEqual(result, { success: false });
  assert.match(text, /^recipes\/r\/recipe\.json:\d+:\d+ lora\.r: must be > 0 \(got 0\)$/m);
});

test("a successful stage commits its folder and manifest; postTasksExecution relinks files after a cache restore", async () => {
  const { result } = await quietly(() => stageExecutor({ recipe: "recipes/r/recipe.json", stage: "base" }, { ...context, root: ws }));
  assert.deepEqual(result, { success: true });
  const base = join(outDir(), "base");
  assert.deepEqual(readdirSync(base).sort(), ["config.json", "model.safetensors", "run.json", "stage-manifest.json", "tokenizer.json"]);
  const manifest = JSON.parse(readFileSync(join(base, "stage-manifest.json"), "utf8"));
  assert.deepEqual(manifest.files.map((f: { path: string }) => f.path), ["config.json", "model.safetensors", "tokenizer.json"]);
  assert.deepEqual(manifest.info, { kind: "init", seed: 3, dtype: "f32" });
  assert.match(readFileSync(join(outDir(), "runs.log"), "utf8"), /^\S+ base \d+\.\d+s\n$/);

  // What Nx leaves after restoring the task from its cache in a fresh clone: only the small outputs.
  rmSync(join(base, "model.safetensors"));
  const taskResult = (status: string) => ({ task: { id: "r:base", target: { project: "r", target: "base" }, projectRoot: "recipes/r", outputs: [], overrides: {} }, status, code: 0 });
  await postTasksExecution!({}, { id: "x", workspaceRoot: ws, nxJsonConfiguration: {}, argv: [], startTime: 0, endTime: 0,
                                  taskResults: { "r:base": taskResult("failure") } } as any);
  assert.ok(!existsSync(join(base, "model.safetensors")), "failed tasks are left alone");
  await postTasksExecution!({}, { id: "x", workspaceRoot: ws, nxJsonConfiguration: {}, argv: [], startTime: 0, endTime: 0,
                                  taskResults: { "r:base": taskResult("local-cache") } } as any);
  assert.equal(readFileSync(join(base, "model.safetensors"), "utf8"), "weights-3");
});
