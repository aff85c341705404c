// ensureStage (stage-run.ts): a stage whose manifest came from the Nx cache but whose blobs are nowhere is rerun,
// saying so once, whether no remote store is set or the remote store cannot be reached. The dataset stage plays
// it (no engine needed).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureStage, runStage, type StageEnv } from "../../plugins/nx-finetune/src/stage-run";
import { blobPath } from "../../plugins/nx-finetune/src/store";

const repo = join(__dirname, "..", "..");
const saved = { ...process.env };
after(() => { process.env = saved; });

function workspace(): { ws: string; env: StageEnv; lines: string[] } {
  const ws = mkdtempSync(join(tmpdir(), "nxft-stagerun-"));
  cpSync(join(repo, "recipes", "demo", "recipe.json"), join(ws, "recipes", "demo", "recipe.json"));
  cpSync(join(repo, "recipes", "demo", "base"), join(ws, "recipes", "demo", "base"), { recursive: true });
  cpSync(join(repo, "datasets", "demo", "train.jsonl"), join(ws, "datasets", "demo", "train.jsonl"));
  const lines: string[] = [];
  const env: StageEnv = { workspaceRoot: ws, recipeFile: join(ws, "recipes", "demo", "recipe.json"), projectName: "demo",
                          store: join(ws, "store"), log: (l) => lines.push(l) };
  return { ws, env, lines };
}

for (const remote of [undefined, "http://127.0.0.1:9"]) {
  test(`a cache-restored manifest whose blobs are gone reruns its stage (${remote ? "remote store unreachable" : "no remote store"})`, async () => {
    delete process.env.NXFT_STORE_REMOTE;
    const { ws, env, lines } = workspace();
    const manifest = await runStage(env, "dataset");
    // What a clone with another store sees after an Nx cache hit: the manifest, no files, no blobs.
    rmSync(env.store, { recursive: true, force: true });
    const dir = join(ws, "recipes", "demo", "out", "dataset");
    for (const f of manifest.files) rmSync(join(dir, f.path));
    if (remote) Object.assign(process.env, { NXFT_STORE_REMOTE: "s3://nxft/x", NXFT_STORE_REMOTE_ENDPOINT: remote,
                                             AWS_ACCESS_KEY_ID: "k", AWS_SECRET_ACCESS_KEY: "s", AWS_MAX_ATTEMPTS: "1" });
    lines.length = 0;
    await ensureStage(env, "dataset");
    const said = lines.filter((l) => /demo:dataset came from the Nx cache, but .*: rerunning dataset/.test(l));
    assert.equal(said.length, 1, lines.join("\n"));
    if (remote) assert.ok(lines.some((l) => /warning: remote store s3:\/\/nxft\/x/.test(l)), lines.join("\n"));
    for (const f of manifest.files) {
      assert.ok(existsSync(blobPath(env.store, f.sha256)), f.path);
      assert.ok(existsSync(join(dir, f.path)), f.path);
    }
    assert.deepEqual(JSON.parse(readFileSync(join(dir, "stage-manifest.json"), "utf8")).files, manifest.files, "the rerun made the same files");
    rmSync(ws, { recursive: true, force: true });
  });
}
