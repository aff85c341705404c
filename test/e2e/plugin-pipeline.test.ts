// End to end with the real nx, the real engine and the real data pipeline, in a temp copy of the workspace:
// the demo recipe to GGUF, then the caching contract:
//   - a second run runs nothing; a fresh clone sharing the store and the Nx cache runs nothing and still ends with
//     the .gguf files present (relinked from the store);
//   - touching the recipe (mtime only) reruns nothing;
//   - changing only export.gguf reruns only gguf;
//   - editing one dataset row reruns dataset, shards (retokenizing only the affected shards) and downstream, not base.
// What ran is read from out/runs.log, which the stage executor appends to (a cache hit never runs the executor),
// and cross-checked with Nx's own summary line.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync, openSync, readSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { spawn } from "node:child_process";
import { cloneWorkspace, makeWorkspace, nxBin, nxEnvironment, repoRoot, runNx, removeTestDirs } from "./temp-workspace";

const STAGES = ["base", "dataset", "shards", "adapter", "merged", "gguf"];

let ws = "";        // the temp workspace
let shared = "";    // store + Nx cache shared by the "clones"
let engine = "";

// A clone of the repo with fewer training steps than the demo: this test checks the build contract, not what the
// model learns (test/e2e/demo.test.ts does).
function makeTestWorkspace(dir: string): void {
  makeWorkspace(dir, () => {
    const recipeFile = join(dir, "recipes", "demo", "recipe.json");
    const recipe = JSON.parse(readFileSync(recipeFile, "utf8"));
    recipe.train = { ...recipe.train, steps: 30, warmup_steps: 3, eval_every: 15 };
    writeFileSync(recipeFile, JSON.stringify(recipe, null, 2) + "\n");
  });
}

function nx(dir: string, ...args: string[]): { code: number; out: string } {
  return runNx(dir, { shared, engine }, ...args);
}

// Stages that ran since the last call (from out/runs.log).
const seen = new Map<string, number>();
function ranSince(dir: string): string[] {
  const log = join(dir, "recipes", "demo", "out", "runs.log");
  const lines = existsSync(log) ? readFileSync(log, "utf8").trim().split("\n").filter(Boolean) : [];
  const from = seen.get(dir) ?? 0;
  seen.set(dir, lines.length);
  return lines.slice(from).map((l) => l.split(" ")[1]).sort();
}

const ggufDir = (dir: string) => join(dir, "recipes", "demo", "out", "gguf");
function magic(file: string): string {
  const fd = openSync(file, "r");
  const buf = Buffer.alloc(4);
  readSync(fd, buf, 0, 4, 0);
  closeSync(fd);
  return buf.toString("latin1");
}

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-e2e-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeTestWorkspace(ws);
});

after(() => removeTestDirs(shared));

test("cold: nx run demo:gguf runs every stage and writes the GGUF files, adapter GGUF and Modelfile", () => {
  const r = nx(ws, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(ws), [...STAGES].sort());
  const files = readdirSync(ggufDir(ws)).sort();
  assert.deepEqual(files, ["Modelfile", "demo.adapter.gguf", "demo.f16.gguf", "demo.q4_k_m.gguf", "demo.q8_0.gguf", "run.json", "stage-manifest.json"]);
  for (const f of files.filter((f) => f.endsWith(".gguf"))) assert.equal(magic(join(ggufDir(ws), f)), "GGUF", f);
  assert.match(readFileSync(join(ggufDir(ws), "Modelfile"), "utf8"), /^FROM \.\/demo\.q4_k_m\.gguf/m);
  const adapter = join(ws, "recipes", "demo", "out", "adapter");
  assert.match(readFileSync(join(adapter, "loss.svg"), "utf8"), /<polyline/);
  assert.equal(readFileSync(join(adapter, "metrics.jsonl"), "utf8").split("\n").filter((l) => /"event":\s*"step"/.test(l)).length, 30);
  assert.match(r.out, /step 30\/30 {2}loss \d/);
  // run.json names files relative to the stage folder, never by the temp folder's absolute path.
  for (const stage of STAGES) {
    const run = readFileSync(join(ws, "recipes", "demo", "out", stage, "run.json"), "utf8");
    assert.ok(!run.includes(ws) && !run.includes(".tmp-"), `${stage}/run.json: ${run}`);
  }
  assert.ok(JSON.parse(readFileSync(join(adapter, "run.json"), "utf8")).summary.files.includes("adapter_model.safetensors"));
});

test("warm: a second run runs nothing", () => {
  const r = nx(ws, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(ws), [], r.out);
  assert.match(r.out, /Nx read the output from the cache instead of running the command for 6 out of 6 tasks/);
});

test("fresh clone sharing the store and the Nx cache: nothing runs and the GGUF files are there", () => {
  const clone = join(dirname(ws), "clone");
  cloneWorkspace(ws, clone);
  assert.ok(!existsSync(join(clone, "recipes", "demo", "out")));
  const r = nx(clone, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(clone), [], r.out);
  assert.match(r.out, /for 6 out of 6 tasks/);
  for (const f of ["demo.q8_0.gguf", "demo.q4_k_m.gguf", "demo.f16.gguf", "demo.adapter.gguf", "Modelfile"]) {
    const a = statSync(join(ggufDir(clone), f)), b = statSync(join(ggufDir(ws), f));
    assert.equal(a.size, b.size, f);
    assert.equal(a.ino, b.ino, `${f} is a hard link of the same store blob, not a copy`);
  }
  rmSync(clone, { recursive: true, force: true });
});

test("touching the recipe without changing it reruns nothing", () => {
  const recipe = join(ws, "recipes", "demo", "recipe.json");
  const later = new Date(Date.now() + 5000);
  utimesSync(recipe, later, later);
  const r = nx(ws, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(ws), [], r.out);
});

test("changing only export.gguf reruns only gguf", () => {
  const file = join(ws, "recipes", "demo", "recipe.json");
  const recipe = JSON.parse(readFileSync(file, "utf8"));
  recipe.export.gguf = ["q8_0"];
  writeFileSync(file, JSON.stringify(recipe, null, 2) + "\n");
  const r = nx(ws, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(ws), ["gguf"], r.out);
  assert.deepEqual(readdirSync(ggufDir(ws)).filter((f) => f.endsWith(".gguf")).sort(), ["demo.adapter.gguf", "demo.q8_0.gguf"]);
  assert.match(readFileSync(join(ggufDir(ws), "Modelfile"), "utf8"), /^FROM \.\/demo\.q8_0\.gguf/m);
  assert.deepEqual(JSON.parse(readFileSync(join(ggufDir(ws), "run.json"), "utf8")).exported, [], "q8_0 comes from the store");

  // Adding a type never exported before exports only that type; the others come from the store.
  recipe.export.gguf = ["q8_0", "q4_0"];
  writeFileSync(file, JSON.stringify(recipe, null, 2) + "\n");
  const added = nx(ws, "run", "demo:gguf");
  assert.equal(added.code, 0, added.out);
  assert.deepEqual(ranSince(ws), ["gguf"], added.out);
  const run = JSON.parse(readFileSync(join(ggufDir(ws), "run.json"), "utf8"));
  assert.deepEqual([run.exported, run.reused], [["q4_0"], ["q8_0"]]);
  recipe.export.gguf = ["q8_0"];
  writeFileSync(file, JSON.stringify(recipe, null, 2) + "\n");
});

test("editing one dataset row reruns dataset, the affected shard and downstream stages, not base", () => {
  const data = join(ws, "datasets", "demo", "train.jsonl");
  const lines = readFileSync(data, "utf8").split("\n");
  const i = lines.findIndex((l) => l.includes("capital of France"));
  lines[i] = lines[i].replace("Paris.", "Paris, France.");
  writeFileSync(data, lines.join("\n"));
  const r = nx(ws, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.deepEqual(ranSince(ws), ["adapter", "dataset", "gguf", "merged", "shards"], r.out);
  const shards = JSON.parse(readFileSync(join(ws, "recipes", "demo", "out", "shards", "run.json"), "utf8"));
  assert.ok(shards.retokenized >= 1 && shards.retokenized <= 2, JSON.stringify(shards));
  assert.ok(shards.reused >= 1, `unaffected shards are reused: ${JSON.stringify(shards)}`);
});

test("chat streams a reply from the trained adapter", () => {
  const r = nx(ws, "run", "demo:chat", "--prompt=What is the capital of Italy?");
  assert.equal(r.code, 0, r.out);
  // Only the reply: one line between Nx's task header and its summary, no replayed logs of the cached stages.
  const reply = /> nx run demo:chat[^\n]*\n+([\s\S]*?)\n+ NX {3}Successfully ran/.exec(r.out);
  assert.ok(reply, r.out);
  assert.match(reply[1].replace(/^demo: /gm, "").trim(), /^\S[^\n]*$/, r.out);
  assert.doesNotMatch(r.out, /nx run demo:adapter|adapter: \d+ steps/);
  assert.deepEqual(ranSince(ws), [], "chat reads the cached stages");
});

test("watch reruns the pipeline when the recipe changes", async () => {
  const child = spawn(process.execPath, [nxBin(), "run", "demo:watch", "--outputStyle=stream"], {
    cwd: ws, env: nxEnvironment(ws, { shared, engine }), detached: true, stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  child.stderr!.on("data", (d) => (out += d));
  const waitFor = async (count: number) => {
    for (let waited = 0; (out.match(/\[watch\] demo:gguf succeeded/g) ?? []).length < count; waited += 200) {
      if (waited > 240_000 || child.exitCode !== null) throw new Error(`watch did not report ${count} run(s):\n${out}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  try {
    await waitFor(1); // the initial run (all cached)
    assert.deepEqual(ranSince(ws), [], out);
    const file = join(ws, "recipes", "demo", "recipe.json");
    const recipe = JSON.parse(readFileSync(file, "utf8"));
    recipe.export.gguf = ["q8_0", "f16"];
    writeFileSync(file, JSON.stringify(recipe, null, 2) + "\n");
    await waitFor(2);
    assert.deepEqual(ranSince(ws), ["gguf"], out);
    assert.ok(existsSync(join(ggufDir(ws), "demo.f16.gguf")));
  } finally {
    process.kill(-child.pid!, "SIGTERM");
  }
});
