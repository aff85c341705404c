// shards.ts — the shards stage: template + tokenize into fixed-length token shards (src/data does the work).
// A shard cache in the store (files named by a key over their rows, template, tokenizer and seq_len) lets an edit
// of one dataset row retokenize only the shard holding it.
import { join } from "node:path";
import { runShardsStage } from "../data";
import { baseModelDir, stagePath, type StageContext, type StageResult } from "../stage-context";

export async function runShards(ctx: StageContext): Promise<StageResult> {
  const { rows_per_shard, ...template } = ctx.recipe.template;
  const m = await runShardsStage({
    template,
    rowsPerShard: rows_per_shard,
    datasetDir: stagePath(ctx, "dataset"),
    tokenizerDir: baseModelDir(ctx),
    outDir: ctx.tmp,
    cacheDir: join(ctx.store, "shard-cache"),
  });
  const train = m.shards.filter((s) => s.split === "train").length;
  ctx.log(`shards: ${train} train + ${m.shards.length - train} eval shard(s) of ${m.seq_len} tokens; ` +
          `${m.examples.train} + ${m.examples.eval} examples, ${m.truncated} truncated; ${m.retokenized} tokenized, ${m.reused} reused`);
  return { info: {}, run: { retokenized: m.retokenized, reused: m.reused } };
}
