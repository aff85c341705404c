// report.ts — the run report: one self-contained HTML file (inline CSS and SVG, no scripts, no network), so it
// opens offline from out/eval/report.html, from a CI artifact or an e-mail. Sections, in the order people ask:
// verdict (gate) and warnings, the eval table, sample generations, loss curves, training throughput and memory,
// data statistics, GGUF files, notes, the recipe.
import { lossCurveSvg, type MetricPoint } from "../loss-svg";
import { formatMetric, METRICS, type Bound, type GateFailure, type Metrics } from "./metrics";

export interface Sample { prompt: string; reference: string | null; base: string; tuned: string }

export interface EvalReport {
  project: string;
  recipeText: string;
  generatedAt: string;
  metrics: Metrics;
  gate: Record<string, Bound>;
  failures: GateFailure[];
  warnings: string[];
  notes: string[];
  samples: Sample[];
  scoredRows: number;
  gguf: Array<{ file: string; type: string; size: number; perplexity: number | null; delta: number | null }>;
  curve: MetricPoint[];
  data: { rows: number; train_rows: number; eval_rows: number; skipped: number; seq_len: number; examples: { train: number; eval: number };
          truncated: number; untrained: number; tokens: number; target_tokens: number };
  training: Record<string, any> | null; // the adapter stage's train summary (engine `done`)
}

const esc = (s: unknown) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
const f = formatMetric;

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return "n/a";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

// Lower is better for losses/perplexities, higher for scores: colour the delta by whether it helped.
function deltaCell(delta: number | null, higherIsBetter: boolean): string {
  if (delta === null || !Number.isFinite(delta)) return `<td>n/a</td>`;
  const good = higherIsBetter ? delta > 0 : delta < 0, bad = higherIsBetter ? delta < 0 : delta > 0;
  return `<td class="${good ? "good" : bad ? "bad" : ""}">${delta > 0 ? "+" : ""}${f(delta)}</td>`;
}

function table(head: string[], rows: string[][], cls = ""): string {
  return `<table class="${cls}"><thead><tr>${head.map((h) => `<th>${h}</th>`).join("")}</tr></thead><tbody>` +
         rows.map((r) => `<tr>${r.map((c) => (c.startsWith("<td") ? c : `<td>${c}</td>`)).join("")}</tr>`).join("") + `</tbody></table>`;
}

export function renderReport(r: EvalReport): string {
  const m = r.metrics;
  const pass = r.failures.length === 0;
  const gated = Object.keys(r.gate);
  const verdict = gated.length === 0 ? `<span class="badge none">no gate</span>`
    : pass ? `<span class="badge pass">gate passed</span>` : `<span class="badge fail">gate FAILED</span>`;

  const evalRows = [
    ["eval loss", m.base_eval_loss, m.eval_loss, m.eval_loss_delta, false],
    ["perplexity", m.base_eval_perplexity, m.eval_perplexity, m.eval_perplexity_delta, false],
    [`exact match (${r.scoredRows} rows)`, m.base_exact_match, m.exact_match, m.exact_match_delta, true],
    [`contains (${r.scoredRows} rows)`, m.base_contains, m.contains, m.contains_delta, true],
  ] as Array<[string, number | null, number | null, number | null, boolean]>;
  const evalTable = table(["metric", "base", "tuned", "delta"],
    evalRows.map(([name, b, t, d, hib]) => [esc(name), f(b), `<td><b>${f(t)}</b></td>`, deltaCell(d, hib)]), "metrics");

  const gateTable = gated.length === 0 ? `<p class="muted">No <code>eval.gate</code> in the recipe.</p>` : table(["metric", "bound", "value", ""],
    gated.map((k) => {
      const b = r.gate[k], failed = r.failures.some((x) => x.metric === k);
      const bound = [b.min !== undefined ? `≥ ${b.min}` : "", b.max !== undefined ? `≤ ${b.max}` : ""].filter(Boolean).join(", ");
      return [`<code>${esc(k)}</code>`, esc(bound), f(m[k]), `<td class="${failed ? "bad" : "good"}">${failed ? "FAIL" : "pass"}</td>`];
    }));

  const samples = r.samples.length === 0 ? `<p class="muted">No samples.</p>` : table(["prompt", "reference", "base model", "tuned model"],
    r.samples.map((s) => {
      const mark = (answer: string) => s.reference === null ? "" : answer.trim().toLowerCase() === s.reference.trim().toLowerCase() ? " ✓" : "";
      return [`<pre>${esc(s.prompt)}</pre>`, s.reference === null ? `<span class="muted">—</span>` : `<pre>${esc(s.reference)}</pre>`,
              `<pre>${esc(s.base)}</pre>${mark(s.base)}`, `<pre>${esc(s.tuned)}</pre>${mark(s.tuned)}`];
    }), "samples");

  const t = r.training ?? {};
  const trainingTable = table(["", ""], [
    ["steps", esc(t.steps ?? "n/a")], ["tokens", esc(t.tokens ?? "n/a")],
    ["throughput", t.tokens_per_s !== undefined ? `${Math.round(t.tokens_per_s).toLocaleString("en-US")} tokens/s` : "n/a"],
    ["training time", t.train_s !== undefined ? `${Number(t.train_s).toFixed(1)} s (${Number(t.wall_s ?? 0).toFixed(1)} s wall)` : "n/a"],
    ["peak process memory", formatBytes(t.peak_memory_bytes)], ["peak backend memory", formatBytes(t.backend_peak_bytes)],
    ["backend / device", esc(`${t.backend ?? "?"} / ${t.device ?? "?"}`)], ["trainable parameters", esc(t.trainable_params ?? "n/a")],
    ["final train loss", f(t.final_train_loss)], ["final eval loss (training)", f(t.final_eval_loss)],
  ], "kv");

  const d = r.data;
  const pct = (a: number, b: number) => (b > 0 ? ` (${((100 * a) / b).toFixed(1)}%)` : "");
  const examples = d.examples.train + d.examples.eval;
  const dataTable = table(["", ""], [
    ["rows", `${d.rows} (${d.train_rows} train, ${d.eval_rows} eval${d.skipped ? `, ${d.skipped} skipped` : ""})`],
    ["tokens", `${d.tokens.toLocaleString("en-US")} (${d.target_tokens.toLocaleString("en-US")} target tokens)`],
    ["max_seq_len", String(d.seq_len)],
    ["truncated rows", `${d.truncated}${pct(d.truncated, examples)}`],
    ["rows with no target", `${d.untrained}${pct(d.untrained, examples)}`],
  ], "kv");

  const ggufTable = r.gguf.length === 0 ? `<p class="muted">No GGUF files.</p>` : table(["file", "type", "size", "perplexity (llama.cpp)", "vs reference"],
    r.gguf.map((g) => [`<code>${esc(g.file)}</code>`, esc(g.type), formatBytes(g.size), f(g.perplexity),
                       g.delta === null ? "n/a" : `${g.delta >= 0 ? "+" : ""}${(100 * g.delta).toFixed(2)}%`]));

  const hasCurve = r.curve.length > 0;
  const curve = hasCurve ? lossCurveSvg(r.curve, r.project, 1000, 320, m.base_eval_loss ?? undefined) : `<p class="muted">No training metrics.</p>`;
  const legend = Object.entries(METRICS).map(([k, v]) => `<dt><code>${esc(k)}</code></dt><dd>${esc(v)}</dd>`).join("");

  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.project)} — fine-tune report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.45 system-ui, sans-serif; color: #1b1f24; background: #f4f6f8; margin: 0; padding: 24px; }
main { max-width: 1100px; margin: 0 auto; }
section { background: white; border: 1px solid #d8dee4; border-radius: 8px; padding: 16px 20px; margin-bottom: 16px; }
h1 { font-size: 24px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 0 0 10px; }
table { border-collapse: collapse; width: 100%; } th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #e6e9ec; vertical-align: top; }
th { background: #eef2f6; } table.kv td:first-child { width: 30%; color: #57606a; } table.kv thead { display: none; }
table.metrics td, table.metrics th { text-align: right; } table.metrics td:first-child, table.metrics th:first-child { text-align: left; }
td.good { color: #116329; background: #dafbe1; font-weight: 600; } td.bad { color: #a40e26; background: #ffebe9; font-weight: 600; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 12.5px/1.4 ui-monospace, monospace; }
.badge { display: inline-block; padding: 3px 12px; border-radius: 12px; font-weight: 700; color: white; }
.badge.pass { background: #1f883d; } .badge.fail { background: #cf222e; } .badge.none { background: #6e7781; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; margin: 6px 0; }
.muted { color: #6e7781; } .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; } .grid section { margin: 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; } dd { margin: 0; color: #57606a; }
</style></head>
<body><main>
<section><h1>${esc(r.project)} ${verdict}</h1><div class="muted">nx-finetune run report · ${esc(r.generatedAt)}</div>
${r.warnings.map((w) => `<div class="warn">⚠ ${esc(w)}</div>`).join("\n")}
${r.failures.map((x) => `<div class="warn" style="background:#ffebe9;border-color:#cf222e">✗ ${esc(x.message)}</div>`).join("\n")}
</section>
<section><h2>Eval split: base model vs tuned model</h2>${evalTable}</section>
<section><h2>Quality gate</h2>${gateTable}</section>
<section><h2>Sample generations (greedy)</h2>${samples}</section>
<section><h2>Loss curves</h2>${curve}<div class="muted">Blue: train loss per step. Red dots: eval loss during training.
Dashed grey: the base model's eval loss (${f(m.base_eval_loss)}); the tuned model's: ${f(m.eval_loss)}.</div></section>
<div class="grid"><section><h2>Training: throughput and memory</h2>${trainingTable}</section>
<section><h2>Data</h2>${dataTable}</section></div>
<section style="margin-top:16px"><h2>GGUF files</h2>${ggufTable}</section>
<section><h2>Notes</h2>${r.notes.length ? `<ul>${r.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : `<p class="muted">None.</p>`}
<details><summary>Metric definitions</summary><dl>${legend}</dl></details></section>
<section><h2>Recipe</h2><pre>${esc(r.recipeText)}</pre></section>
</main></body></html>
`;
}
