// shards.ts — the shards stage: template + tokenize into fixed-length token shards (src/data does the work).
// The previous shards folder is offered for reuse, so editing one dataset row retokenizes only its shard.
import { existsSync } from "node:fs";
import { dataModule } from "../peers";
import { baseModelDir, stagePath, type StageContext, type StageResult } from "../stage-context";

export async function runShards(ctx: StageContext): Promise<StageResult> {
  const previous = stagePath(ctx, "shards");
  const manifest = await dataModule().runShardsStage({
    template: ctx.recipe.template,
    datasetDir: stagePath(ctx, "dataset"),
    tokenizerDir: baseModelDir(ctx),
    outDir: ctx.tmp,
    previousDir: existsSync(previous) ? previous : undefined,
    log: ctx.log,
  });
  const train = manifest.shards.filter((s) => s.split === "train").length;
  ctx.log(`shards: ${train} train, ${manifest.shards.length - train} eval`);
  return { info: {} };
}
