// dataset.ts — the dataset stage: read, validate and normalize rows, split train/eval (src/data does the work).
import { join } from "node:path";
import { runDatasetStage } from "../data";
import type { StageContext, StageResult } from "../stage-context";

export async function runDataset(ctx: StageContext): Promise<StageResult> {
  const m = await runDatasetStage({
    recipePath: ctx.recipeFile,
    data: ctx.recipe.data,
    outDir: ctx.tmp,
    workspaceRoot: ctx.workspaceRoot,
    hubCacheDir: join(ctx.store, "hub-datasets"),
  });
  ctx.log(`dataset: ${m.rows} rows (${m.train_rows} train, ${m.eval_rows} eval${m.skipped ? `, ${m.skipped} skipped` : ""})`);
  return { info: {} };
}
