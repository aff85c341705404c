// The eval stage's model-free parts: gate checks, answer scores, warnings, recipe validation of eval.gate, and the
// report's HTML (self-contained, escaped).
import { test } from "node:test";
import assert from "node:assert/strict";
import { checkGate, containsAnswer, dataWarnings, exactMatch, isKnownMetric, overfittingWarning } from "../../plugins/nx-finetune/src/eval/metrics";
import { renderReport, type EvalReport } from "../../plugins/nx-finetune/src/eval/report";
import { parseRecipe, RecipeError } from "../../plugins/nx-finetune/src/recipe";
import type { MetricPoint } from "../../plugins/nx-finetune/src/loss-svg";
import { loadLlama, shardDocuments } from "../../plugins/nx-finetune/src/eval/gguf-perplexity";
import { encodeShard } from "../../plugins/nx-finetune/src/data/shard-format";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

test("a gate passes inside its bounds and fails outside, naming metric, value and bound", () => {
  const m = { eval_loss: 1.2, eval_loss_delta: -0.3, exact_match: 0.5 };
  assert.deepEqual(checkGate(m, { eval_loss: { max: 1.5 }, eval_loss_delta: { max: 0 }, exact_match: { min: 0.5 } }), []);
  const f = checkGate(m, { eval_loss: { max: 1 }, exact_match: { min: 0.6, max: 1 } });
  assert.deepEqual(f.map((x) => x.metric), ["eval_loss", "exact_match"]);
  assert.equal(f[0].message, "eval_loss = 1.2000, the gate wants ≤ 1");
  assert.equal(f[1].message, "exact_match = 0.5000, the gate wants ≥ 0.6 and ≤ 1");
  // Bounds are inclusive.
  assert.deepEqual(checkGate({ eval_loss: 1 }, { eval_loss: { min: 1, max: 1 } }), []);
});

test("a gated metric that was not measured fails with the reason", () => {
  const f = checkGate({ eval_loss: null }, { eval_loss: { max: 2 }, gguf_q4_k_m_perplexity: { max: 10 } });
  assert.equal(f.length, 2);
  assert.match(f[0].message, /eval_loss was not measured \(the dataset has no eval split/);
  assert.match(f[1].message, /gguf_q4_k_m_perplexity was not measured .*node-llama-cpp/);
});

test("exact match folds case and spaces but not punctuation; contains looks for the reference", () => {
  assert.ok(exactMatch("  paris. ", "Paris."));
  assert.ok(exactMatch("New  York", "new york"));
  assert.ok(!exactMatch("Paris", "Paris."));
  assert.ok(containsAnswer("The answer is Paris.", "paris."));
  assert.ok(!containsAnswer("Lyon.", "Paris."));
  assert.ok(!containsAnswer("anything", "  "), "an empty reference matches nothing");
});

// Train loss falling linearly, eval points as given.
function curve(evals: Array<[number, number]>, trainFrom = 3, trainTo = 0.1, steps = 300): MetricPoint[] {
  const pts: MetricPoint[] = [];
  for (let s = 1; s <= steps; s++) pts.push({ kind: "step", step: s, loss: trainFrom + ((trainTo - trainFrom) * s) / steps });
  for (const [step, loss] of evals) pts.push({ kind: "eval", step, loss });
  return pts;
}

test("overfitting: two or more consecutive eval rises while train loss falls", () => {
  // The demo's numbers.
  const w = overfittingWarning(curve([[100, 5.97], [200, 6.15], [300, 6.22]]));
  assert.match(w ?? "", /eval loss rose at 2 consecutive evals \(5\.97 → 6\.15 → 6\.22, steps 100–300\) while train loss fell/);
  // One rise is noise, not a trend.
  assert.equal(overfittingWarning(curve([[100, 5.97], [200, 5.5], [300, 5.6]])), undefined);
  // Eval falling: fine.
  assert.equal(overfittingWarning(curve([[100, 3], [200, 2.5], [300, 2.2]])), undefined);
  // Both rising (diverging training): not overfitting.
  assert.equal(overfittingWarning(curve([[100, 3], [200, 3.5], [300, 4]], 1, 2)), undefined);
  // Only the rising run at the end counts.
  assert.match(overfittingWarning(curve([[50, 4], [100, 4.1], [150, 3], [200, 3.2], [250, 3.3], [300, 3.4]])) ?? "", /rose at 3 consecutive evals/);
});

test("data warnings: more than 5% truncated, any row with no target", () => {
  assert.deepEqual(dataWarnings({ rows: 100, truncated: 5, untrained: 0 }), []);
  const w = dataWarnings({ rows: 100, truncated: 6, untrained: 2 });
  assert.equal(w.length, 2);
  assert.match(w[0], /6 of 100 rows \(6\.0%\) were cut at template\.max_seq_len/);
  assert.match(w[1], /2 row\(s\) have no target token left/);
});

test("eval.gate in a recipe: unknown metrics, empty bounds and min > max are file:line:field errors", () => {
  const recipe = {
    base: { init: "base/config.json", tokenizer: "base" },
    data: { path: "train.jsonl", format: "alpaca", eval_fraction: 0.1 },
    template: { name: "alpaca", max_seq_len: 64 }, lora: { r: 8 }, train: { steps: 10 }, export: { gguf: ["q8_0"] },
    eval: { gate: { eval_loss: { max: 1.5 }, eval_los: { max: 1 }, exact_match: {}, contains: { min: 0.9, max: 0.1 }, gguf_q8_0_perplexity: { maxi: 3 } } },
  };
  const src = JSON.stringify(recipe, null, 2) + "\n";
  let issues: RecipeError["issues"] = [];
  try { parseRecipe(src, "recipes/x/recipe.json"); } catch (e) { assert.ok(e instanceof RecipeError); issues = e.issues; }
  const byField = Object.fromEntries(issues.map((i) => [i.field, i]));
  // Structure first (the schema walk), so the unknown bound key is reported before the semantic checks run.
  assert.deepEqual(Object.keys(byField), ["eval.gate.gguf_q8_0_perplexity.maxi"]);
  assert.match(byField["eval.gate.gguf_q8_0_perplexity.maxi"].message, /unknown key \(expected one of: min, max\)/);
  const lineOf = (needle: string) => src.slice(0, src.indexOf(needle)).split("\n").length;
  assert.equal(byField["eval.gate.gguf_q8_0_perplexity.maxi"].line, lineOf('"maxi"'));

  delete (recipe.eval.gate as any).gguf_q8_0_perplexity;
  const src2 = JSON.stringify(recipe, null, 2) + "\n";
  try { parseRecipe(src2, "recipes/x/recipe.json"); assert.fail("expected errors"); } catch (e) { assert.ok(e instanceof RecipeError); issues = e.issues; }
  const msgs = issues.map((i) => `${i.file}:${i.line}:${i.column} ${i.field}: ${i.message}`);
  assert.equal(issues.length, 3, msgs.join("\n"));
  const at = (n: string) => src2.slice(0, src2.indexOf(n)).split("\n").length;
  assert.match(msgs[0], new RegExp(`^recipes/x/recipe.json:${at('"eval_los"')}:\\d+ eval\\.gate\\.eval_los: unknown metric \\(expected one of: eval_loss, `));
  assert.match(msgs[1], new RegExp(`^recipes/x/recipe.json:${at('"exact_match"')}:\\d+ eval\\.gate\\.exact_match: give min, max or both`));
  assert.match(msgs[2], /eval\.gate\.contains\.min: must be ≤ max \(0\.1\)/);
});

test("a recipe without eval gets the defaults; GGUF metric names follow the exported types", () => {
  const r = parseRecipe(JSON.stringify({
    base: "m", data: { path: "d.jsonl", format: "alpaca" }, template: { name: "alpaca", max_seq_len: 64 }, lora: { r: 8 }, train: { steps: 1 }, export: {},
  }), "r.json");
  assert.deepEqual(r.eval, { samples: 4, score_rows: 32, max_new_tokens: 32, gguf_perplexity: true, gate: {} });
  assert.ok(isKnownMetric("gguf_q4_k_m_perplexity_delta") && isKnownMetric("eval_loss_delta"));
  assert.ok(!isKnownMetric("gguf_q3_perplexity") && !isKnownMetric("loss"));
});

test("the report escapes recipe text and generations and embeds everything it shows", () => {
  const report: EvalReport = {
    project: "x", recipeText: '{"system": "</pre><script>alert(1)</script>"}', generatedAt: "2026-01-01T00:00:00Z",
    metrics: { eval_loss: 1, base_eval_loss: 2, eval_loss_delta: -1 }, gate: { eval_loss: { max: 0.5 } },
    failures: [{ metric: "eval_loss", value: 1, bound: { max: 0.5 }, message: "eval_loss = 1, the gate wants ≤ 0.5" }],
    warnings: ["w <b>"], notes: [], samples: [{ prompt: "<img src=x>", reference: "a", base: "b", tuned: "a" }], scoredRows: 1,
    gguf: [{ file: "x.q8_0.gguf", type: "q8_0", size: 3 << 20, perplexity: 5, delta: 0.01 }],
    curve: [{ kind: "step", step: 1, loss: 2 }, { kind: "eval", step: 1, loss: 2.5 }],
    data: { rows: 1, train_rows: 1, eval_rows: 0, skipped: 0, seq_len: 8, examples: { train: 1, eval: 0 }, truncated: 0, untrained: 0, tokens: 5, target_tokens: 2 },
    training: null,
  };
  const html = renderReport(report);
  assert.ok(!html.includes("<script>") && !html.includes("<img src=x>") && !html.includes("w <b>"));
  assert.ok(html.includes("&lt;script&gt;") && html.includes("gate FAILED") && html.includes("3.0 MiB") && html.includes("+1.00%"));
  assert.ok(html.includes("<svg") && !/(src|href)=["']?https?:/.test(html));
});

test("GGUF perplexity documents: packed rows split where positions restart, padding dropped, capped by whole documents", () => {
  const T = 8, X = -100;
  // Row 0: two packed documents (3 + 3 tokens) and padding; row 1: one document with no target (prompt only).
  const tokens = [1, 5, 6, 1, 7, 8, 0, 0, /**/ 1, 9, 9, 9, 0, 0, 0, 0];
  const targets = [X, 6, X, X, 8, X, X, X, /**/ X, X, X, X, X, X, X, X];
  const positions = [0, 1, 2, 0, 1, 2, 0, 1, /**/ 0, 1, 2, 3, 0, 1, 2, 3];
  const dir = mkdtempSync(join(tmpdir(), "nxft-docs-"));
  const file = join(dir, "a.tokens.bin");
  writeFileSync(file, encodeShard({ seqLen: T, nRows: 2, tokens: Int32Array.from(tokens), targets: Int32Array.from(targets), positions: Int32Array.from(positions) }));
  assert.deepEqual(shardDocuments([file]), [{ ids: [1, 5, 6], targets: [X, 6, X] }, { ids: [1, 7, 8], targets: [X, 8, X] }]);
  assert.deepEqual(shardDocuments([file], 1), [{ ids: [1, 5, 6], targets: [X, 6, X] }]);
});

test("without node-llama-cpp the GGUF perplexity is skipped with a note saying how to get it", async () => {
  const notes: string[] = [];
  const missing = async () => { throw Object.assign(new Error("Cannot find package 'node-llama-cpp'"), { code: "ERR_MODULE_NOT_FOUND" }); };
  assert.equal(await loadLlama((n) => notes.push(n), missing), null);
  assert.deepEqual(notes, ["node-llama-cpp is not installed (npm i -D node-llama-cpp@3.21.1 to measure GGUF perplexity)"]);
  const broken = async () => { throw new Error("binary for this platform not found\nmore"); };
  assert.equal(await loadLlama((n) => notes.push(n), broken), null);
  assert.equal(notes[1], "node-llama-cpp could not be loaded: binary for this platform not found");
});
