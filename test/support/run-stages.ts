// Runs a recipe's stages in order through the stage executor, in-process, as `nx run <project>:<stage>` would,
// with the executor's console output captured (the tests read the errors it prints). Stops at the first failure.
import type { ExecutorContext } from "@nx/devkit";
import stageExecutor from "../../plugins/nx-finetune/src/executors/stage";

export async function runStages(ws: string, project: string, stages: string[]): Promise<{ ok: boolean; failed?: string; text: string }> {
  const log = console.log, error = console.error;
  let text = "";
  console.log = console.error = (...a: unknown[]) => { text += a.join(" ") + "\n"; };
  try {
    for (const stage of stages) {
      const context = { root: ws, projectName: project, nxJsonConfiguration: {}, cwd: ws, isVerbose: false } as unknown as ExecutorContext;
      const r = await stageExecutor({ recipe: `recipes/${project}/recipe.json`, stage: stage as any }, context);
      if (!r.success) return { ok: false, failed: stage, text };
    }
    return { ok: true, text };
  } finally { console.log = log; console.error = error; }
}
