// engine.gpus through the plugin: the recipe field (schema, file:line:field errors, cache inputs unchanged for
// recipes without it) and the adapter stage starting one engine per rank (backend "cpu" + gpus 2: two CPU
// processes on the cpu collective), whose adapter equals one process with 2-fold accumulation bit for bit, and
// whose failing rank fails the stage with that rank's message and no hang. docs/multi-gpu.md has the design.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { CreateNodesContext, CreateNodesResult } from "@nx/devkit";
import { runStages as runStagesIn } from "../support/run-stages";
import { createNodes } from "../../plugins/nx-finetune/src/index";
import { parseRecipe, RecipeError } from "../../plugins/nx-finetune/src/recipe";
import { rankPlan } from "../../plugins/nx-finetune/src/stages/adapter-ranks";
import type { StageContext } from "../../plugins/nx-finetune/src/stage-context";

const repo = resolve(__dirname, "..", "..");
const engine = process.env.NXFT_ENGINE || join(repo, "native", "build", "finetune-engine");
const skip = !existsSync(engine) && "no engine";
const demoBase = join(repo, "recipes", "demo", "base");
let ws = "";
const saved = { engine: process.env.NXFT_ENGINE, store: process.env.NXFT_STORE, fail: process.env.NXFT_DIST_FAIL_AT };

function recipe(train: Record<string, unknown>, engineSettings: Record<string, unknown>) {
  return {
    base: { init: join(demoBase, "config.json"), tokenizer: demoBase },
    data: { path: "../../train.jsonl", format: "alpaca" },
    template: { name: "alpaca", max_seq_len: 128, packing: true },
    lora: { r: 4, alpha: 8, targets: ["q_proj", "v_proj", "down_proj"] },
    train: { steps: 3, lr: 0.002, seed: 1, ...train },
    export: { gguf: ["q8_0"] },
    engine: { backend: "cpu", threads: 2, ...engineSettings },
  };
}

function writeRecipe(name: string, r: unknown): void {
  mkdirSync(join(ws, "recipes", name), { recursive: true });
  writeFileSync(join(ws, "recipes", name, "recipe.json"), JSON.stringify(r, null, 2) + "\n");
}

before(() => {
  ws = mkdtempSync(join(tmpdir(), "nxft-dist-adapter-"));
  writeFileSync(join(ws, "train.jsonl"), Array.from({ length: 24 }, (_, i) =>
    JSON.stringify({ instruction: `What is ${i} plus ${i}?`, output: `It is ${2 * i}.` })).join("\n") + "\n");
  process.env.NXFT_ENGINE = engine;
  process.env.NXFT_STORE = join(ws, "store");
});

after(() => {
  for (const [k, v] of [["NXFT_ENGINE", saved.engine], ["NXFT_STORE", saved.store], ["NXFT_DIST_FAIL_AT", saved.fail]] as const) {
    if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
  if (ws) rmSync(ws, { recursive: true, force: true });
});

const runStages = (project: string, stages: string[]) => runStagesIn(ws, project, stages);

test("engine.gpus: a number ≥ 1 or \"all\", and a divisor of train.batch_size; errors name file, line and field", () => {
  const issues = (r: unknown) => {
    const src = JSON.stringify(r, null, 2) + "\n";
    try { parseRecipe(src, "recipes/x/recipe.json"); } catch (e) { assert.ok(e instanceof RecipeError); return { src, issues: e.issues }; }
    return { src, issues: [] };
  };
  assert.deepEqual(issues(recipe({ batch_size: 4 }, { gpus: 2 })).issues, []);
  assert.deepEqual(issues(recipe({ batch_size: 4 }, { gpus: "all" })).issues, []);
  const odd = issues(recipe({ batch_size: 4 }, { gpus: 3 }));
  assert.equal(odd.issues.length, 1);
  assert.equal(odd.issues[0].field, "engine.gpus");
  assert.equal(odd.issues[0].line, odd.src.split("\n").findIndex((l) => l.includes('"gpus"')) + 1);
  assert.match(odd.issues[0].message, /train\.batch_size \(4\) must be a multiple of engine\.gpus \(3\)/);
  assert.match(issues(recipe({}, { gpus: 0 })).issues[0].message, /must be ≥ 1/);
  assert.match(issues(recipe({}, { gpus: "two" })).issues[0].message, /must be one of "all"/);
});

test("recipes without engine.gpus (or with 1) keep the adapter's cache inputs; gpus 2 adds the field", async () => {
  const files: Record<string, unknown> = {
    "recipes/plain/recipe.json": recipe({ batch_size: 4 }, {}),
    "recipes/one/recipe.json": recipe({ batch_size: 4 }, { gpus: 1 }),
    "recipes/two/recipe.json": recipe({ batch_size: 4 }, { gpus: 2 }),
  };
  const root = mkdtempSync(join(tmpdir(), "nxft-dist-nodes-"));
  writeFileSync(join(root, "train.jsonl"), "{}\n");
  for (const [p, c] of Object.entries(files)) { mkdirSync(join(root, p, ".."), { recursive: true }); writeFileSync(join(root, p), JSON.stringify(c, null, 2)); }
  const context: CreateNodesContext = { nxJsonConfiguration: {}, workspaceRoot: root };
  const results = (await createNodes[1](Object.keys(files), {}, context)) as Array<readonly [string, CreateNodesResult]>;
  const adapter = (name: string) => results.find(([f]) => f === `recipes/${name}/recipe.json`)![1].projects![`recipes/${name}`].targets!.adapter;
  const fields = (name: string) => (adapter(name).inputs as any[]).find((i) => i.json).fields;
  assert.deepEqual(fields("plain"), ["lora", "train", "quantize_base", "engine.backend"], "the same fields as before engine.gpus existed");
  // What Nx hashes for the task: its inputs and options (the help text differs only by the project's name).
  assert.deepEqual(adapter("one").inputs, adapter("plain").inputs, "gpus 1 is today's single process: same inputs, same hash");
  assert.deepEqual(adapter("one").options, adapter("plain").options);
  assert.deepEqual(fields("two"), ["lora", "train", "quantize_base", "engine.backend", "engine.gpus"]);
  rmSync(root, { recursive: true, force: true });
});

test("rank plans: GPUs here, \"all\" from CUDA_VISIBLE_DEVICES, several hosts from NXFT_NNODES / NODE_RANK / MASTER_*", async () => {
  const keys = ["NXFT_NNODES", "NXFT_NODE_RANK", "NXFT_MASTER_ADDR", "NXFT_MASTER_PORT", "CUDA_VISIBLE_DEVICES"];
  const before = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
  const ctx = (gpus: unknown, batch = 4, backend = "cuda") =>
    ({ recipeFile: "/w/recipes/x/recipe.json", recipe: { engine: { backend, threads: 0, gpus }, train: { batch_size: batch } } }) as unknown as StageContext;
  try {
    for (const k of keys) delete process.env[k];
    assert.deepEqual(await rankPlan(ctx(undefined)), { world: 1, local: 1, rankOffset: 0 });
    assert.deepEqual(await rankPlan(ctx(2)), { world: 2, local: 2, rankOffset: 0 });
    process.env.CUDA_VISIBLE_DEVICES = "0,1,3";
    assert.deepEqual(await rankPlan(ctx("all", 6)), { world: 3, local: 3, rankOffset: 0 });
    await assert.rejects(rankPlan(ctx("all", 4)), /engine\.gpus: "all" is 3 GPUs here, and train\.batch_size \(4\) is not a multiple of it/);
    await assert.rejects(rankPlan(ctx("all", 4, "cpu")), /recipe\.json: engine\.gpus: "all" counts GPUs, but engine\.backend is "cpu"/);
    Object.assign(process.env, { NXFT_NNODES: "2", NXFT_NODE_RANK: "1" });
    await assert.rejects(rankPlan(ctx(2)), /NXFT_NNODES=2: set NXFT_MASTER_ADDR and NXFT_MASTER_PORT/);
    Object.assign(process.env, { NXFT_MASTER_ADDR: "10.0.0.1", NXFT_MASTER_PORT: "29500" });
    assert.deepEqual(await rankPlan(ctx(2)), { world: 4, local: 2, rankOffset: 2, master: { addr: "10.0.0.1", port: 29500 } });
    process.env.NXFT_NODE_RANK = "2";
    await assert.rejects(rankPlan(ctx(2)), /NXFT_NODE_RANK=2 must be below NXFT_NNODES=2/);
  } finally {
    for (const k of keys) if (before[k] === undefined) delete process.env[k]; else process.env[k] = before[k];
  }
});

test("gpus 2 on the cpu backend: two engine processes, the adapter of one process with 2-fold accumulation, bit for bit", { skip, timeout: 300_000 }, async () => {
  writeRecipe("single", recipe({ batch_size: 2, grad_accum: 2 }, {}));
  writeRecipe("ranks", recipe({ batch_size: 4, grad_accum: 1 }, { gpus: 2 }));
  const single = await runStages("single", ["base", "dataset", "shards", "adapter"]);
  assert.ok(single.ok, single.text);
  const ranks = await runStages("ranks", ["base", "dataset", "shards", "adapter"]);
  assert.ok(ranks.ok, ranks.text);
  assert.match(ranks.text, /data-parallel over 2 rank\(s\), 2 on this host \(ranks 0…1\), 2 row\(s\) of each micro-batch per rank/);
  const adapterFile = (p: string) => readFileSync(join(ws, "recipes", p, "out", "adapter", "adapter_model.safetensors"));
  assert.ok(adapterFile("single").equals(adapterFile("ranks")), "the adapters differ");
  const run = JSON.parse(readFileSync(join(ws, "recipes", "ranks", "out", "adapter", "run.json"), "utf8"));
  assert.equal(JSON.stringify(run).includes('"world_size":2'), true, "run.json records the rank count");
  // The rendezvous folder is gone; each rank's job file stays for debugging.
  const jobs = readdirSync(join(ws, "recipes", "ranks", "out", ".jobs"));
  assert.ok(jobs.includes("train.rank-0.json") && jobs.includes("train.rank-1.json"), jobs.join(", "));
  assert.ok(!jobs.some((f) => f.startsWith("train-rendezvous-")), jobs.join(", "));
});

test("a failing rank fails the stage with its own message, the other rank is stopped, nothing is committed", { skip, timeout: 120_000 }, async () => {
  writeRecipe("broken", recipe({ batch_size: 4, steps: 4, seed: 2 }, { gpus: 2 }));
  assert.ok((await runStages("broken", ["base", "dataset", "shards"])).ok);
  process.env.NXFT_DIST_FAIL_AT = "1:2";
  const t0 = Date.now();
  try {
    const r = await runStages("broken", ["adapter"]);
    assert.equal(r.ok, false);
    assert.match(r.text, /rank 1 of 2: finetune-engine train: NXFT_DIST_FAIL_AT: rank 1 fails at step 2 as asked/);
    assert.ok(!/dist\.peer/.test(r.text.split("\n").find((l) => l.includes("rank 1 of 2")) ?? ""), "the peer's follow-up error is not the one reported");
  } finally {
    delete process.env.NXFT_DIST_FAIL_AT;
  }
  assert.ok(Date.now() - t0 < 60_000, "no hang");
  assert.ok(!existsSync(join(ws, "recipes", "broken", "out", "adapter", "adapter_model.safetensors")));
});
