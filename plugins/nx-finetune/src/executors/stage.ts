// stage.ts — the `stage` executor: runs one pipeline stage of a recipe. Options are only {recipe, stage} (the same
// for every run, so they never widen any task's hash); everything else comes from the recipe file.
import { appendFileSync, mkdirSync, promises as fsp } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { loadRecipe, RecipeError } from "../recipe";
import { beginStage, commitStage, materializeStage, type StageName } from "../stage-dir";
import type { StageContext, StageResult } from "../stage-context";
import { storeRoot } from "../store";
import { runBase } from "../stages/base";
import { runDataset } from "../stages/dataset";
import { runShards } from "../stages/shards";
import { runAdapter } from "../stages/adapter";
import { runMerged } from "../stages/merged";
import { runGguf } from "../stages/gguf";

export interface StageExecutorOptions { recipe: string; stage: StageName }

const RUNNERS: Record<StageName, (ctx: StageContext) => Promise<StageResult>> = {
  base: runBase, dataset: runDataset, shards: runShards, adapter: runAdapter, merged: runMerged, gguf: runGguf,
};

// Upstream stage folders a stage reads (all of them, not only direct dependencies): relinked from the store first,
// since Nx may have restored them from its cache (manifest only).
const READS: Record<StageName, StageName[]> = {
  base: [], dataset: [], shards: ["dataset", "base"], adapter: ["shards", "base"], merged: ["adapter", "base"],
  gguf: ["merged", "adapter", "base"],
};

export function pluginOptions(context: Pick<ExecutorContext, "nxJsonConfiguration">): { storeDir?: string } {
  for (const p of context.nxJsonConfiguration?.plugins ?? []) {
    if (typeof p === "object" && /nx-finetune/.test(p.plugin)) return (p.options ?? {}) as { storeDir?: string };
  }
  return {};
}

export default async function stageExecutor(options: StageExecutorOptions, context: ExecutorContext): Promise<{ success: boolean }> {
  const stage = options.stage;
  if (!(stage in RUNNERS)) {
    console.error(`nx-finetune: unknown stage "${stage}" (expected ${Object.keys(RUNNERS).join(", ")})`);
    return { success: false };
  }
  const workspaceRoot = context.root;
  const recipeFile = resolve(workspaceRoot, options.recipe);
  const projectDir = dirname(recipeFile);
  const started = Date.now();
  let tmp: string | undefined;
  try {
    const recipe = loadRecipe(recipeFile, workspaceRoot);
    const store = storeRoot(workspaceRoot, pluginOptions(context).storeDir);
    for (const upstream of READS[stage]) await materializeStage(store, projectDir, upstream);
    tmp = await beginStage(projectDir, stage);
    const ctx: StageContext = {
      workspaceRoot, projectName: context.projectName ?? recipe.name ?? "recipe", projectDir, recipeFile, recipe, store, tmp,
      log: (line) => console.log(line),
    };
    const result = await RUNNERS[stage](ctx);
    const wall_s = (Date.now() - started) / 1000;
    const run = withoutAbsolutePaths({ stage, wall_s, ...(result.run ?? {}) }, tmp, workspaceRoot);
    await commitStage(store, projectDir, stage, tmp, result.info, run);
    tmp = undefined;
    appendRunLog(projectDir, stage, wall_s);
    console.log(`${context.projectName}:${stage} done in ${wall_s.toFixed(1)} s`);
    return { success: true };
  } catch (e) {
    console.error(e instanceof RecipeError ? e.message : `${context.projectName}:${stage} failed: ${(e as Error).message}`);
    if (process.env.NXFT_DEBUG && !(e instanceof RecipeError)) console.error((e as Error).stack);
    return { success: false };
  } finally {
    if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
  }
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
