// A base model whose files disagree is refused before training, naming the file at fault: a config.json that
// declares two layers fewer than its weights hold (would train a model ignoring half its weights, then fail at gguf),
// weights holding NaN (would fail as "loss is NaN (try a lower lr)"), a max_seq_len beyond the model's positions.
// Runs the real engine ($NXFT_ENGINE, else native/build/finetune-engine) through the stage executor.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, writeFileSync, writeSync, closeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execFileSync } from "node:child_process";
import { runStages as runStagesIn } from "../support/run-stages";

const repo = resolve(__dirname, "..", "..");
const engine = process.env.NXFT_ENGINE || join(repo, "native", "build", "finetune-engine");
let ws = "";
const saved = { engine: process.env.NXFT_ENGINE, store: process.env.NXFT_STORE };

// An engine-initialized copy of the demo base (4 layers) in `dir`, with config.json edited by `edit`.
function makeBase(dir: string, edit: (config: any) => void = () => {}): void {
  mkdirSync(dir, { recursive: true });
  const demo = join(repo, "recipes", "demo", "base");
  const job = join(dir, "..", `init-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(job, JSON.stringify({ command: "init", config: join(demo, "config.json"), seed: 0, dtype: "f32", out: dir,
    tokenizer_files: ["tokenizer.json", "tokenizer_config.json"].map((f) => join(demo, f)) }));
  execFileSync(engine, ["init", "--job", job], { stdio: "pipe" });
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  edit(config);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2));
}

function writeRecipe(name: string, base: string, template: Record<string, unknown> = {}): void {
  mkdirSync(join(ws, "recipes", name), { recursive: true });
  writeFileSync(join(ws, "recipes", name, "recipe.json"), JSON.stringify({
    base, data: { path: "../../train.jsonl", format: "alpaca" },
    template: { name: "alpaca", max_seq_len: 32, ...template }, lora: { r: 4 }, train: { steps: 2, batch_size: 2 }, export: { gguf: ["q8_0"] },
    engine: { threads: 1 },
  }, null, 2));
}

before(() => {
  ws = mkdtempSync(join(tmpdir(), "nxft-validate-"));
  writeFileSync(join(ws, "train.jsonl"), [1, 2, 3, 4].map((i) => JSON.stringify({ instruction: `q${i}`, output: `a${i}` })).join("\n") + "\n");
  process.env.NXFT_ENGINE = engine;
  process.env.NXFT_STORE = join(ws, "store");
});

after(() => {
  for (const [k, v] of [["NXFT_ENGINE", saved.engine], ["NXFT_STORE", saved.store]] as const) {
    if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
});

const runStages = (project: string, stages: string[]) => runStagesIn(ws, project, stages);

test("config.json declaring two layers fewer than the weights: adapter fails naming config.json and a tensor", { skip: !existsSync(engine) && "no engine" }, async () => {
  makeBase(join(ws, "bases", "short"), (c) => { c.num_hidden_layers = 2; });
  writeRecipe("short", "../../bases/short");
  const r = await runStages("short", ["base", "dataset", "shards", "adapter"]);
  assert.equal(r.failed, "adapter", r.text);
  assert.match(r.text, /bases\/short\/config\.json declares 2 layers \(num_hidden_layers\), but the weights in \S+ hold 4, e.g\. tensor model\.layers\.2\.\S+ is not used/);
  assert.ok(!existsSync(join(ws, "recipes", "short", "out", "adapter")), "nothing half-written is kept");
});

test("config.json with a wrong intermediate_size: names config.json, the tensor and both shapes", { skip: !existsSync(engine) && "no engine" }, async () => {
  makeBase(join(ws, "bases", "wide"), (c) => { c.intermediate_size = 352; });
  writeRecipe("wide", "../../bases/wide");
  const r = await runStages("wide", ["base", "dataset", "shards", "adapter"]);
  assert.equal(r.failed, "adapter", r.text);
  assert.match(r.text, /bases\/wide\/config\.json implies shape \[352, 128\] for tensor model\.layers\.0\.mlp\.gate_proj\.weight, but \S+model\.safetensors holds \[344, 128\]/);
});

test("NaN in the weights: adapter fails naming the weights file and the tensor, not the learning rate", { skip: !existsSync(engine) && "no engine" }, async () => {
  const dir = join(ws, "bases", "nan");
  makeBase(dir);
  // Overwrite the first value of model.norm.weight (f32) with a NaN.
  const file = join(dir, "model.safetensors");
  const bytes = readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString("utf8"));
  const at = 8 + headerLen + header["model.norm.weight"].data_offsets[0];
  const fd = openSync(file, "r+");
  const nan = Buffer.alloc(4); nan.writeFloatLE(NaN);
  writeSync(fd, nan, 0, 4, at);
  closeSync(fd);
  writeRecipe("nan", "../../bases/nan");
  const r = await runStages("nan", ["base", "dataset", "shards", "adapter"]);
  assert.equal(r.failed, "adapter", r.text);
  assert.match(r.text, /bases\/nan\/model\.safetensors: tensor model\.norm\.weight holds a non-finite value \(NaN at index 0\)/);
  assert.doesNotMatch(r.text, /lower lr/);
});

test("max_seq_len beyond the base's max_position_embeddings fails shards naming the recipe field, unless allowed", { skip: !existsSync(engine) && "no engine" }, async () => {
  makeBase(join(ws, "bases", "ok"), (c) => { c.max_position_embeddings = 16; });
  writeRecipe("long", "../../bases/ok");
  const r = await runStages("long", ["base", "dataset", "shards"]);
  assert.equal(r.failed, "shards", r.text);
  assert.match(r.text, /recipes\/long\/recipe\.json: template\.max_seq_len: 32 exceeds the 16 positions of the base model \(\S+config\.json: max_position_embeddings\); lower it, or set template\.allow_beyond_max_positions: true/);
  writeRecipe("long", "../../bases/ok", { allow_beyond_max_positions: true });
  const allowed = await runStages("long", ["shards"]);
  assert.ok(allowed.ok, allowed.text);
});
