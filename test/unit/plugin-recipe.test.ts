// Recipe validation: every mistake names the file, the line:column and the field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadRecipe, parseRecipe, RecipeError } from "../../plugins/nx-finetune/src/recipe";

const good = {
  base: { init: "base/config.json", tokenizer: "base" },
  data: { path: "train.jsonl", format: "alpaca", eval_fraction: 0.1 },
  template: { name: "alpaca", max_seq_len: 64 },
  lora: { r: 8 },
  train: { steps: 10 },
  export: { gguf: ["q8_0"] },
};

// Pretty-printed like a hand-written recipe, so every field sits on a known line.
function text(recipe: unknown): string {
  return JSON.stringify(recipe, null, 2) + "\n";
}

function issuesOf(recipe: unknown, file = "recipes/x/recipe.json") {
  try {
    parseRecipe(typeof recipe === "string" ? recipe : text(recipe), file);
  } catch (e) {
    assert.ok(e instanceof RecipeError, String(e));
    return e.issues;
  }
  assert.fail("expected a RecipeError");
}

function lineOf(src: string, needle: string): number {
  const idx = src.indexOf(needle);
  assert.ok(idx >= 0, needle);
  return src.slice(0, idx).split("\n").length;
}

test("a valid recipe gets its defaults filled", () => {
  const r = parseRecipe(text(good), "r.json");
  assert.equal(r.lora.alpha, 16);
  assert.deepEqual(r.lora.targets, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
  assert.equal(r.train.lr, 0.0002);
  assert.equal(r.train.batch_size, 2);
  assert.equal(r.quantize_base, null);
  assert.equal(r.export.merged_dtype, "bf16");
  assert.deepEqual(r.engine, { backend: "auto", threads: 0 });
  assert.equal(r.template.train_on, "responses");
});

test("r <= 0 names file, line, column and field", () => {
  const bad = { ...good, lora: { r: 0 } };
  const src = text(bad);
  const [issue, ...rest] = issuesOf(bad);
  assert.equal(rest.length, 0);
  assert.equal(issue.file, "recipes/x/recipe.json");
  assert.equal(issue.field, "lora.r");
  assert.equal(issue.line, lineOf(src, '"r": 0'));
  assert.equal(issue.column, 5);
  assert.match(issue.message, /must be > 0 \(got 0\)/);
  assert.throws(() => parseRecipe(src, "recipes/x/recipe.json"), (e: Error) => e.message.startsWith(`recipes/x/recipe.json:${issue.line}:5 lora.r: must be > 0`));
});

test("eval_fraction >= 1, unknown keys, wrong types and bad enums are all reported at once", () => {
  const bad = {
    ...good,
    data: { ...good.data, eval_fraction: 1 },
    lora: { r: 8, rank: 4 },
    train: { steps: "100" },
    template: { name: "vicuna", max_seq_len: 64 },
  };
  const src = text(bad);
  const issues = issuesOf(bad);
  const byField = Object.fromEntries(issues.map((i) => [i.field, i]));
  assert.deepEqual(Object.keys(byField).sort(), ["data.eval_fraction", "lora.rank", "template.name", "train.steps"]);
  assert.match(byField["data.eval_fraction"].message, /must be < 1 \(got 1\)/);
  assert.equal(byField["data.eval_fraction"].line, lineOf(src, '"eval_fraction": 1'));
  assert.match(byField["lora.rank"].message, /unknown key \(expected one of: r, alpha, dropout, targets, rslora\)/);
  assert.equal(byField["lora.rank"].line, lineOf(src, '"rank"'));
  assert.match(byField["train.steps"].message, /must be an integer \(got string "100"\)/);
  assert.match(byField["template.name"].message, /must be one of "alpaca", "chatml", "llama3", "base", "text"/);
});

test("unknown top-level key and missing required section", () => {
  const { lora: _lora, ...noLora } = good;
  const issues = issuesOf({ ...noLora, optimiser: "adam" });
  assert.deepEqual(issues.map((i) => i.field).sort(), ["lora", "optimiser"]);
  assert.match(issues.find((i) => i.field === "lora")!.message, /is required/);
});

test("steps xor epochs; warmup <= steps; lora target names; gguf types", () => {
  assert.match(issuesOf({ ...good, train: { steps: 10, epochs: 1 } })[0].message, /exactly one of train.steps \/ train.epochs/);
  assert.match(issuesOf({ ...good, train: {} })[0].message, /exactly one of/);
  assert.equal(issuesOf({ ...good, train: { steps: 10, warmup_steps: 11 } })[0].field, "train.warmup_steps");
  const t = issuesOf({ ...good, lora: { r: 4, targets: ["q_proj", "qkv"] } })[0];
  assert.equal(t.field, "lora.targets[1]");
  const g = issuesOf({ ...good, export: { gguf: ["q8_0", "q3_k"] } })[0];
  assert.equal(g.field, "export.gguf[1]");
  assert.match(issuesOf({ ...good, export: { gguf: ["q8_0", "q8_0"] } })[0].message, /must not repeat/);
});

test("base: the variant the user meant is the one reported", () => {
  const hub = issuesOf({ ...good, base: { hub: "meta-llama/Llama-3.2-1B" } })[0];
  assert.equal(hub.field, "base.revision");
  assert.match(hub.message, /is required/);
  const init = issuesOf({ ...good, base: { init: "c.json", tokenizer: "t", seed: -1 } })[0];
  assert.equal(init.field, "base.seed");
  assert.match(issuesOf({ ...good, base: 42 })[0].message, /must be one of: string \| \{hub, revision\} \| \{init, tokenizer\}/);
  assert.equal(issuesOf({ ...good, quantize_base: "nf8" })[0].field, "quantize_base");
});

test("gradient_checkpointing is false, true or \"offload\"", () => {
  assert.equal(parseRecipe(text(good), "r.json").train.gradient_checkpointing, false);
  for (const v of [true, false, "offload"] as const)
    assert.equal(parseRecipe(text({ ...good, train: { steps: 10, gradient_checkpointing: v } }), "r.json").train.gradient_checkpointing, v);
  const [issue] = issuesOf({ ...good, train: { steps: 10, gradient_checkpointing: "host" } });
  assert.equal(issue.field, "train.gradient_checkpointing");
  assert.match(issue.message, /must be one of false, true, "offload" \(got "host"\)/);
});

test("invalid JSON reports the position of the syntax error", () => {
  const src = '{\n  "base": "x",\n  "lora": { "r": 8, }\n}\n';
  const [issue] = issuesOf(src);
  assert.equal(issue.line, 3);
  assert.match(issue.message, /invalid JSON/);
  assert.match(issuesOf('{ // comment\n}')[0].message, /invalid JSON/);
});

test("loadRecipe checks that referenced files exist, relative to the recipe folder", () => {
  const ws = mkdtempSync(join(tmpdir(), "nxft-recipe-"));
  mkdirSync(join(ws, "recipes", "a", "base"), { recursive: true });
  writeFileSync(join(ws, "recipes", "a", "recipe.json"), text(good));
  const err = (() => { try { loadRecipe("recipes/a/recipe.json", ws); } catch (e) { return e as RecipeError; } })();
  assert.ok(err instanceof RecipeError);
  const fields = err.issues.map((i) => i.field).sort();
  assert.deepEqual(fields, ["base.init", "base.tokenizer", "data.path"]);
  assert.ok(err.issues.every((i) => i.file === "recipes/a/recipe.json"));
  assert.match(err.issues.find((i) => i.field === "data.path")!.message, /not found: .*recipes\/a\/train\.jsonl/);

  writeFileSync(join(ws, "recipes", "a", "base", "config.json"), "{}");
  writeFileSync(join(ws, "recipes", "a", "base", "tokenizer.json"), "{}");
  writeFileSync(join(ws, "recipes", "a", "train.jsonl"), "{}\n");
  assert.equal(loadRecipe("recipes/a/recipe.json", ws).lora.r, 8);
});

test("a local base with a quantization_config: bitsandbytes 4-bit is accepted, anything else is an error at base", () => {
  const ws = mkdtempSync(join(tmpdir(), "nxft-recipe-"));
  mkdirSync(join(ws, "recipes", "q", "base"), { recursive: true });
  writeFileSync(join(ws, "recipes", "q", "recipe.json"), text({ ...good, base: "base" }));
  writeFileSync(join(ws, "recipes", "q", "train.jsonl"), "{}\n");
  const config = (qc: unknown) => writeFileSync(join(ws, "recipes", "q", "base", "config.json"), JSON.stringify({ model_type: "llama", quantization_config: qc }));
  const issue = () => {
    try { loadRecipe("recipes/q/recipe.json", ws); } catch (e) { return (e as RecipeError).issues; }
    return [];
  };
  for (const qc of [{ quant_method: "bitsandbytes", load_in_4bit: true, bnb_4bit_quant_type: "nf4", bnb_4bit_use_double_quant: true },
                    { quant_method: "bitsandbytes", load_in_4bit: true, bnb_4bit_quant_type: "fp4" }]) {
    config(qc);
    assert.deepEqual(issue(), []);
  }
  const cases: [unknown, RegExp][] = [
    [{ quant_method: "gptq", bits: 4 }, /quantization_config\.quant_method": "gptq" is not supported/],
    [{ quant_method: "bitsandbytes", load_in_8bit: true }, /quantization_config\.load_in_8bit": 8-bit/],
    [{ quant_method: "bitsandbytes", load_in_4bit: true, bnb_4bit_quant_type: "int4" }, /bnb_4bit_quant_type": must be "nf4" or "fp4"/],
  ];
  for (const [qc, message] of cases) {
    config(qc);
    const issues = issue();
    assert.equal(issues.length, 1, JSON.stringify(issues));
    assert.equal(issues[0].field, "base");
    assert.match(issues[0].message, message);
    assert.match(issues[0].message, /recipes\/q\/base\/config\.json/);
  }
});

test("the demo recipe is valid", () => {
  const root = join(__dirname, "..", "..");
  const r = loadRecipe("recipes/demo/recipe.json", root);
  assert.equal(r.template.name, "alpaca");
});
