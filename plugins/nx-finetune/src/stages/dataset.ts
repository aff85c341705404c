// dataset.ts — the dataset stage: read, validate and normalize rows, split train/eval (src/data does the work).
import { join } from "node:path";
import { dataModule } from "../peers";
import type { StageContext, StageResult } from "../stage-context";

export async function runDataset(ctx: StageContext): Promise<StageResult> {
  const summary = await dataModule().runDatasetStage({
    spec: ctx.recipe.data,
    recipeDir: ctx.projectDir,
    outDir: ctx.tmp,
    cacheDir: join(ctx.store, "datasets"),
    log: ctx.log,
  });
  ctx.log(`dataset: ${summary.rows} rows (${summary.train_rows} train, ${summary.eval_rows} eval)`);
  return { info: {} };
}
