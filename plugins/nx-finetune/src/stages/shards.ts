// shards.ts — the shards stage: template + tokenize into fixed-length token shards (src/data does the work).
// A shard cache in the store (files named by a key over their rows, template, tokenizer and seq_len) lets an edit
// of one dataset row retokenize only the shard holding it.
import { existsSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { runShardsStage } from "../data";
import { baseModelDir, stagePath, type StageContext, type StageResult } from "../stage-context";

export async function runShards(ctx: StageContext): Promise<StageResult> {
  const { rows_per_shard, allow_beyond_max_positions, ...template } = ctx.recipe.template;
  const baseDir = baseModelDir(ctx);
  if (!allow_beyond_max_positions) checkPositions(ctx, baseDir, template.max_seq_len);
  const m = await runShardsStage({
    template,
    rowsPerShard: rows_per_shard,
    datasetDir: stagePath(ctx, "dataset"),
    tokenizerDir: baseDir,
    outDir: ctx.tmp,
    cacheDir: join(ctx.store, "shard-cache"),
  });
  const train = m.shards.filter((s) => s.split === "train").length;
  ctx.log(`shards: ${train} train + ${m.shards.length - train} eval shard(s) of ${m.seq_len} tokens; ` +
          `${m.examples.train} + ${m.examples.eval} examples, ${m.truncated} truncated; ${m.retokenized} tokenized, ${m.reused} reused`);
  return { info: {}, run: { retokenized: m.retokenized, reused: m.reused } };
}

// The longest sequence the base model was built for: max_position_embeddings, extended by a rope_scaling that
// stretches positions (linear/dynamic: × factor; yarn: original × factor; llama3 configs already state the
// extended length). Defaults as the engine's config reader (native/src/model/config.cpp).
export function maxPositions(config: Record<string, any>): number {
  const type = config.model_type;
  const maxPos = typeof config.max_position_embeddings === "number" ? config.max_position_embeddings
    : type === "llama" ? 2048 : type === "gemma" ? 8192 : 32768;
  const rs = config.rope_scaling;
  if (!rs || typeof rs !== "object") return maxPos;
  const kind = rs.rope_type ?? rs.type;
  const factor = typeof rs.factor === "number" ? rs.factor : 1;
  if (kind === "linear" || kind === "dynamic") return Math.floor(maxPos * factor);
  if (kind === "yarn") return Math.max(maxPos, Math.floor((rs.original_max_position_embeddings ?? maxPos) * factor));
  return maxPos;
}

function checkPositions(ctx: StageContext, baseDir: string, maxSeqLen: number): void {
  const configPath = join(baseDir, "config.json");
  if (!existsSync(configPath)) return; // the engine reports a missing config.json at the adapter stage
  let config: Record<string, any>;
  try { config = JSON.parse(readFileSync(configPath, "utf8")); } catch { return; } // likewise a broken one
  const limit = maxPositions(config);
  if (maxSeqLen <= limit) return;
  throw new Error(`${relative(ctx.workspaceRoot, ctx.recipeFile)}: template.max_seq_len: ${maxSeqLen} exceeds the ${limit} positions of the base ` +
    `model (${configPath}: max_position_embeddings${config.rope_scaling ? " with its rope_scaling" : ""}); lower it, or set ` +
    `template.allow_beyond_max_positions: true to train beyond them anyway`);
}
