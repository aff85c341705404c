// merged.ts — the merged stage: W' = W + scale·B·A in fp32, saved in export.merged_dtype (engine `merge`).
import { baseModelDir, engine, stagePath, type StageContext, type StageResult } from "../stage-context";

export async function runMerged(ctx: StageContext): Promise<StageResult> {
  const summary = await engine(ctx, "merge", {
    base: baseModelDir(ctx),
    adapter: stagePath(ctx, "adapter"),
    dtype: ctx.recipe.export.merged_dtype,
    out: ctx.tmp,
  });
  return { info: { dtype: ctx.recipe.export.merged_dtype }, run: { engine: summary } };
}
