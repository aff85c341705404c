// metrics.ts — the eval stage's numbers that need no model: the metric names a gate may bound, the gate check,
// answer scores (exact match / contains) and the warnings people need (overfitting, truncation, rows left with
// no target). Pure functions, tested in test/unit/eval-metrics.test.ts.
import type { MetricPoint } from "../loss-svg";

// Metrics the eval stage measures, each with what it means (the report's legend and the recipe check's list).
// Lower is better for losses and perplexities; higher for scores. `null` in metrics.json = not measured.
export const METRICS: Record<string, string> = {
  eval_loss: "mean cross-entropy of the tuned model (base + adapter) over the eval split's target tokens",
  eval_perplexity: "exp(eval_loss)",
  base_eval_loss: "the same for the base model alone (the step-0 baseline)",
  base_eval_perplexity: "exp(base_eval_loss)",
  eval_loss_delta: "eval_loss − base_eval_loss (negative: the fine-tune helped)",
  eval_perplexity_delta: "eval_perplexity − base_eval_perplexity",
  merged_eval_loss: "eval loss of the merged model (export.merged_dtype): what the GGUF files are made from",
  exact_match: "tuned model: fraction of scored eval rows whose greedy answer equals the reference (trimmed, case- and space-folded)",
  contains: "tuned model: fraction of scored eval rows whose greedy answer contains the reference",
  base_exact_match: "exact_match of the base model",
  base_contains: "contains of the base model",
  exact_match_delta: "exact_match − base_exact_match",
  contains_delta: "contains − base_contains",
  truncated_fraction: "fraction of dataset rows cut at template.max_seq_len",
  untrained_rows: "dataset rows left with no target token (they teach nothing)",
};

// Per exported GGUF type: llama.cpp's perplexity on the eval split, and its relative change against f16 (or the
// most precise type exported), e.g. 0.012 = 1.2% higher.
export const GGUF_METRIC = /^gguf_(f32|f16|bf16|q8_0|q4_0|q4_k_m|q5_k_m|q6_k)_(perplexity|perplexity_delta)$/;

export function isKnownMetric(name: string): boolean {
  return name in METRICS || GGUF_METRIC.test(name);
}

export type Metrics = Record<string, number | null>;
export interface Bound { min?: number; max?: number }
export interface GateFailure { metric: string; value: number | null; bound: Bound; message: string }

// Every gated metric must be measured and within its bounds.
export function checkGate(metrics: Metrics, gate: Record<string, Bound>): GateFailure[] {
  const failures: GateFailure[] = [];
  for (const [metric, bound] of Object.entries(gate)) {
    const value = metrics[metric] ?? null;
    const want = [bound.min !== undefined ? `≥ ${bound.min}` : "", bound.max !== undefined ? `≤ ${bound.max}` : ""].filter(Boolean).join(" and ");
    if (value === null || !Number.isFinite(value)) {
      failures.push({ metric, value: null, bound, message: `${metric} was not measured (${notMeasuredReason(metric)}); the gate wants ${want}` });
    } else if ((bound.min !== undefined && value < bound.min) || (bound.max !== undefined && value > bound.max)) {
      failures.push({ metric, value, bound, message: `${metric} = ${formatMetric(value)}, the gate wants ${want}` });
    }
  }
  return failures;
}

function notMeasuredReason(metric: string): string {
  if (metric.startsWith("gguf_")) return "that GGUF type is not exported, eval.gguf_perplexity is false, or node-llama-cpp is not installed";
  if (/exact_match|contains/.test(metric)) return "no eval row has a reference answer";
  return "the dataset has no eval split: set data.eval_fraction or data.eval_rows";
}

export function formatMetric(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "n/a";
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 100 ? v.toFixed(1) : Math.abs(v) >= 0.001 ? v.toFixed(4) : v.toExponential(2);
}

// ---- answer scores -----------------------------------------------------------------------------------------------

// Case, surrounding space and inner runs of space don't count; punctuation does ("Paris." ≠ "Paris").
export function normalizeAnswer(s: string): string {
  return s.trim().replace(/\s+/g, " ").toLowerCase();
}

export function exactMatch(answer: string, reference: string): boolean {
  return normalizeAnswer(answer) === normalizeAnswer(reference);
}

export function containsAnswer(answer: string, reference: string): boolean {
  const ref = normalizeAnswer(reference);
  return ref.length > 0 && normalizeAnswer(answer).includes(ref);
}

// ---- warnings ------------------------------------------------------------------------------------------------------

// Overfitting: the eval loss rose at `minRises` or more consecutive evals (ending at the last one) while the train
// loss fell over the same span (train loss averaged over the steps leading to each eval, so one noisy step
// doesn't decide).
export function overfittingWarning(points: MetricPoint[], minRises = 2): string | undefined {
  const evals = points.filter((p) => p.kind === "eval").sort((a, b) => a.step - b.step);
  let start = evals.length - 1;
  while (start > 0 && evals[start - 1].loss < evals[start].loss) start--;
  const rises = evals.length - 1 - start;
  if (rises < minRises) return undefined;
  const steps = points.filter((p) => p.kind === "step");
  const trainNear = (step: number) => {
    const window = steps.filter((p) => p.step <= step).slice(-10);
    return window.length ? window.reduce((s, p) => s + p.loss, 0) / window.length : NaN;
  };
  const first = evals[start], last = evals[evals.length - 1];
  const trainFrom = trainNear(first.step), trainTo = trainNear(last.step);
  if (!(trainTo < trainFrom)) return undefined;
  return `overfitting: eval loss rose at ${rises} consecutive evals (${evals.slice(start).map((e) => e.loss.toFixed(2)).join(" → ")}, ` +
         `steps ${first.step}–${last.step}) while train loss fell (${trainFrom.toFixed(2)} → ${trainTo.toFixed(2)}): ` +
         `train fewer steps, lower train.lr, add data or raise lora.dropout`;
}

export interface DataStats { rows: number; truncated: number; untrained: number }

export function dataWarnings(s: DataStats, maxTruncatedFraction = 0.05): string[] {
  const out: string[] = [];
  if (s.rows > 0 && s.truncated / s.rows > maxTruncatedFraction) {
    out.push(`${s.truncated} of ${s.rows} rows (${((100 * s.truncated) / s.rows).toFixed(1)}%) were cut at template.max_seq_len: raise it, or shorten the rows`);
  }
  if (s.untrained > 0) {
    out.push(`${s.untrained} row(s) have no target token left (the prompt fills template.max_seq_len, or the answer is empty): they teach nothing`);
  }
  return out;
}
