// adapter.ts — the adapter stage: LoRA / QLoRA training with the engine; metrics.jsonl and loss.svg for people.
import { existsSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { writeFileAtomic } from "../atomic";
import { lossCurveSvg, readMetrics } from "../loss-svg";
import { baseModelDir, engine, stagePath, threads, type StageContext, type StageResult } from "../stage-context";

// The engine's train job (docs/engine-protocol.md) for this recipe, as the adapter stage sends it; also what
// bench/real-path.ts runs on a GPU machine, so the benchmark measures the job users run.
export function trainJob(ctx: StageContext): Record<string, unknown> {
  const r = ctx.recipe;
  const shardsDir = stagePath(ctx, "shards");
  const shards = JSON.parse(readFileSync(join(shardsDir, "manifest.json"), "utf8")).shards as Array<{ file: string; split: string }>;
  const pick = (split: string) => shards.filter((s) => s.split === split).map((s) => join(shardsDir, s.file));
  if (pick("train").length === 0) throw new Error(`${join(shardsDir, "manifest.json")}: no train shards (is the dataset empty?)`);
  const base = baseModelDir(ctx);
  return {
    base,
    train_shards: pick("train"),
    eval_shards: pick("eval"),
    out: ctx.tmp,
    backend: r.engine.backend,
    threads: threads(ctx),
    lora: { r: r.lora.r, alpha: r.lora.alpha, dropout: r.lora.dropout, targets: r.lora.targets, rslora: r.lora.rslora, init_adapter: null },
    quantize_base: r.quantize_base,
    train: {
      seed: r.train.seed, lr: r.train.lr, schedule: r.train.schedule, warmup_steps: r.train.warmup_steps,
      steps: r.train.steps ?? null, epochs: r.train.epochs ?? null, batch_size: r.train.batch_size, grad_accum: r.train.grad_accum,
      optimizer: r.train.optimizer, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: r.train.weight_decay,
      max_grad_norm: r.train.max_grad_norm, gradient_checkpointing: r.train.gradient_checkpointing,
      eval_every: r.train.eval_every, save_every: r.train.save_every, resume: false, shuffle: true,
    },
    base_model_name_or_path: basename(base),
  };
}

export async function runAdapter(ctx: StageContext): Promise<StageResult> {
  const summary = await engine(ctx, "train", trainJob(ctx));
  const metricsFile = join(ctx.tmp, "metrics.jsonl");
  if (existsSync(metricsFile)) writeFileAtomic(join(ctx.tmp, "loss.svg"), lossCurveSvg(readMetrics(metricsFile), `${ctx.projectName} adapter`));
  ctx.log(`adapter: ${summary.steps} steps, final train loss ${fmt(summary.final_train_loss)}, eval loss ${fmt(summary.final_eval_loss)}, ` +
          `${Math.round(summary.tokens_per_s ?? 0)} tokens/s, ${fmt(summary.wall_s)} s`);
  return { info: {}, run: { summary } };
}

const fmt = (x: unknown) => (typeof x === "number" ? x.toFixed(4) : "n/a");
