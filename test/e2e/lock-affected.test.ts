// recipes/<name>/nxft.lock.json makes `nx affected` see data changes: with the real nx in a temp workspace, an edit
// of a dataset outside the workspace (as a big or shared one often is) affects no project by itself; after `nx run demo:dataset` the lock file
// records the new digest, git shows it, and Nx marks demo affected. The lock is rewritten only when a digest changes.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { appendFileSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeWorkspace, repoRoot, runNx, removeTestDirs, type NxEnv } from "./temp-workspace";

const root = mkdtempSync(join(tmpdir(), "nxft-lock-"));
const shared = join(root, "shared"), ws = join(root, "ws"), data = join(root, "datasets", "train.jsonl");
after(() => removeTestDirs(shared));

const git = (...args: string[]) => execFileSync("git", args, { cwd: ws, encoding: "utf8" });
const affected = (env: NxEnv) => {
  const r = runNx(ws, env, "show", "projects", "--affected", "--uncommitted", "--json");
  assert.equal(r.code, 0, r.out);
  return JSON.parse(r.out.trim().split("\n").find((l) => l.startsWith("["))!) as string[];
};

test("nxft.lock.json: written by the pipeline, rewritten on a data edit, and `nx affected` then sees the recipe", () => {
  mkdirSync(ws, { recursive: true });
  mkdirSync(join(root, "datasets"));
  copyFileSync(join(repoRoot, "datasets", "demo", "train.jsonl"), data);
  makeWorkspace(ws, () => {
    const f = join(ws, "recipes", "demo", "recipe.json");
    const recipe = JSON.parse(readFileSync(f, "utf8"));
    recipe.data.path = data;
    writeFileSync(f, JSON.stringify(recipe, null, 2) + "\n");
  });
  const env: NxEnv = { shared, engine: "/nonexistent-engine-not-needed-by-dataset" };
  const lockFile = join(ws, "recipes", "demo", "nxft.lock.json");
  const first = runNx(ws, env, "run", "demo:dataset");
  assert.equal(first.code, 0, first.out);
  const lock = JSON.parse(readFileSync(lockFile, "utf8"));
  assert.equal(lock.data.length, 1);
  assert.equal(lock.data[0].path, data);
  assert.match(lock.data[0].sha256, /^[0-9a-f]{64}$/);
  assert.equal(lock.data[0].size, statSync(data).size);
  assert.match(lock.base.sha256, /^[0-9a-f]{64}$/);
  git("add", "-A");
  git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "lock");

  const mtime = statSync(lockFile).mtimeMs;
  assert.equal(runNx(ws, env, "run", "demo:dataset").code, 0);
  assert.equal(statSync(lockFile).mtimeMs, mtime, "unchanged digests: the lock file is not rewritten");

  appendFileSync(data, JSON.stringify({ instruction: "Say hi.", input: "", output: "Hi." }) + "\n");
  assert.deepEqual(affected(env), [], "Nx cannot see a file outside the workspace");
  const r = runNx(ws, env, "run", "demo:dataset");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /updated recipes\/demo\/nxft\.lock\.json \(commit it\)/);
  assert.notEqual(JSON.parse(readFileSync(lockFile, "utf8")).data[0].sha256, lock.data[0].sha256);
  assert.match(git("status", "--porcelain"), /recipes\/demo\/nxft\.lock\.json/);
  assert.deepEqual(affected(env), ["demo"]);
});
