// `nx run demo:gc`: with the real nx in a temp workspace, blobs still referenced by an out/ folder or an Nx cache
// entry are kept; once nothing references them (the recipe changed and the Nx cache was cleared) --dry-run lists
// exactly them and removes nothing, and gc removes them and nothing else.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { blobPath } from "../../plugins/nx-finetune/src/store";
import { makeWorkspace, repoRoot, runNx, removeTestDirs, type NxEnv } from "./temp-workspace";

const root = mkdtempSync(join(tmpdir(), "nxft-gc-"));
const shared = join(root, "shared"), ws = join(root, "ws"), store = join(shared, "store");
after(() => removeTestDirs(shared));

const recipeFile = () => join(ws, "recipes", "demo", "recipe.json");
const editRecipe = (edit: (r: any) => void) => {
  const r = JSON.parse(readFileSync(recipeFile(), "utf8"));
  edit(r);
  writeFileSync(recipeFile(), JSON.stringify(r, null, 2) + "\n");
};
const manifestShas = (stage: string) => new Set<string>(JSON.parse(readFileSync(join(ws, "recipes", "demo", "out", stage, "stage-manifest.json"), "utf8")).files.map((f: any) => f.sha256));
const listed = (out: string, verb: string) => new Set([...out.matchAll(new RegExp(`${verb} blob ([0-9a-f]{64})`, "g"))].map((m) => m[1]));

test("gc keeps what out/ or the Nx cache references; --dry-run lists the rest; gc removes exactly that", async () => {
  const engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  const env: NxEnv = { shared, engine };
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, () => editRecipe((r) => { r.train = { ...r.train, steps: 10, warmup_steps: 1, eval_every: 5 }; }));
  assert.equal(runNx(ws, env, "run", "demo:gguf").code, 0);
  const before = manifestShas("gguf");
  editRecipe((r) => { r.export.gguf = ["f16"]; });
  const second = runNx(ws, env, "run", "demo:gguf");
  assert.equal(second.code, 0, second.out);
  const after = manifestShas("gguf");
  const orphaned = new Set([...before].filter((s) => !after.has(s)));
  assert.ok(orphaned.size >= 2, "q8_0 and q4_k_m (and the old Modelfile) are no longer in out/");

  const kept = runNx(ws, env, "run", "demo:gc", "--dry-run", "--graceHours=0");
  assert.equal(kept.code, 0, kept.out);
  assert.deepEqual(listed(kept.out, "would remove"), new Set(), "the first run's Nx cache entry still references them");

  assert.equal(runNx(ws, env, "reset", "--only-cache").code, 0);
  const dry = runNx(ws, env, "run", "demo:gc", "--dry-run", "--graceHours=0");
  assert.equal(dry.code, 0, dry.out);
  assert.deepEqual(listed(dry.out, "would remove"), orphaned, dry.out);
  assert.match(dry.out, /would free [\d.]+ MB/);
  for (const s of orphaned) assert.ok(existsSync(blobPath(store, s)), "a dry run removes nothing");

  const real = runNx(ws, env, "run", "demo:gc", "--graceHours=0");
  assert.equal(real.code, 0, real.out);
  assert.deepEqual(listed(real.out, "removing"), orphaned);
  for (const s of orphaned) assert.ok(!existsSync(blobPath(store, s)));
  for (const stage of ["base", "dataset", "shards", "adapter", "merged", "gguf"]) {
    for (const s of manifestShas(stage)) assert.ok(existsSync(blobPath(store, s)), `${stage} blob ${s} kept`);
  }
});
