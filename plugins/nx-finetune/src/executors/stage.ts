// stage.ts — the `stage` executor: runs one pipeline stage of a recipe. Options are only {recipe, stage} (the same
// for every run, so they never widen any task's hash); everything else comes from the recipe file.
import { dirname, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { RecipeError } from "../recipe";
import type { StageName } from "../stage-dir";
import { RUNNERS, runStage } from "../stage-run";
import { storeRoot } from "../store";
import { GateFailed } from "../stages/eval";

export interface StageExecutorOptions { recipe: string; stage: StageName }

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
  try {
    const store = storeRoot(workspaceRoot, pluginOptions(context).storeDir);
    const projectName = context.projectName ?? dirname(recipeFile).split("/").at(-1)!;
    await runStage({ workspaceRoot, recipeFile, projectName, store, log: (line) => console.log(line) }, stage);
    return { success: true };
  } catch (e) {
    console.error(e instanceof RecipeError ? e.message : `${context.projectName}:${stage} failed: ${(e as Error).message}`);
    if (process.env.NXFT_DEBUG && !(e instanceof RecipeError) && !(e instanceof GateFailed)) console.error((e as Error).stack);
    return { success: false };
  }
}
