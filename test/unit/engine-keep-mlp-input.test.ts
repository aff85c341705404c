// NXFT_KEEP_MLP_INPUT on the real `train` path (TransformerOptions::keep_mlp_input, read once where `train`
// builds its options): without checkpointing every layer keeps its MLP input h (the default) or, with 0, recomputes
// it in backward. Speed and memory differ, nothing the run computes may: the same step and eval losses, the same
// adapter bytes; the summary says which side a run was; a value other than 0 or 1 is refused with an error naming
// the variable (not silently read as off).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execFileSync, spawnSync } from "node:child_process";
import { encodeShard } from "../../plugins/nx-finetune/src/data/shard-format";

const repo = resolve(__dirname, "..", "..");
const engine = process.env.NXFT_ENGINE || join(repo, "native", "build", "finetune-engine");
const skip = !existsSync(engine) && "no engine";
let dir = "";
const T = 32, ROWS = 8, VOCAB = 512;

// Rows of packed documents (positions restart at 0), the first tokens of each document without a target.
function writeShard(file: string): void {
  let s = 777;
  const rnd = (n: number) => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) % n;
  const tokens = new Int32Array(ROWS * T), targets = new Int32Array(ROWS * T), positions = new Int32Array(ROWS * T);
  for (let r = 0; r < ROWS; r++) {
    let pos = 0, docLen = 6 + rnd(20);
    for (let t = 0; t < T; t++) {
      if (pos === docLen) { pos = 0; docLen = 6 + rnd(20); }
      const i = r * T + t;
      tokens[i] = 3 + rnd(VOCAB - 3);
      positions[i] = pos;
      targets[i] = pos < 2 ? -100 : 3 + rnd(VOCAB - 3);
      pos++;
    }
  }
  writeFileSync(file, encodeShard({ seqLen: T, nRows: ROWS, tokens, targets, positions }));
}

before(() => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "nxft-keeph-"));
  const demo = join(repo, "recipes", "demo", "base");
  writeFileSync(join(dir, "init.json"), JSON.stringify({ command: "init", config: join(demo, "config.json"), seed: 0, dtype: "f32",
    out: join(dir, "base"), tokenizer_files: [] }));
  execFileSync(engine, ["init", "--job", join(dir, "init.json")], { stdio: "pipe" });
  writeShard(join(dir, "train.tokens.bin"));
});

after(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

interface Run { code: number | null; events: any[]; stderr: string }

// All seven targets (down's LoRA folded into its GEMM: its xa rides in h's tail columns), no checkpointing (the
// option only matters then), 3 steps of 2 rows.
function train(name: string, keep: string | undefined): Run {
  const job = {
    command: "train", base: join(dir, "base"), train_shards: [join(dir, "train.tokens.bin")], eval_shards: [join(dir, "train.tokens.bin")],
    out: join(dir, name), backend: "cpu", threads: 1,
    lora: { r: 4, alpha: 8, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
    train: { seed: 3, lr: 1e-3, steps: 3, batch_size: 2, grad_accum: 1, max_grad_norm: 1.0, weight_decay: 0.0, eval_every: 3, shuffle: true },
  };
  const jobFile = join(dir, `${name}.json`);
  writeFileSync(jobFile, JSON.stringify(job));
  const env = { ...process.env };
  delete env.NXFT_KEEP_MLP_INPUT;
  if (keep !== undefined) env.NXFT_KEEP_MLP_INPUT = keep;
  const r = spawnSync(engine, ["train", "--job", jobFile], { env, encoding: "utf8" });
  return { code: r.status, events: r.stdout.split("\n").filter(Boolean).map((l) => JSON.parse(l)), stderr: r.stderr };
}

const ok = (r: Run) => assert.equal(r.code, 0, `engine failed: ${JSON.stringify(r.events.find((e) => e.event === "error"))}\n${r.stderr}`);
const losses = (r: Run, kind: string) => r.events.filter((e) => e.event === kind).map((e) => e.loss);
const summary = (r: Run) => r.events.find((e) => e.event === "done")?.summary;

test("the kept MLP input (the default; NXFT_KEEP_MLP_INPUT=1) trains the same adapter bit for bit as NXFT_KEEP_MLP_INPUT=0, and the summary says which", { skip, timeout: 120_000 }, () => {
  const lean = train("lean", undefined), kept = train("kept", "1"), off = train("off", "0");
  [lean, kept, off].forEach(ok);
  assert.equal(losses(lean, "step").length, 3);
  assert.ok(losses(lean, "step").every((l: number) => Number.isFinite(l) && l > 0), "step losses are finite and positive");
  assert.deepEqual(losses(kept, "step"), losses(lean, "step"));
  assert.deepEqual(losses(kept, "eval"), losses(lean, "eval"));
  const adapter = (name: string) => readFileSync(join(dir, name, "adapter_model.safetensors"));
  assert.ok(adapter("kept").equals(adapter("lean")), "the adapters differ");
  assert.ok(adapter("off").equals(adapter("lean")), "NXFT_KEEP_MLP_INPUT=0 differs from unset");
  assert.equal(summary(kept)?.keep_mlp_input, true);
  assert.equal(summary(lean)?.keep_mlp_input, true, "unset keeps h");
  assert.equal(summary(off)?.keep_mlp_input, false);
});

test("NXFT_KEEP_MLP_INPUT other than 0 or 1 is an error naming the variable", { skip, timeout: 60_000 }, () => {
  const r = train("bad", "yes");
  assert.equal(r.code, 1);
  const errors = r.events.filter((e) => e.event === "error");
  assert.equal(errors.length, 1, JSON.stringify(r.events));
  assert.equal(errors[0].field, "NXFT_KEEP_MLP_INPUT");
  assert.match(errors[0].message, /NXFT_KEEP_MLP_INPUT="yes"/);
  assert.ok(!existsSync(join(dir, "bad", "adapter_model.safetensors")), "a refused run wrote an adapter");
});
