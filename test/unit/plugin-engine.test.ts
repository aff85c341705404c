// Running the engine: job file, JSON-lines events, progress rendering, failures with the engine's own message.
// A small stand-in executable plays the engine here (the real one runs in test/e2e).
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runEngine, type EngineEvent } from "../../plugins/nx-finetune/src/engine";
import { ProgressRenderer, formatDuration } from "../../plugins/nx-finetune/src/progress";

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
