// eval.ts — the eval stage: did the fine-tune help? On the recipe's eval split:
//   losses      engine `eval` of the base model (the step-0 baseline), base + adapter (the tuned model) and the
//               merged model, their perplexities and differences
//   generations engine `generate` (greedy) from base and tuned for the first eval rows (or eval.prompts), decoded
//               here, next to the reference answer; exact-match / contains scores over rows with a reference
//   GGUF        llama.cpp perplexity of every exported type (node-llama-cpp, optional), relative to f16
//   warnings    overfitting (eval loss rising while train loss falls), truncated rows, rows with no target
//   gate        eval.gate bounds; a failing gate fails the target (nothing is committed, so nothing is cached)
// and writes metrics.json + a self-contained report.html (eval/report.ts).
import { availableParallelism } from "node:os";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../atomic";
import { decode, renderChat } from "../data";
import type { DatasetManifest, Message, NormalizedRow, ShardsManifest } from "../data/types";
import { readMetrics } from "../loss-svg";
import { GGUF_MAX_TARGET_TOKENS, loadLlama, ggufPerplexity, shardDocuments } from "../eval/gguf-perplexity";
import { checkGate, containsAnswer, dataWarnings, exactMatch, formatMetric, METRICS, overfittingWarning, type Metrics } from "../eval/metrics";
import { renderReport, type EvalReport, type Sample } from "../eval/report";
import { readManifest } from "../stage-dir";
import { addedTokens, baseModelDir, engine, stagePath, threads, tokenizerDir, type StageContext, type StageResult } from "../stage-context";

// The reference type GGUF perplexities are compared with: f16 when exported, else the most precise one.
const GGUF_PRECISION_ORDER = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"];

export class GateFailed extends Error {}

export async function runEval(ctx: StageContext): Promise<StageResult> {
  const r = ctx.recipe;
  const base = baseModelDir(ctx);
  const tokDir = tokenizerDir(ctx);
  const adapter = stagePath(ctx, "adapter"), merged = stagePath(ctx, "merged"), ggufDir = stagePath(ctx, "gguf");
  const shardsDir = stagePath(ctx, "shards"), datasetDir = stagePath(ctx, "dataset");
  const shards = JSON.parse(readFileSync(join(shardsDir, "manifest.json"), "utf8")) as ShardsManifest;
  // With template.add_special_tokens the ids go beyond the base's vocabulary: the base runs with it grown (new
  // rows the mean of its rows, where training started them).
  const grown = addedTokens(ctx).length > 0 ? { vocab_size: shards.vocab_size } : {};
  const dataset = JSON.parse(readFileSync(join(datasetDir, "manifest.json"), "utf8")) as DatasetManifest;
  const evalShards = shards.shards.filter((s) => s.split === "eval").map((s) => join(shardsDir, s.file));
  const metrics: Metrics = Object.fromEntries(Object.keys(METRICS).map((k) => [k, null]));
  const notes: string[] = [];

  // ---- losses on the eval split
  if (evalShards.length > 0) {
    const evalLoss = async (model: string, adapterDir: string | null, what: string) => {
      const s = await engine(ctx, "eval", { model, adapter: adapterDir, shards: evalShards, batch_size: 8, backend: r.engine.backend, threads: threads(ctx),
                                            ...(model === base ? grown : {}) });
      ctx.log(`eval: ${what} loss ${formatMetric(s.loss)} over ${s.tokens} target tokens`);
      return typeof s.loss === "number" ? s.loss : null;
    };
    metrics.base_eval_loss = await evalLoss(base, null, "base model");
    metrics.eval_loss = await evalLoss(base, adapter, "tuned model (base + adapter)");
    metrics.merged_eval_loss = await evalLoss(merged, null, `merged model (${r.export.merged_dtype})`);
    metrics.base_eval_perplexity = expOrNull(metrics.base_eval_loss);
    metrics.eval_perplexity = expOrNull(metrics.eval_loss);
    metrics.eval_loss_delta = diff(metrics.eval_loss, metrics.base_eval_loss);
    metrics.eval_perplexity_delta = diff(metrics.eval_perplexity, metrics.base_eval_perplexity);
    if (r.quantize_base) notes.push(`QLoRA: eval losses use the full-precision base + adapter; training's eval events used the ${r.quantize_base} base`);
  } else {
    notes.push("no eval split (data.eval_fraction / data.eval_rows): eval losses and GGUF perplexities are not measured");
  }

  // ---- generations: base and tuned, greedy, next to the reference answer
  const rows = readFileSync(join(datasetDir, dataset.rows_file ?? "rows.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as NormalizedRow);
  const evalRows = rows.filter((_, i) => dataset.row_splits[i] === "e");
  const cases = evalRows.map(promptAndReference).filter((c): c is PromptCase => c !== undefined);
  const scored = cases.filter((c) => c.reference !== undefined).slice(0, r.eval.score_rows);
  const samplesFromRows = r.eval.prompts ? [] : cases.slice(0, r.eval.samples);
  const promptCases: PromptCase[] = (r.eval.prompts ?? []).map((p) => ({ messages: [{ role: "user", content: p }], reference: referenceFor(p, rows) }));
  const toGenerate = unique([...scored, ...samplesFromRows, ...promptCases]);
  const generated = new Map<PromptCase, { base: string; tuned: string }>();
  if (toGenerate.length > 0) {
    // One engine call per model for all prompts (the model loads once), greedy.
    const chats = toGenerate.map((c) => renderChat(c.messages, r.template, tokDir));
    const stopIds = chats[0].stopIds;
    const gen = async (adapterDir: string | null, what: string) => {
      let done = 0;
      const s = await engine(ctx, "generate", {
        model: base, adapter: adapterDir, prompts: chats.map((c) => c.ids), max_new_tokens: r.eval.max_new_tokens, temperature: 0,
        top_k: 0, top_p: 1, seed: 0, stop_ids: stopIds, backend: r.engine.backend, threads: threads(ctx), ...grown,
      }, (e) => {
        if (e.event === "token" && (e.index === 0) && ++done % 8 === 0) ctx.log(`eval: ${what}: ${done}/${chats.length} prompts`);
      }, { quiet: true });
      ctx.log(`eval: ${what}: ${chats.length} generations, ${Math.round(s.tokens_per_s ?? 0)} tokens/s`);
      return (s.outputs as number[][]).map((ids) => decode(tokDir, ids.filter((id) => !stopIds.includes(id)), { skipSpecialTokens: true }).trim());
    };
    const baseOut = await gen(null, "base model"), tunedOut = await gen(adapter, "tuned model");
    toGenerate.forEach((c, i) => generated.set(c, { base: baseOut[i], tuned: tunedOut[i] }));
  }
  if (scored.length > 0) {
    const score = (f: (a: string, ref: string) => boolean, which: "base" | "tuned") =>
      scored.filter((c) => f(generated.get(c)![which], c.reference!)).length / scored.length;
    metrics.exact_match = score(exactMatch, "tuned");
    metrics.contains = score(containsAnswer, "tuned");
    metrics.base_exact_match = score(exactMatch, "base");
    metrics.base_contains = score(containsAnswer, "base");
    metrics.exact_match_delta = metrics.exact_match - metrics.base_exact_match;
    metrics.contains_delta = metrics.contains - metrics.base_contains;
  } else {
    notes.push("no eval row has a reference answer: exact-match / contains are not measured");
  }
  const samples: Sample[] = unique([...promptCases, ...samplesFromRows]).map((c) => ({
    prompt: c.messages.map((m) => m.content + (m.input ? `\n${m.input}` : "")).join("\n"),
    reference: c.reference ?? null,
    base: generated.get(c)!.base,
    tuned: generated.get(c)!.tuned,
  }));

  // ---- GGUF perplexity through llama.cpp
  const ggufInfo = readManifest(ctx.projectDir, "gguf");
  const ggufFiles = ggufInfo.files.filter((f) => f.path.endsWith(".gguf"))
    .map((f) => ({ file: f.path, size: f.size, type: /\.([a-z0-9_]+)\.gguf$/.exec(f.path)?.[1] ?? "?" }));
  const ggufRows: EvalReport["gguf"] = ggufFiles.map((f) => ({ ...f, perplexity: null, delta: null }));
  const modelTypes = ggufRows.filter((g) => GGUF_PRECISION_ORDER.includes(g.type))
    .sort((a, b) => GGUF_PRECISION_ORDER.indexOf(a.type) - GGUF_PRECISION_ORDER.indexOf(b.type));
  if (!r.eval.gguf_perplexity) notes.push("GGUF perplexity skipped: eval.gguf_perplexity is false");
  else if (evalShards.length > 0 && modelTypes.length > 0) {
    const llama = await loadLlama((why) => notes.push(`GGUF perplexity skipped: ${why}`));
    if (llama) {
      const docs = shardDocuments(evalShards, GGUF_MAX_TARGET_TOKENS);
      const scoredTargets = docs.reduce((s, d) => s + d.targets.filter((t) => t !== -100).length, 0);
      const allTargets = sumBy(shards.shards.filter((s) => s.split === "eval"), "target_tokens");
      if (scoredTargets < allTargets) notes.push(`GGUF perplexity over the first ${scoredTargets} of ${allTargets} eval target tokens (the same ones for every type)`);
      // llama.cpp's threads spin at a barrier: with every core busy (Node's own thread included) a 2-core machine
      // took 7 s instead of 0.35 s for the demo. Leave one core free unless engine.threads says otherwise.
      const llamaThreads = threads(ctx) || Math.max(1, availableParallelism() - 1);
      for (const g of modelTypes) {
        const p = await ggufPerplexity(llama, join(ggufDir, g.file), docs, llamaThreads);
        g.perplexity = p.perplexity;
        metrics[`gguf_${g.type}_perplexity`] = p.perplexity;
        ctx.log(`eval: ${g.file} perplexity ${formatMetric(p.perplexity)} (llama.cpp, ${p.tokens} target tokens)`);
      }
      const ref = modelTypes.find((g) => g.type === "f16") ?? modelTypes[0];
      for (const g of modelTypes) {
        g.delta = g.perplexity! / ref.perplexity! - 1;
        metrics[`gguf_${g.type}_perplexity_delta`] = g.delta;
      }
      notes.push(`GGUF perplexity deltas are relative to ${ref.file}`);
    }
  }

  // ---- data statistics and warnings
  const examples = shards.examples.train + shards.examples.eval;
  metrics.truncated_fraction = examples > 0 ? shards.truncated / examples : 0;
  metrics.untrained_rows = shards.untrained;
  const metricsFile = join(adapter, "metrics.jsonl");
  const curve = existsSync(metricsFile) ? readMetrics(metricsFile) : [];
  const warnings = [overfittingWarning(curve), ...dataWarnings({ rows: examples, truncated: shards.truncated, untrained: shards.untrained })]
    .filter((w): w is string => Boolean(w));
  if (metrics.eval_loss_delta !== null && metrics.eval_loss_delta > 0) {
    warnings.push(`the tuned model's eval loss (${formatMetric(metrics.eval_loss)}) is higher than the base model's (${formatMetric(metrics.base_eval_loss)})`);
  }
  for (const w of warnings) ctx.log(`warning: ${w}`);

  const failures = checkGate(metrics, r.eval.gate);
  const training = readJson(join(adapter, "run.json"))?.summary ?? null;
  const report: EvalReport = {
    project: ctx.projectName, recipeText: readFileSync(ctx.recipeFile, "utf8"), generatedAt: new Date().toISOString(),
    metrics, gate: r.eval.gate, failures, warnings, notes, samples, scoredRows: scored.length, gguf: ggufRows, curve,
    data: {
      rows: dataset.rows, train_rows: dataset.train_rows, eval_rows: dataset.eval_rows, skipped: dataset.skipped,
      seq_len: shards.seq_len, examples: shards.examples, truncated: shards.truncated, untrained: shards.untrained,
      tokens: sumBy(shards.shards, "tokens"), target_tokens: sumBy(shards.shards, "target_tokens"),
    },
    training,
  };
  writeJsonAtomic(join(ctx.tmp, "metrics.json"), { metrics, gate: { bounds: r.eval.gate, failures }, warnings, notes, samples, gguf: ggufRows });
  writeFileAtomic(join(ctx.tmp, "report.html"), renderReport(report));
  printTable(ctx, metrics);

  if (failures.length > 0) {
    // The failing report replaces out/eval/ without a stage-manifest.json: people can open it, and nothing
    // downstream (publish) or Nx's cache takes it for a passing eval.
    const dest = stagePath(ctx, "eval");
    rmSync(dest, { recursive: true, force: true });
    mkdirSync(dest, { recursive: true });
    for (const f of ["metrics.json", "report.html"]) renameSync(join(ctx.tmp, f), join(dest, f));
    throw new GateFailed(`quality gate failed (eval.gate in ${ctx.recipeFile}):\n` +
      failures.map((f) => `  ${f.message}`).join("\n") + `\n  report: ${join(dest, "report.html")}`);
  }
  ctx.log(`eval: report ${join(stagePath(ctx, "eval"), "report.html")}`);
  // Deterministic facts only (no times): what publish and the model card read.
  return { info: { metrics }, run: { warnings, notes } };
}

interface PromptCase { messages: Message[]; reference?: string }

// A conversation row → the messages before its last assistant turn, and that turn as the reference answer.
function promptAndReference(row: NormalizedRow): PromptCase | undefined {
  if (!("messages" in row)) return undefined;
  const last = row.messages.map((m) => m.role).lastIndexOf("assistant");
  if (last <= 0) return last < 0 ? { messages: row.messages } : undefined;
  return { messages: row.messages.slice(0, last), reference: row.messages[last].content };
}

// A prompt from eval.prompts gets the reference of a dataset row asking exactly that, when there is one.
function referenceFor(prompt: string, rows: NormalizedRow[]): string | undefined {
  for (const row of rows) {
    const c = promptAndReference(row);
    if (c?.reference !== undefined && c.messages.length === 1 && !c.messages[0].input && c.messages[0].content.trim() === prompt.trim()) return c.reference;
  }
  return undefined;
}

function printTable(ctx: StageContext, m: Metrics): void {
  const rows: Array<[string, number | null, number | null, number | null]> = [
    ["eval loss", m.base_eval_loss, m.eval_loss, m.eval_loss_delta],
    ["perplexity", m.base_eval_perplexity, m.eval_perplexity, m.eval_perplexity_delta],
    ["exact match", m.base_exact_match, m.exact_match, m.exact_match_delta],
    ["contains", m.base_contains, m.contains, m.contains_delta],
  ];
  ctx.log(`eval: ${"".padEnd(12)} ${"base".padStart(10)} ${"tuned".padStart(10)} ${"delta".padStart(10)}`);
  for (const [name, b, t, d] of rows) ctx.log(`eval: ${name.padEnd(12)} ${formatMetric(b).padStart(10)} ${formatMetric(t).padStart(10)} ${formatMetric(d).padStart(10)}`);
}

const expOrNull = (x: number | null) => (x === null ? null : Math.exp(x));
const diff = (a: number | null, b: number | null) => (a === null || b === null ? null : a - b);
const sumBy = <T>(xs: T[], k: keyof T) => xs.reduce((s, x) => s + Number(x[k] ?? 0), 0);
const unique = <T>(xs: T[]) => [...new Set(xs)];

function readJson(file: string): any {
  try { return JSON.parse(readFileSync(file, "utf8")); } catch { return undefined; }
}
