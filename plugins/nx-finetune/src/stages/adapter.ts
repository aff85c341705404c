// adapter.ts — the adapter stage: LoRA / QLoRA training with the engine; metrics.jsonl and loss.svg for people.
//
// Checkpoints (train.save_every) go to <store>/checkpoints/<key>/step-N/, key = sha256 of everything the trained
// bytes depend on (the job without its paths, the shards' and the base's content, the engine binary), never to the
// stage's temp folder, which the next run deletes. So a killed run's next `nx run` (same inputs, same task hash)
// finds them and sends `resume: true`; the engine continues bit-identically (docs/engine-protocol.md). The folder
// is dropped once the adapter is committed; GC (store-gc.ts) removes those of runs never finished.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync, promises as fsp } from "node:fs";
import { basename, join } from "node:path";
import { writeFileAtomic } from "../atomic";
import { ensureEngine, type EngineEvent } from "../engine";
import { lossCurveSvg, readMetrics } from "../loss-svg";
import { readManifest, stageDir } from "../stage-dir";
import { sha256OfFile } from "../store";
import { rankPlan, trainRanks } from "./adapter-ranks";
import { addedTokens, baseModelDir, engine, stagePath, threads, type StageContext, type StageResult } from "../stage-context";

// Complete checkpoints kept while training (older ones are removed as newer ones land).
const KEEP_CHECKPOINTS = 2;

// The engine's train job (docs/engine-protocol.md) for this recipe, as the adapter stage sends it (runAdapter adds
// resume and checkpoint_dir); also what bench/real-path.ts runs on a GPU machine, so the benchmark measures the
// job users run.
export function trainJob(ctx: StageContext) {
  const r = ctx.recipe;
  const shardsDir = stagePath(ctx, "shards");
  const shards = JSON.parse(readFileSync(join(shardsDir, "manifest.json"), "utf8")).shards as Array<{ file: string; split: string }>;
  const pick = (split: string) => shards.filter((s) => s.split === split).map((s) => join(shardsDir, s.file));
  if (pick("train").length === 0) throw new Error(`${join(shardsDir, "manifest.json")}: no train shards (is the dataset empty?)`);
  const base = baseModelDir(ctx);
  const added = addedTokens(ctx);
  return {
    base,
    train_shards: pick("train"),
    eval_shards: pick("eval"),
    out: ctx.tmp,
    backend: r.engine.backend,
    threads: threads(ctx),
    lora: { r: r.lora.r, alpha: r.lora.alpha, dropout: r.lora.dropout, targets: r.lora.targets, rslora: r.lora.rslora, init_adapter: null,
            // template.add_special_tokens: the new tokens' embedding (and lm_head) rows are trained too
            ...(added.length > 0 ? { trainable_token_indices: added.map((t) => t.id) } : {}) },
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
  const r = ctx.recipe;
  const job = trainJob(ctx);
  const ckptDir = checkpointDir(ctx.store, await checkpointKey(ctx, job));
  let resume = false;
  if (r.train.resume === false) {
    await fsp.rm(ckptDir, { recursive: true, force: true });
  } else {
    await sweepTornCheckpoints(ckptDir);
    const latest = completeCheckpoints(ckptDir).at(-1);
    if (latest) {
      resume = true;
      ctx.log(`adapter: resuming the interrupted run from its checkpoint at step ${latest.step} (${join(ckptDir, latest.name)})`);
    }
  }
  job.train.resume = resume;
  const onEvent = (e: EngineEvent) => { if (e.event === "checkpoint") pruneCheckpoints(ckptDir, KEEP_CHECKPOINTS); };
  // engine.gpus > 1: one engine per GPU (adapter-ranks.ts); the checkpoint key above leaves the rank count out,
  // so a run killed on N GPUs resumes on any number of them.
  const plan = await rankPlan(ctx);
  const summary = plan.world > 1 ? await trainRanks(ctx, { ...job, checkpoint_dir: ckptDir }, plan, onEvent)
                                 : await engine(ctx, "train", { ...job, checkpoint_dir: ckptDir }, onEvent);
  const metricsFile = join(ctx.tmp, "metrics.jsonl");
  if (existsSync(metricsFile)) writeFileAtomic(join(ctx.tmp, "loss.svg"), lossCurveSvg(readMetrics(metricsFile), `${ctx.projectName} adapter`));
  ctx.log(`adapter: ${summary.steps} steps, final train loss ${fmt(summary.final_train_loss)}, eval loss ${fmt(summary.final_eval_loss)}, ` +
          `${Math.round(summary.data_tokens_per_s ?? summary.tokens_per_s ?? 0)} tokens/s, ${fmt(summary.wall_s)} s`);
  return {
    info: {},
    run: { summary, ...(resume ? { resumed: true } : {}) },
    afterCommit: () => fsp.rm(ckptDir, { recursive: true, force: true }),
  };
}

export function checkpointDir(store: string, key: string): string {
  return join(store, "checkpoints", key);
}

// What the trained bytes depend on, without machine-specific paths: the job (settings), the shards and the base
// by content (their stage manifests), the engine binary by content.
async function checkpointKey(ctx: StageContext, job: Record<string, any>): Promise<string> {
  const shardFiles = new Map(readManifest(ctx.projectDir, "shards").files.map((f) => [join(stageDir(ctx.projectDir, "shards"), f.path), f.sha256]));
  const byContent = (files: string[]) => files.map((f) => shardFiles.get(f) ?? f);
  const { base: _base, out: _out, train_shards, eval_shards, base_model_name_or_path: _name, ...settings } = job;
  const { resume: _resume, ...train } = settings.train;
  const identity = {
    settings: { ...settings, train },
    train_shards: byContent(train_shards), eval_shards: byContent(eval_shards),
    base: createHash("sha256").update(readFileSync(join(stageDir(ctx.projectDir, "base"), "stage-manifest.json"))).digest("hex"),
    engine: await sha256OfFile(await ensureEngine(ctx.workspaceRoot, ctx.log)),
  };
  return createHash("sha256").update(JSON.stringify(identity)).digest("hex").slice(0, 32);
}

// step-N folders holding trainer_state.json (written last, then the folder renamed into place), oldest first.
export function completeCheckpoints(dir: string): Array<{ name: string; step: number }> {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .map((name) => ({ name, m: /^step-(\d+)$/.exec(name) }))
    .filter((e) => e.m && existsSync(join(dir, e.name, "trainer_state.json")))
    .map((e) => ({ name: e.name, step: Number(e.m![1]) }))
    .sort((a, b) => a.step - b.step);
}

// Renamed out of the way first (atomic), then deleted: a kill mid-delete never leaves a step-N folder that still
// has trainer_state.json but lost its weights.
function pruneCheckpoints(dir: string, keep: number): void {
  for (const c of completeCheckpoints(dir).slice(0, -keep)) {
    const trash = join(dir, `.${c.name}.trash-${process.pid}`);
    void fsp.rename(join(dir, c.name), trash).then(() => fsp.rm(trash, { recursive: true, force: true }), () => {});
  }
}

// .step-N.tmp-<pid> folders of engines killed while writing a checkpoint, .step-N.trash-<pid> of pruning cut short.
async function sweepTornCheckpoints(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const m = /^\.step-\d+\.(?:tmp|trash)-(\d+)$/.exec(name);
    if (!m) continue;
    let alive = false;
    try { process.kill(Number(m[1]), 0); alive = true; } catch { alive = false; }
    if (!alive) await fsp.rm(join(dir, name), { recursive: true, force: true });
  }
}

const fmt = (x: unknown) => (typeof x === "number" ? x.toFixed(4) : "n/a");
