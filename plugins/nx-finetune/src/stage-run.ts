// stage-run.ts — run one stage of a recipe, and make an upstream stage's files present before a stage reads them.
//
// An Nx cache hit restores only a stage's stage-manifest.json; its blobs must come from the content store. When
// they are not there (the Nx cache is shared by every clone of a workspace under ~/.nx/<id>/cache and is restored
// on new CI runners, the store is not), ensureStage fetches them from the remote store (NXFT_STORE_REMOTE) or, when
// none is set or it lacks them too, reruns the stage, after making sure of that stage's own upstream the same way.
// A missing blob is never an error.
import { appendFileSync, existsSync, mkdirSync, promises as fsp } from "node:fs";
import { dirname, join } from "node:path";
import { hubModelDir } from "./hub-model";
import { loadRecipe } from "./recipe";
import { beginStage, commitStage, readManifest, stageDir, type StageManifest, type StageName } from "./stage-dir";
import type { StageContext, StageResult } from "./stage-context";
import { materialize, missingBlobs } from "./store";
import { fetchBlobs, remoteStore, uploadBlobs } from "./remote-store";
import { runBase } from "./stages/base";
import { runDataset } from "./stages/dataset";
import { runShards } from "./stages/shards";
import { runAdapter } from "./stages/adapter";
import { runMerged } from "./stages/merged";
import { runGguf } from "./stages/gguf";
import { runEval } from "./stages/eval";

export const RUNNERS: Record<StageName, (ctx: StageContext) => Promise<StageResult>> = {
  base: runBase, dataset: runDataset, shards: runShards, adapter: runAdapter, merged: runMerged, gguf: runGguf, eval: runEval,
};

// Upstream stage folders a stage reads (all of them, not only direct dependencies).
export const READS: Record<StageName, StageName[]> = {
  base: [], dataset: [], shards: ["dataset", "base"], adapter: ["shards", "base"], merged: ["adapter", "base", "shards"],
  gguf: ["merged", "adapter", "base"],
  eval: ["gguf", "merged", "adapter", "shards", "dataset", "base"],
};

export interface StageEnv {
  workspaceRoot: string;
  recipeFile: string;   // absolute
  projectName: string;
  store: string;        // local content store root
  log: (line: string) => void;
}

// Runs `stage` now (its upstream made present first), commits out/<stage>/ and uploads its blobs to the remote
// store when one is set and writable. Appends to out/runs.log.
export async function runStage(env: StageEnv, stage: StageName): Promise<StageManifest> {
  const projectDir = dirname(env.recipeFile);
  const started = Date.now();
  const recipe = loadRecipe(env.recipeFile, env.workspaceRoot);
  for (const upstream of READS[stage]) await ensureStage(env, upstream);
  const tmp = await beginStage(projectDir, stage);
  try {
    const ctx: StageContext = {
      workspaceRoot: env.workspaceRoot, projectName: env.projectName, projectDir, recipeFile: env.recipeFile, recipe,
      store: env.store, tmp, log: env.log,
    };
    const result = await RUNNERS[stage](ctx);
    const wall_s = (Date.now() - started) / 1000;
    const run = withoutAbsolutePaths({ stage, wall_s, ...(result.run ?? {}) }, tmp, env.workspaceRoot);
    const manifest = await commitStage(env.store, projectDir, stage, tmp, result.info, run);
    await result.afterCommit?.();
    const remote = remoteStore();
    // A failed upload doesn't fail the stage: its output is committed locally, and a runner that misses the blobs
    // reruns the stage.
    if (remote && !remote.readonly) {
      await uploadBlobs(remote, env.store, manifest.files, env.log)
        .catch((e) => env.log(`nx-finetune: warning: ${(e as Error).message}; ${stage}'s files stay in the local store only`));
    }
    appendRunLog(projectDir, stage, wall_s);
    env.log(`${env.projectName}:${stage} done in ${wall_s.toFixed(1)} s`);
    return manifest;
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
}

// Makes every file out/<stage>/stage-manifest.json lists present (hard links from the store). Blobs the local
// store lacks come from the remote store; if that is not set or lacks one, the stage reruns (and says so once).
export async function ensureStage(env: StageEnv, stage: StageName): Promise<void> {
  const projectDir = dirname(env.recipeFile);
  const dir = stageDir(projectDir, stage);
  const manifest = readManifest(projectDir, stage);
  let missing = await missingBlobs(env.store, dir, manifest.files);
  // A Hub base lives in the store's hub folder, outside any manifest: a store without it downloads it again.
  const info = manifest.info as { kind?: string; hub?: string; revision?: string };
  if (stage === "base" && info.kind === "hub" && !existsSync(join(hubModelDir(env.store, info.hub!, info.revision!), "config.json"))) {
    env.log(`nx-finetune: ${env.projectName}:base came from the Nx cache, but ${info.hub}@${info.revision} is not in ${env.store}: rerunning base`);
    await runStage(env, stage);
    return;
  }
  if (missing.length > 0) {
    const remote = remoteStore();
    // An unreachable remote store is no error either: the stage reruns.
    if (remote) {
      missing = await fetchBlobs(remote, env.store, missing, env.log)
        .catch((e) => { env.log(`nx-finetune: warning: ${(e as Error).message}`); return missing; });
    }
    if (missing.length > 0) {
      const bytes = missing.reduce((n, f) => n + f.size, 0);
      env.log(`nx-finetune: ${env.projectName}:${stage} came from the Nx cache, but ${missing.length} of its files ` +
              `(${(bytes / 1e6).toFixed(1)} MB, e.g. ${missing[0].path}) are not in the content store ${env.store}` +
              (remote ? ` nor in the remote store ${remote.url}` : " and no remote store is set (NXFT_STORE_REMOTE)") +
              `: rerunning ${stage}`);
      await runStage(env, stage);
      return;
    }
  }
  await materialize(env.store, dir, manifest.files);
}

// out/runs.log: one line per stage that actually ran (cache hits don't run the executor) — what tests and people
// read to see what reran.
function appendRunLog(projectDir: string, stage: StageName, wall_s: number): void {
  mkdirSync(join(projectDir, "out"), { recursive: true });
  appendFileSync(join(projectDir, "out", "runs.log"), `${new Date().toISOString()} ${stage} ${wall_s.toFixed(2)}s\n`);
}

// run.json is for people and diffs: the engine's summary names its files by absolute path in the stage's temp
// folder, which is renamed on commit (and differs per machine). Paths become relative to the stage folder, or to
// the workspace root.
export function withoutAbsolutePaths<T>(value: T, tmp: string, workspaceRoot: string): T {
  const fix = (v: unknown): unknown => {
    if (typeof v === "string") {
      if (v === tmp) return ".";
      if (v.startsWith(tmp + "/")) return v.slice(tmp.length + 1);
      if (v.startsWith(workspaceRoot + "/")) return v.slice(workspaceRoot.length + 1);
      return v;
    }
    if (Array.isArray(v)) return v.map(fix);
    if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, fix(x)]));
    return v;
  };
  return fix(value) as T;
}
