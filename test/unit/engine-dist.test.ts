// Data-parallel training through the engine directly (docs/multi-gpu.md), on the CPU collective: W engine
// processes with B/W rows each must give the adapter of one process, and a failing rank must end the run.
//
// Why the reference is "1 rank, B/W rows, W-fold gradient accumulation" for the bitwise checks: a rank computes
// its micro-batch's gradient from zero, and the cpu collective adds the ranks' gradients in rank order, which is
// exactly what one process does when it accumulates the same micro-batches one after another into a zeroed buffer.
// One process with all B rows in ONE micro-batch sums those rows inside each GEMM in another order, so it agrees
// only to float rounding (checked with a tolerance below).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execFileSync, spawn } from "node:child_process";
import { encodeShard } from "../../plugins/nx-finetune/src/data/shard-format";

const repo = resolve(__dirname, "..", "..");
const engine = process.env.NXFT_ENGINE || join(repo, "native", "build", "finetune-engine");
const skip = !existsSync(engine) && "no engine";
let dir = "";
const T = 32, ROWS = 24, VOCAB = 512;

// Rows of packed documents (positions restart at 0) with prompt tokens masked (-100), from a fixed LCG.
function writeShard(file: string, badRow = -1): void {
  let s = 12345;
  const rnd = (n: number) => ((s = (s * 1103515245 + 12345) >>> 0) >>> 8) % n;
  const tokens = new Int32Array(ROWS * T), targets = new Int32Array(ROWS * T), positions = new Int32Array(ROWS * T);
  for (let r = 0; r < ROWS; r++) {
    let pos = 0, docLen = 5 + rnd(20);
    for (let t = 0; t < T; t++) {
      if (pos === docLen) { pos = 0; docLen = 5 + rnd(20); }
      const i = r * T + t;
      tokens[i] = 3 + rnd(VOCAB - 3);
      positions[i] = pos;
      targets[i] = pos < 3 ? -100 : 3 + rnd(VOCAB - 3);
      pos++;
    }
  }
  if (badRow >= 0) tokens[badRow * T + 5] = VOCAB + 7;   // outside the vocabulary: the engine refuses the row
  writeFileSync(file, encodeShard({ seqLen: T, nRows: ROWS, tokens, targets, positions }));
}

before(() => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "nxft-dist-"));
  const demo = join(repo, "recipes", "demo", "base");
  writeFileSync(join(dir, "init.json"), JSON.stringify({ command: "init", config: join(demo, "config.json"), seed: 0, dtype: "f32",
    out: join(dir, "base"), tokenizer_files: [] }));
  execFileSync(engine, ["init", "--job", join(dir, "init.json")], { stdio: "pipe" });
  writeShard(join(dir, "train.tokens.bin"));
  writeShard(join(dir, "bad.tokens.bin"), 6);
});

after(() => { if (dir) rmSync(dir, { recursive: true, force: true }); });

interface Run { code: number | null; events: any[]; stderr: string }

function trainJob(name: string, train: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    command: "train", base: join(dir, "base"), train_shards: [join(dir, "train.tokens.bin")], eval_shards: [join(dir, "train.tokens.bin")],
    out: join(dir, name), backend: "cpu", threads: 1,
    lora: { r: 4, alpha: 8, dropout: 0.0, targets: ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"] },
    train: { seed: 3, lr: 1e-3, steps: 4, batch_size: 2, grad_accum: 1, max_grad_norm: 1.0, weight_decay: 0.01, eval_every: 2, shuffle: true, ...train },
    ...extra,
  };
}

function runEngine(job: object, jobFile: string, env: Record<string, string> = {}): Promise<Run> {
  writeFileSync(jobFile, JSON.stringify(job));
  return new Promise((done) => {
    const child = spawn(engine, ["train", "--job", jobFile], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "", err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) => done({ code, events: out.split("\n").filter(Boolean).map((l) => JSON.parse(l)), stderr: err }));
  });
}

// W engine processes on one job file, ranks from the environment, as the adapter executor starts them.
async function runRanks(name: string, world: number, train: Record<string, unknown>, dist: Record<string, unknown> = {},
                        shardsOf: (rank: number) => string[] = () => [join(dir, "train.tokens.bin")],
                        env: Record<string, string> = {}, extra: Record<string, unknown> = {}): Promise<Run[]> {
  const rendezvous = join(dir, `${name}.rv`);
  rmSync(rendezvous, { recursive: true, force: true });   // fresh: no address left by an earlier run
  mkdirSync(rendezvous, { recursive: true });
  return Promise.all(Array.from({ length: world }, (_, rank) =>
    runEngine(trainJob(name, train, { ...extra, train_shards: shardsOf(rank), dist: { world_size: world, rendezvous, timeout_s: 60, ...dist } }),
              join(dir, `${name}.${rank}.json`), { NXFT_RANK: String(rank), ...env })));
}

// The F32 tensors of a safetensors file by name.
function readAdapter(folder: string): Map<string, Float32Array> {
  const buf = readFileSync(join(folder, "adapter_model.safetensors"));
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out = new Map<string, Float32Array>();
  for (const [name, t] of Object.entries<any>(header)) {
    if (name === "__metadata__") continue;
    const [a, b] = t.data_offsets;
    out.set(name, new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + n + a, buf.byteOffset + 8 + n + b)));
  }
  return out;
}

function maxDiff(a: Map<string, Float32Array>, b: Map<string, Float32Array>): { diff: number; scale: number } {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  let diff = 0, scale = 0;
  for (const [name, x] of a) {
    const y = b.get(name)!;
    for (let i = 0; i < x.length; i++) { diff = Math.max(diff, Math.abs(x[i] - y[i])); scale = Math.max(scale, Math.abs(x[i])); }
  }
  return { diff, scale };
}

const stepLosses = (r: Run) => r.events.filter((e) => e.event === "step").map((e) => e.loss);
const evalLosses = (r: Run) => r.events.filter((e) => e.event === "eval").map((e) => e.loss);
const ok = (r: Run) => assert.equal(r.code, 0, `engine failed: ${JSON.stringify(r.events.find((e) => e.event === "error"))}\n${r.stderr}`);

test("2 ranks × 2 rows give bit for bit the adapter of 1 rank × 2 rows × 2-fold accumulation", { skip, timeout: 120_000 }, async () => {
  const ref = await runEngine(trainJob("ref-ga2", { batch_size: 2, grad_accum: 2 }), join(dir, "ref-ga2.json"));
  ok(ref);
  const ranks = await runRanks("dp2", 2, { batch_size: 4, grad_accum: 1 });
  ranks.forEach(ok);
  assert.ok(readFileSync(join(dir, "ref-ga2", "adapter_model.safetensors")).equals(readFileSync(join(dir, "dp2", "adapter_model.safetensors"))),
            "the adapters differ");
  // Losses and gradient norms are the same numbers too; only rank 0 reports steps; eval is split and summed.
  assert.deepEqual(stepLosses(ranks[0]), stepLosses(ref));
  assert.deepEqual(ranks[0].events.filter((e) => e.event === "step").map((e) => e.grad_norm), ref.events.filter((e) => e.event === "step").map((e) => e.grad_norm));
  assert.equal(stepLosses(ranks[1]).length, 0, "rank 1 reports no steps");
  assert.equal(evalLosses(ranks[0]).length, 2);
  evalLosses(ranks[0]).forEach((l, i) => assert.ok(Math.abs(l - evalLosses(ref)[i]) < 1e-9, `eval ${l} vs ${evalLosses(ref)[i]}`));
  assert.equal(ranks[0].events.find((e) => e.event === "start").world_size, 2);
  assert.equal(ranks[0].events.find((e) => e.event === "start").collective, "cpu");
  // Rank 1 wrote nothing: the adapter exists once.
  assert.equal(ranks[1].events.find((e) => e.event === "done").summary.files.length, 0);
});

test("2 ranks with trainable token rows (their own gradient bucket) equal 1 rank with 2-fold accumulation", { skip, timeout: 120_000 }, async () => {
  // Token rows 5 and 9 of a tied head: their gradients sit after every layer's LoRA pairs and are summed in one more
  // bucket after the backward; without it rank 1's half of them would be lost and the adapters would differ.
  const lora = { r: 4, alpha: 8, dropout: 0.0, targets: ["q_proj", "v_proj"], trainable_token_indices: [5, 9] };
  const ref = await runEngine({ ...trainJob("ref-tok", { batch_size: 2, grad_accum: 2, steps: 3, eval_every: 0 }), lora }, join(dir, "ref-tok.json"));
  ok(ref);
  const ranks = await runRanks("dp-tok", 2, { batch_size: 4, grad_accum: 1, steps: 3, eval_every: 0 }, {}, undefined, {}, { lora });
  ranks.forEach(ok);
  const a = readAdapter(join(dir, "ref-tok")), b = readAdapter(join(dir, "dp-tok"));
  assert.ok([...a.keys()].some((k) => k.includes("trainable_tokens_delta")), `no token rows in ${[...a.keys()].join(", ")}`);
  const { diff } = maxDiff(a, b);
  assert.equal(diff, 0, "the adapters differ");
});

test("one rank through the collective (collective named, world 1) changes nothing", { skip, timeout: 60_000 }, async () => {
  if (!existsSync(join(dir, "ref-ga2", "adapter_model.safetensors"))) ok(await runEngine(trainJob("ref-ga2", { batch_size: 2, grad_accum: 2 }), join(dir, "ref-ga2.json")));
  const one = await runEngine(trainJob("one", { batch_size: 2, grad_accum: 2 }, { dist: { world_size: 1, collective: "cpu" } }), join(dir, "one.json"));
  ok(one);
  assert.equal(one.events.find((e) => e.event === "start").collective, "cpu");
  assert.ok(readFileSync(join(dir, "ref-ga2", "adapter_model.safetensors")).equals(readFileSync(join(dir, "one", "adapter_model.safetensors"))));
});

test("3 ranks with LoRA dropout equal 1 rank with 3-fold accumulation (same masks, same rank order)", { skip, timeout: 120_000 }, async () => {
  const lora = { r: 4, alpha: 8, dropout: 0.1, targets: ["q_proj", "k_proj", "v_proj", "up_proj"] };
  const ref = await runEngine({ ...trainJob("ref-ga3", { batch_size: 1, grad_accum: 3, steps: 3 }), lora }, join(dir, "ref-ga3.json"));
  ok(ref);
  const rendezvous = join(dir, "dp3.rv");
  mkdirSync(rendezvous);
  const ranks = await Promise.all([0, 1, 2].map((rank) =>
    runEngine({ ...trainJob("dp3", { batch_size: 3, grad_accum: 1, steps: 3 }), lora, dist: { world_size: 3, rendezvous } },
              join(dir, `dp3.${rank}.json`), { NXFT_RANK: String(rank) })));
  ranks.forEach(ok);
  assert.ok(readFileSync(join(dir, "ref-ga3", "adapter_model.safetensors")).equals(readFileSync(join(dir, "dp3", "adapter_model.safetensors"))));
  assert.deepEqual(stepLosses(ranks[0]), stepLosses(ref));
});

test("2 ranks × 2 rows agree with 1 rank × 4 rows in one micro-batch to float rounding", { skip, timeout: 120_000 }, async () => {
  const whole = await runEngine(trainJob("ref-b4", { batch_size: 4, grad_accum: 1 }), join(dir, "ref-b4.json"));
  ok(whole);
  if (!existsSync(join(dir, "dp2", "adapter_model.safetensors"))) (await runRanks("dp2", 2, { batch_size: 4 })).forEach(ok);
  const { diff, scale } = maxDiff(readAdapter(join(dir, "ref-b4")), readAdapter(join(dir, "dp2")));
  // AdamW divides each gradient by its own running RMS, so a rounding-level difference in a small gradient
  // element moves its weight by up to a few ulps of the update, not of the weight: measured 1.6e-6 of 0.09.
  assert.ok(diff <= 1e-4 * scale, `max |Δ| ${diff} over max |w| ${scale}`);
  const dpLosses = readFileSync(join(dir, "dp2", "metrics.jsonl"), "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l))
    .filter((m) => m.event === "step").map((m) => m.loss);
  assert.equal(dpLosses.length, 4);
  stepLosses(whole).forEach((l, i) => assert.ok(Math.abs(l - dpLosses[i]) < 1e-6, `step ${i + 1}: ${l} vs ${dpLosses[i]}`));
});

test("ranks that meet at master_addr:master_port (the several-host path) train the same adapter", { skip, timeout: 120_000 }, async () => {
  if (!existsSync(join(dir, "ref-ga2", "adapter_model.safetensors"))) ok(await runEngine(trainJob("ref-ga2", { batch_size: 2, grad_accum: 2 }), join(dir, "ref-ga2.json")));
  const port = 20000 + Math.floor(Math.random() * 20000);
  // Rank and address from the environment only, as a launcher such as srun would give them.
  const ranks = await Promise.all([0, 1].map((rank) =>
    runEngine(trainJob("tcp", { batch_size: 4 }), join(dir, `tcp.${rank}.json`),
              { NXFT_RANK: String(rank), NXFT_WORLD_SIZE: "2", NXFT_MASTER_ADDR: "localhost", NXFT_MASTER_PORT: String(port) })));
  ranks.forEach(ok);
  assert.ok(readFileSync(join(dir, "ref-ga2", "adapter_model.safetensors")).equals(readFileSync(join(dir, "tcp", "adapter_model.safetensors"))));
});

test("with grad_accum 2, 2 ranks group their sums by rank first: equal to 1 rank with 4-fold accumulation to float rounding", { skip, timeout: 120_000 }, async () => {
  const ref = await runEngine(trainJob("ref-ga4", { batch_size: 2, grad_accum: 4 }), join(dir, "ref-ga4.json"));
  ok(ref);
  const ranks = await runRanks("dp2-ga2", 2, { batch_size: 4, grad_accum: 2 });
  ranks.forEach(ok);
  const { diff, scale } = maxDiff(readAdapter(join(dir, "ref-ga4")), readAdapter(join(dir, "dp2-ga2")));
  assert.ok(diff <= 1e-4 * scale, `max |Δ| ${diff} over max |w| ${scale}`);
  stepLosses(ranks[0]).forEach((l, i) => assert.ok(Math.abs(l - stepLosses(ref)[i]) < 1e-6, `step ${i + 1}: ${l} vs ${stepLosses(ref)[i]}`));
});

test("a rank that fails ends the run: its own message, the others stop as peers, no hang", { skip, timeout: 60_000 }, async () => {
  // Row 6 holds a token outside the vocabulary; with shuffle off, step 2's rows 4…7 split as rank 0: 4, 5 and
  // rank 1: 6, 7, so only rank 1 reads it.
  const t0 = Date.now();
  const ranks = await runRanks("fail", 2, { batch_size: 4, shuffle: false }, { timeout_s: 30 }, () => [join(dir, "bad.tokens.bin")]);
  assert.ok(Date.now() - t0 < 20_000, "the surviving rank noticed at once, not at the timeout");
  const err = (r: Run) => r.events.find((e) => e.event === "error");
  assert.notEqual(ranks[1].code, 0);
  assert.match(err(ranks[1]).message, /bad\.tokens\.bin.*row 6/);
  assert.notEqual(ranks[0].code, 0);
  assert.equal(err(ranks[0]).field, "dist.peer");
  assert.match(err(ranks[0]).message, /rank 1 ended/);
  assert.ok(!existsSync(join(dir, "fail", "adapter_model.safetensors")), "no adapter from a failed run");
});

test("a data-parallel run killed after a checkpoint resumes (on all ranks) to the bytes of an uninterrupted run", { skip, timeout: 120_000 }, async () => {
  const train = { batch_size: 4, save_every: 2 };
  const whole = await runRanks("dp-whole", 2, train);
  whole.forEach(ok);
  // Rank 1 dies at step 3, after rank 0 wrote the step-2 checkpoint; then both ranks resume from it.
  const killed = await runRanks("dp-resume", 2, train, {}, undefined, { NXFT_DIST_FAIL_AT: "1:3" });
  assert.ok(killed.some((r) => r.code !== 0));
  assert.ok(existsSync(join(dir, "dp-resume", "checkpoints", "step-2", "trainer_state.json")));
  assert.ok(!existsSync(join(dir, "dp-resume", "adapter_model.safetensors")));
  const resumed = await runRanks("dp-resume", 2, { ...train, resume: true });
  resumed.forEach(ok);
  assert.match(resumed[0].events.find((e) => e.event === "start").resumed_from, /step-2$/);
  assert.match(resumed[1].events.find((e) => e.event === "start").resumed_from, /step-2$/);
  assert.ok(readFileSync(join(dir, "dp-whole", "adapter_model.safetensors")).equals(readFileSync(join(dir, "dp-resume", "adapter_model.safetensors"))));
});

test("when rank 0 (the centre of the star) fails, every other rank stops at once with dist.peer", { skip, timeout: 60_000 }, async () => {
  const t0 = Date.now();
  const ranks = await runRanks("fail0", 3, { batch_size: 3 }, { timeout_s: 30 }, undefined, { NXFT_DIST_FAIL_AT: "0:2" });
  assert.ok(Date.now() - t0 < 20_000, "no rank waited for the timeout");
  assert.match(ranks[0].events.find((e) => e.event === "error").message, /rank 0 fails at step 2/);
  for (const r of ranks.slice(1)) {
    assert.notEqual(r.code, 0);
    const e = r.events.find((x) => x.event === "error");
    assert.equal(e.field, "dist.peer");
    assert.match(e.message, /rank 0 ended/);
  }
});

test("a rank that never comes: rank 0 gives up after dist.timeout_s, naming how many joined", { skip, timeout: 30_000 }, async () => {
  const rendezvous = join(dir, "lonely.rv");
  mkdirSync(rendezvous);
  const r = await runEngine(trainJob("lonely", { batch_size: 2 }, { dist: { world_size: 2, rendezvous, timeout_s: 1 } }), join(dir, "lonely.json"),
                            { NXFT_RANK: "0" });
  assert.notEqual(r.code, 0);
  assert.match(r.events.find((e) => e.event === "error").message, /timed out after 1 s: 0 of 1 ranks joined/);
});

test("settings that cannot be split or do not agree are refused with the field", { skip, timeout: 60_000 }, async () => {
  const odd = await runEngine(trainJob("odd", { batch_size: 3 }, { dist: { world_size: 2, rank: 0, rendezvous: dir } }), join(dir, "odd.json"));
  const e = odd.events.find((x) => x.event === "error");
  assert.equal(e.field, "train.batch_size");
  assert.match(e.message, /odd\.json: train\.batch_size: 3 rows cannot be split evenly over 2 ranks/);
  // Two ranks started with different learning rates: rank 0 refuses rank 1 at the rendezvous.
  const rendezvous = join(dir, "mismatch.rv");
  mkdirSync(rendezvous);
  const [r0, r1] = await Promise.all([0, 1].map((rank) =>
    runEngine(trainJob(`mismatch`, { batch_size: 2, ...(rank === 1 ? { lr: 5e-4 } : {}), ...(rank === 1 ? { seed: 4 } : {}) },
                       { dist: { world_size: 2, rendezvous, timeout_s: 20 } }), join(dir, `mismatch.${rank}.json`), { NXFT_RANK: String(rank) })));
  assert.notEqual(r0.code, 0);
  assert.notEqual(r1.code, 0);
  assert.match(r0.events.find((x) => x.event === "error").message, /rank 1 runs a different job/);
});
