// stage-context.ts — what every stage implementation gets, and where the base model folder is.
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ensureEngine, runEngine, type EngineEvent } from "./engine";
import { ProgressRenderer } from "./progress";
import type { Recipe } from "./recipe";
import { readManifest, stageDir, type StageName } from "./stage-dir";
import { hubModelDir } from "./hub-model";

export type Log = (line: string) => void;

export interface StageContext {
  workspaceRoot: string;
  projectName: string;
  projectDir: string;  // absolute project root (the recipe's folder)
  recipeFile: string;  // absolute
  recipe: Recipe;
  store: string;       // content store root
  tmp: string;         // the stage's empty temp output folder
  log: Log;
}

// Deterministic facts for the manifest (no times, no absolute paths), and run facts (times, speeds) for run.json.
// `afterCommit` runs once out/<stage>/ is in place (the adapter stage drops its checkpoints then).
export interface StageResult { info: Record<string, unknown>; run?: Record<string, unknown>; afterCommit?: () => Promise<void> }

export const recipePath = (ctx: StageContext, p: string): string => resolve(ctx.projectDir, p);

export function stagePath(ctx: StageContext, stage: StageName): string {
  return stageDir(ctx.projectDir, stage);
}

// The base model folder (config.json, weights, tokenizer files), per the base stage's manifest.
export function baseModelDir(ctx: StageContext): string {
  const info = readManifest(ctx.projectDir, "base").info as { kind: string; path?: string; hub?: string; revision?: string };
  if (info.kind === "local") return recipePath(ctx, info.path!);
  if (info.kind === "hub") return hubModelDir(ctx.store, info.hub!, info.revision!);
  return stagePath(ctx, "base");
}

// The tokens template.add_special_tokens appended to the base's vocabulary (the shards manifest's added_tokens),
// or none. Needs the shards stage's output.
export function addedTokens(ctx: StageContext): Array<{ id: number; content: string }> {
  const manifest = JSON.parse(readFileSync(join(stagePath(ctx, "shards"), "manifest.json"), "utf8"));
  return manifest.added_tokens ?? [];
}

// The tokenizer the recipe trains with: the grown one next to the shards when tokens were added, else the base's.
export function tokenizerDir(ctx: StageContext): string {
  return addedTokens(ctx).length > 0 ? stagePath(ctx, "shards") : baseModelDir(ctx);
}

// Runs an engine command with the job written under out/.jobs/ (kept for debugging, outside any manifest) and
// its events rendered as progress.
// `quiet` shows only warnings (chat prints the reply itself).
export async function engine(ctx: StageContext, command: string, job: Record<string, unknown>,
                             onEvent?: (e: EngineEvent) => void, opts: { quiet?: boolean } = {}): Promise<Record<string, any>> {
  const binary = await ensureEngine(ctx.workspaceRoot, ctx.log);
  const renderer = new ProgressRenderer(opts.quiet ? process.stderr : process.stdout, undefined, opts.quiet);
  const jobFile = join(ctx.projectDir, "out", ".jobs", `${command}.json`);
  return runEngine(binary, command, job, jobFile, (e) => { renderer.onEvent(e); onEvent?.(e); });
}

export function threads(ctx: StageContext): number {
  return ctx.recipe.engine.threads;
}

export function mustExist(path: string, what: string): string {
  if (!existsSync(path)) throw new Error(`${what} not found: ${path}`);
  return path;
}
