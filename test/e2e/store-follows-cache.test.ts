// Artifacts follow the Nx cache, with the real nx and engine in temp copies of the workspace:
//   - a second clone that shares the Nx cache (~/.nx/<workspace id>/cache, as every clone of a workspace does) but
//     not the content store ends with exit 0 and the GGUF files: the stages whose blobs are missing rerun, saying so;
//   - a training run killed with SIGKILL after a checkpoint resumes on the next `nx run` from that checkpoint and ends
//     with the same adapter bytes as an uninterrupted run; a torn checkpoint folder is never taken for one.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { cloneWorkspace, makeWorkspace, nxBin, nxEnvironment, repoRoot, runNx, removeTestDirs, type NxEnv } from "./temp-workspace";

const STAGES = ["adapter", "base", "dataset", "gguf", "merged", "shards"];
let root = "", engine = "";
const sharedDirs: string[] = [];

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  root = mkdtempSync(join(tmpdir(), "nxft-follow-"));
});
after(() => { for (const s of sharedDirs) removeTestDirs(s); });

function editRecipe(dir: string, edit: (r: any) => void): void {
  const file = join(dir, "recipes", "demo", "recipe.json");
  const recipe = JSON.parse(readFileSync(file, "utf8"));
  edit(recipe);
  writeFileSync(file, JSON.stringify(recipe, null, 2) + "\n");
}

const ran = (dir: string): string[] => {
  const log = join(dir, "recipes", "demo", "out", "runs.log");
  return existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter(Boolean).map((l) => l.split(" ")[1]).sort() : [];
};
const sha = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");
const ggufs = (dir: string) => readdirSync(join(dir, "recipes", "demo", "out", "gguf")).filter((f) => f.endsWith(".gguf")).sort();

test("a clone sharing the Nx cache but not the store: exit 0, the GGUFs, each stage rerun once and said so", () => {
  const shared = join(root, "a", "shared");
  sharedDirs.push(shared);
  const ws = join(root, "a", "ws"), clone = join(root, "a", "clone");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, () => editRecipe(ws, (r) => { r.train = { ...r.train, steps: 20, warmup_steps: 2, eval_every: 10 }; }));
  const env: NxEnv = { shared, engine };
  const first = runNx(ws, env, "run", "demo:gguf");
  assert.equal(first.code, 0, first.out);

  cloneWorkspace(ws, clone);
  const other: NxEnv = { shared, engine, extra: { NXFT_STORE: join(root, "a", "store-of-clone") } };
  const r = runNx(clone, other, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /for 6 out of 6 tasks/, "every task was an Nx cache hit");
  assert.doesNotMatch(r.out, /lacks blob|failed/);
  assert.deepEqual(ggufs(clone), ["demo.adapter.gguf", "demo.f16.gguf", "demo.q4_k_m.gguf", "demo.q8_0.gguf"]);
  // The reruns give the bytes the first clone made (the pipeline is deterministic on CPU).
  for (const f of ggufs(clone)) {
    assert.equal(sha(join(clone, "recipes", "demo", "out", "gguf", f)), sha(join(ws, "recipes", "demo", "out", "gguf", f)), f);
  }
  assert.deepEqual(ran(clone), STAGES);
  for (const stage of STAGES) {
    const said = r.out.match(new RegExp(`demo:${stage} came from the Nx cache, but .* rerunning ${stage}`, "g")) ?? [];
    assert.equal(said.length, 1, `${stage} said once:\n${r.out}`);
  }
  // Run again: everything is in the clone's store now.
  const again = runNx(clone, other, "run", "demo:gguf");
  assert.equal(again.code, 0, again.out);
  assert.deepEqual(ran(clone), STAGES, "nothing reran");
});

// A tiny Llama (2 layers, hidden 32) so 900 steps take seconds on two cores.
function tinyWorkspace(dir: string): void {
  makeWorkspace(dir, () => {
    const cfgFile = join(dir, "recipes", "demo", "base", "config.json");
    const cfg = JSON.parse(readFileSync(cfgFile, "utf8"));
    Object.assign(cfg, { hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16 });
    writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + "\n");
    editRecipe(dir, (r) => {
      r.lora.r = 4;
      r.lora.alpha = 8;
      r.train = { ...r.train, steps: 900, warmup_steps: 10, batch_size: 4, eval_every: 0, save_every: 100 };
    });
  });
}

// Starts `nx run demo:adapter` in its own process group; SIGKILLs the whole group (nx, the executor, the engine) as
// soon as the checkpoint folder holds a complete checkpoint of step >= 100.
async function runAndKillAfterCheckpoint(dir: string, env: NxEnv, ckptRoot: string): Promise<number> {
  const child = spawn(process.execPath, [nxBin(), "run", "demo:adapter", "--outputStyle=stream"], {
    cwd: dir, env: nxEnvironment(dir, env), detached: true, stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const exited = new Promise((r) => child.once("exit", r));
  const t0 = Date.now();
  for (;;) {
    const steps = completeSteps(ckptRoot);
    if (steps.some((s) => s >= 100)) break;
    if (child.exitCode !== null) throw new Error(`nx exited before a checkpoint:\n${out}`);
    if (Date.now() - t0 > 300_000) { process.kill(-child.pid!, "SIGKILL"); throw new Error(`no checkpoint within 300 s:\n${out}`); }
    await new Promise((r) => setTimeout(r, 20));
  }
  process.kill(-child.pid!, "SIGKILL");
  await exited;
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(!/adapter done in/.test(out), "killed before the adapter stage finished");
  return Math.max(...completeSteps(ckptRoot));
}

// Steps of complete checkpoints under <store>/checkpoints/<key>/ (any key).
function completeSteps(ckptRoot: string): number[] {
  if (!existsSync(ckptRoot)) return [];
  const steps: number[] = [];
  for (const key of readdirSync(ckptRoot)) {
    for (const name of readdirSync(join(ckptRoot, key))) {
      const m = /^step-(\d+)$/.exec(name);
      if (m && existsSync(join(ckptRoot, key, name, "trainer_state.json"))) steps.push(Number(m[1]));
    }
  }
  return steps;
}

const adapterBlob = (dir: string) => JSON.parse(readFileSync(join(dir, "recipes", "demo", "out", "adapter", "stage-manifest.json"), "utf8"))
  .files.find((f: { path: string }) => f.path === "adapter_model.safetensors").sha256 as string;

test("a run killed with SIGKILL after a checkpoint resumes from it and ends with the uninterrupted run's adapter bytes", async () => {
  const shared = join(root, "b", "shared");
  sharedDirs.push(shared);
  const ws = join(root, "b", "ws");
  mkdirSync(ws, { recursive: true });
  tinyWorkspace(ws);
  const env: NxEnv = { shared, engine };
  const ckptRoot = join(shared, "store", "checkpoints");
  assert.equal(runNx(ws, env, "run", "demo:shards").code, 0);

  const killedAt = await runAndKillAfterCheckpoint(ws, env, ckptRoot);
  assert.ok(killedAt >= 100 && killedAt < 900, `killed after checkpoint ${killedAt}`);
  // A torn checkpoint (no trainer_state.json, as a kill mid-write would leave were it not for the rename) and a
  // killed writer's temp folder: both must be passed over.
  const [key] = readdirSync(ckptRoot);
  mkdirSync(join(ckptRoot, key, "step-899"));
  writeFileSync(join(ckptRoot, key, "step-899", "adapter_model.safetensors"), "torn");
  mkdirSync(join(ckptRoot, key, ".step-900.tmp-999999999"));

  const resumed = runNx(ws, env, "run", "demo:adapter");
  assert.equal(resumed.code, 0, resumed.out);
  const from = /resuming the interrupted run from its checkpoint at step (\d+)/.exec(resumed.out);
  assert.ok(from, resumed.out);
  assert.equal(Number(from[1]), killedAt);
  assert.match(resumed.out, /adapter: 900 steps/);
  assert.ok(!existsSync(join(ckptRoot, key)), "checkpoints are dropped once the adapter is committed");
  const resumedBlob = adapterBlob(ws);

  // The same inputs from step 0 (no checkpoints left; --skip-nx-cache reruns the stage).
  const fresh = runNx(ws, env, "run", "demo:adapter", "--skip-nx-cache");
  assert.equal(fresh.code, 0, fresh.out);
  assert.doesNotMatch(fresh.out, /resuming/);
  assert.equal(adapterBlob(ws), resumedBlob, "resumed and uninterrupted runs end with the same adapter bytes");
});

test("train.resume: false starts from step 0 even with a checkpoint", async () => {
  const shared = join(root, "c", "shared");
  sharedDirs.push(shared);
  const ws = join(root, "c", "ws");
  mkdirSync(ws, { recursive: true });
  tinyWorkspace(ws);
  editRecipe(ws, (r) => { r.train.resume = false; });
  const env: NxEnv = { shared, engine };
  assert.equal(runNx(ws, env, "run", "demo:shards").code, 0);
  await runAndKillAfterCheckpoint(ws, env, join(shared, "store", "checkpoints"));
  const r = runNx(ws, env, "run", "demo:adapter");
  assert.equal(r.code, 0, r.out);
  assert.doesNotMatch(r.out, /resuming/);
  assert.match(r.out, /adapter: 900 steps/);
});
