// Running the engine: job file, JSON-lines events, progress rendering, failures with the engine's own message.
// A small stand-in executable plays the engine here (the real one runs in test/e2e).
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { engineCmakeOptions, ensureEngine, runEngine, shippedEngineDir, type EngineEvent } from "../../plugins/nx-finetune/src/engine";
import { ProgressRenderer, formatDuration, stepLine } from "../../plugins/nx-finetune/src/progress";

// The stand-in reads the job, echoes it in `start`, then behaves as job.mode says.
function fakeEngine(dir: string): string {
  const path = join(dir, "fake-engine");
  writeFileSync(path, `#!/usr/bin/env node
const fs = require("fs");
const [command, flag, jobFile] = process.argv.slice(2);
const job = JSON.parse(fs.readFileSync(jobFile, "utf8"));
const emit = (e) => process.stdout.write(JSON.stringify(e) + "\\n");
emit({ event: "start", command, backend: "cpu", threads: 2, device: "fake", total_steps: 40, job });
if (job.mode === "ok") {
  for (let s = 1; s <= 40; s++) emit({ event: "step", step: s, total_steps: 40, loss: 3 - s / 20, lr: 1e-3, tokens: 100, tokens_per_s: 2500, elapsed_s: s / 10, eta_s: (40 - s) / 10, epoch: 0 });
  emit({ event: "eval", step: 40, loss: 1.25, tokens: 50 });
  emit({ event: "done", summary: { steps: 40, final_train_loss: 1 } });
} else if (job.mode === "error") {
  process.stderr.write("some log\\n");
  emit({ event: "error", message: "tensor model.layers.0.q_proj.weight has shape [8,8], expected [16,16]", file: "/m/model.safetensors", field: "model.layers.0.q_proj.weight" });
  process.exit(1);
} else if (job.mode === "crash") {
  process.stderr.write("Segmentation fault (pretend)\\n");
  process.exit(139);
}
`);
  chmodSync(path, 0o755);
  return path;
}

test("runEngine writes the job file, streams events and returns the done summary", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-engine-"));
  const events: EngineEvent[] = [];
  const summary = await runEngine(fakeEngine(dir), "train", { mode: "ok", base: "/abs/base" }, join(dir, "jobs", "train.json"), (e) => events.push(e));
  assert.deepEqual(summary, { steps: 40, final_train_loss: 1 });
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "jobs", "train.json"), "utf8")), { command: "train", mode: "ok", base: "/abs/base" });
  assert.equal(events[0].event, "start");
  assert.deepEqual(events[0].job, { command: "train", mode: "ok", base: "/abs/base" });
  assert.equal(events.filter((e) => e.event === "step").length, 40);
});

test("an engine error event becomes the failure message (with file and field)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-engine-"));
  await assert.rejects(runEngine(fakeEngine(dir), "merge", { mode: "error" }, join(dir, "merge.json"), () => {}),
    /^Error: finetune-engine merge: tensor model\.layers\.0\.q_proj\.weight has shape \[8,8\], expected \[16,16\] \(\/m\/model\.safetensors model\.layers\.0\.q_proj\.weight\)$/);
});

test("a crash without an error event reports the exit code and the stderr tail", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-engine-"));
  await assert.rejects(runEngine(fakeEngine(dir), "train", { mode: "crash" }, join(dir, "t.json"), () => {}),
    (e: Error) => /exit code 139/.test(e.message) && /Segmentation fault \(pretend\)/.test(e.message));
});

function capture(tty: boolean) {
  let text = "";
  const out = { write: (s: string) => { text += s; return true; } } as unknown as NodeJS.WritableStream;
  return { renderer: new ProgressRenderer(out, tty), text: () => text };
}

test("progress: plain lines (pipe/CI) print ~every 5% of the steps, evals and warnings", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-engine-"));
  const { renderer, text } = capture(false);
  await runEngine(fakeEngine(dir), "train", { mode: "ok" }, join(dir, "t.json"), renderer.onEvent);
  const lines = text().trimEnd().split("\n");
  assert.match(lines[0], /^engine train: backend cpu, 2 threads, fake {2}total_steps=40$/);
  const stepLines = lines.filter((l) => l.startsWith("step "));
  assert.equal(stepLines.length, 21); // steps 1, 3, 5, …, 39 (every 2 = 5% of 40) and the last
  assert.equal(stepLines[0], "step 1/40  loss 2.9500  2.5k tok/s  ETA 0:04");
  assert.equal(stepLines.at(-1), "step 40/40  loss 1.0000  2.5k tok/s  ETA 0:00");
  assert.ok(lines.includes("eval @ step 40: loss 1.2500 (50 tokens)"));
  assert.ok(!text().includes("\r"), "no carriage returns in logs");
});

test("progress: a terminal gets one redrawn bar line", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-engine-"));
  const { renderer, text } = capture(true);
  await runEngine(fakeEngine(dir), "train", { mode: "ok" }, join(dir, "t.json"), renderer.onEvent);
  assert.equal(text().split("\r\x1b[K[").length - 1, 40, "one redraw per step");
  assert.ok(text().includes("[########################] step 40/40  loss 1.0000"));
  assert.equal(formatDuration(3725), "1:02:05");
});

test("progress: the step line shows the data tokens' rate when the engine gives it (unpacked rows are mostly padding)", () => {
  const e = { event: "step", step: 3, total_steps: 10, loss: 2, tokens: 8192, tokens_per_s: 64830, data_tokens_per_s: 6548, eta_s: 7 };
  assert.equal(stepLine(e), "step 3/10  loss 2.0000  6.5k tok/s  ETA 0:07");
  assert.equal(stepLine({ ...e, data_tokens_per_s: undefined }), "step 3/10  loss 2.0000  64.8k tok/s  ETA 0:07");
});

test("the engine's CMake options come from the environment and name a shipped engine's cache folder", () => {
  assert.deepEqual(engineCmakeOptions({}), []);
  const env = { CUDNN_PATH: "/opt/cudnn", CUDNN_FRONTEND_PATH: "/opt/cudnn-frontend", NXFT_CUDA_ARCHS: "90a-real" };
  assert.deepEqual(engineCmakeOptions(env),
    ["-DNXFT_CUDA_ARCHS=90a-real", "-DNXFT_CUDNN_DIR=/opt/cudnn", "-DNXFT_CUDNN_FRONTEND_DIR=/opt/cudnn-frontend"]);
  assert.deepEqual(engineCmakeOptions({ CUDNN_PATH: "/a", NXFT_CUDNN_DIR: "/b" }), ["-DNXFT_CUDNN_DIR=/b"]);   // ours win
  const plain = shippedEngineDir("/cache", "1.2.3", "abcdef", []);
  assert.equal(plain, join("/cache", "engine-1.2.3-abcdef"));   // no options: the folder name it always had
  const withCudnn = shippedEngineDir("/cache", "1.2.3", "abcdef", engineCmakeOptions(env));
  assert.match(withCudnn, /engine-1\.2\.3-abcdef-[0-9a-f]{8}$/);
  assert.equal(withCudnn, shippedEngineDir("/cache", "1.2.3", "abcdef", engineCmakeOptions({ ...env })));
  assert.notEqual(withCudnn, shippedEngineDir("/cache", "1.2.3", "abcdef", engineCmakeOptions({ ...env, CUDNN_PATH: "/x" })));
});

test("ensureEngine configures once, and again only when the CMake options from the environment change", async () => {
  // A workspace holding engine sources (its native/CMakeLists.txt names the project) and a stand-in cmake on PATH
  // that logs its arguments and "builds" the binary.
  const ws = mkdtempSync(join(tmpdir(), "nxft-ensure-"));
  mkdirSync(join(ws, "native"));
  writeFileSync(join(ws, "native", "CMakeLists.txt"), "project(finetune_engine CXX)\n");
  const bin = join(ws, "bin");
  mkdirSync(bin);
  const logFile = join(ws, "cmake.log");
  writeFileSync(join(bin, "cmake"), `#!/usr/bin/env node
const fs = require("fs"), path = require("path");
const args = process.argv.slice(2);
fs.appendFileSync(${JSON.stringify(logFile)}, args.join(" ") + "\\n");
const b = args.indexOf("-B");
if (b >= 0) fs.writeFileSync(path.join(args[b + 1], "CMakeCache.txt"), "");
if (args[0] === "--build") fs.writeFileSync(path.join(args[1], "finetune-engine"), "");
`);
  chmodSync(join(bin, "cmake"), 0o755);
  const saved = { PATH: process.env.PATH, CUDNN_PATH: process.env.CUDNN_PATH, NXFT_ENGINE: process.env.NXFT_ENGINE };
  process.env.PATH = `${bin}:${process.env.PATH}`;
  delete process.env.NXFT_ENGINE;
  delete process.env.CUDNN_PATH;
  const configures = () => readFileSync(logFile, "utf8").trim().split("\n").filter((l) => l.startsWith("-S"));
  try {
    await ensureEngine(ws, () => {});
    await ensureEngine(ws, () => {});
    assert.equal(configures().length, 1, "configured once");
    assert.ok(!configures()[0].includes("NXFT_CUDNN_DIR"));
    process.env.CUDNN_PATH = "/opt/cudnn";
    await ensureEngine(ws, () => {});
    await ensureEngine(ws, () => {});
    assert.equal(configures().length, 2, "reconfigured once for the new option");
    assert.match(configures()[1], /-DNXFT_CUDNN_DIR=\/opt\/cudnn/);
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
});
