// merged.ts — the merged stage: W' = W + scale·B·A in fp32, saved in export.merged_dtype (engine `merge`). With
// template.add_special_tokens the engine grows embed_tokens / lm_head by the trained token rows, and the merged
// folder gets the grown tokenizer (the engine copies the base's).
import { copyTokenizerFiles } from "../data/added-tokens";
import { addedTokens, baseModelDir, engine, stagePath, type StageContext, type StageResult } from "../stage-context";

export async function runMerged(ctx: StageContext): Promise<StageResult> {
  const summary = await engine(ctx, "merge", {
    base: baseModelDir(ctx),
    adapter: stagePath(ctx, "adapter"),
    dtype: ctx.recipe.export.merged_dtype,
    out: ctx.tmp,
  });
  if (addedTokens(ctx).length > 0) copyTokenizerFiles(stagePath(ctx, "shards"), ctx.tmp);
  return { info: { dtype: ctx.recipe.export.merged_dtype }, run: { engine: summary } };
}
