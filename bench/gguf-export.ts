// gguf-export.ts — export-gguf throughput per type on a synthetic Llama-3.2-1B-shaped model (hidden 2048, 16
// layers, 32/8 heads, ffn 8192, vocab 128256, tied, llama3 rope scaling) stored as BF16 safetensors, written
// by this script (random values; no download). Prints a table: seconds, GB/s of safetensors input, output size,
// the engine's peak RSS (it streams tensor by tensor from the mmap, so RSS stays far below the model size).
//
//   npx tsx bench/gguf-export.ts [--threads 2] [--layers 16] [--types f16,q8_0,q4_k_m] [--keep] [--no-reference]
//
// Reference: llama.cpp's own llama_model_quantize (node-llama-cpp's libllama, same thread count) quantizing a BF16
// GGUF of the same model (bench/gguf-export-llama-quantize.cpp, compiled here with g++) — the second table.
//
// NXFT_ENGINE selects the engine binary (default native/build/finetune-engine).
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir, cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { ggufTokenizerMetadata } from "../plugins/nx-finetune/src/gguf";
import { writeSyntheticLlama1B } from "./synthetic-llama";
import { flag } from "./args";

const ROOT = resolve(__dirname, "..");
const ENGINE = process.env.NXFT_ENGINE ?? join(ROOT, "native/build/finetune-engine");
const threads = Number(flag("threads", "2"));
const layers = Number(flag("layers", "16"));
const types = flag("types", "f32,f16,bf16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k").split(",");
const keep = process.argv.includes("--keep");
const reference = !process.argv.includes("--no-reference");
const LIBLLAMA = join(ROOT, "node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.4.0.so");
const FTYPE: Record<string, number> = { q8_0: 7, q4_0: 2, q4_k_m: 15, q5_k_m: 17, q6_k: 18 };

const writeModel = (dir: string) => writeSyntheticLlama1B(dir, layers);

function main() {
  if (!existsSync(ENGINE)) throw new Error(`engine not built: ${ENGINE}`);
  const work = mkdtempSync(join(tmpdir(), "gguf-export-bench-"));
  const model = join(work, "model");
  const t0 = Date.now();
  const inputBytes = writeModel(model);
  console.error(`synthetic model: ${(inputBytes / 1e9).toFixed(2)} GB BF16, ${layers} layers, written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const tokenizer = ggufTokenizerMetadata(model);
  const loadBefore = loadavg().map((x) => x.toFixed(1)).join(" ");
  const rows: string[][] = [];
  for (const type of types) {
    const out = join(work, `m.${type}.gguf`);
    const jobPath = join(work, `job-${type}.json`);
    writeFileSync(jobPath, JSON.stringify({ command: "export-gguf", model, out, type, tokenizer, name: "bench-1b", threads }));
    const start = process.hrtime.bigint();
    const r = spawnSync("/usr/bin/time", ["-f", "%M %U %S", ENGINE, "export-gguf", "--job", jobPath], { encoding: "utf8", maxBuffer: 1 << 26 });
    const secs = Number(process.hrtime.bigint() - start) / 1e9;
    if (r.status !== 0) throw new Error(`${type}: export failed: ${r.stdout.split("\n").find((l) => l.includes('"error"'))} ${r.stderr}`);
    const [rssKb, user, sys] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number);
    const cpu = user + sys;
    const done = JSON.parse(r.stdout.trim().split("\n").pop()!);
    const size = statSync(out).size;
    rows.push([type, secs.toFixed(1), (inputBytes / 1e9 / secs).toFixed(3), cpu.toFixed(1), (inputBytes / 1e9 / cpu).toFixed(3),
      (size / 1e9).toFixed(2), (rssKb / 1024).toFixed(0),
      Object.entries(done.summary.tensor_types).map(([k, v]) => `${k}:${v}`).join(" ")]);
    if (!keep) rmSync(out);
  }
  // CPU seconds (user + sys of the engine) make the per-type cost comparable when other work shares the cores.
  // llama.cpp quantizing a BF16 GGUF of the same weights (exported by us; its tensors are the converter's).
  const refRows: string[][] = [];
  if (reference && existsSync(LIBLLAMA)) {
    const helper = join(work, "llama-quantize");
    const cc = spawnSync("g++", ["-O2", "-std=c++17", join(ROOT, "bench/gguf-export-llama-quantize.cpp"), "-o", helper, "-ldl"], { encoding: "utf8" });
    if (cc.status !== 0) throw new Error(`compiling the llama-quantize helper failed: ${cc.stderr}`);
    const bf16 = join(work, "m.bf16.ref.gguf");
    const jobPath = join(work, "job-bf16-ref.json");
    writeFileSync(jobPath, JSON.stringify({ command: "export-gguf", model, out: bf16, type: "bf16", tokenizer, name: "bench-1b", threads }));
    if (spawnSync(ENGINE, ["export-gguf", "--job", jobPath]).status !== 0) throw new Error("bf16 export failed");
    for (const type of types.filter((t) => FTYPE[t] !== undefined)) {
      const out = join(work, `ref.${type}.gguf`);
      const start = process.hrtime.bigint();
      const r = spawnSync("/usr/bin/time", ["-f", "%M %U %S", helper, LIBLLAMA, bf16, out, String(FTYPE[type]), String(threads)], { encoding: "utf8", maxBuffer: 1 << 28 });
      const secs = Number(process.hrtime.bigint() - start) / 1e9;
      if (r.status !== 0) throw new Error(`llama_model_quantize ${type} failed: ${r.stderr.slice(-2000)}`);
      const [rssKb, user, sys] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number);
      refRows.push([type, secs.toFixed(1), (inputBytes / 1e9 / secs).toFixed(3), (user + sys).toFixed(1), (inputBytes / 1e9 / (user + sys)).toFixed(3),
        (statSync(out).size / 1e9).toFixed(2), (rssKb / 1024).toFixed(0), "llama_model_quantize from BF16 GGUF"]);
      rmSync(out);
    }
    rmSync(bf16);
  }
  const head = ["type", "wall s", "GB/s (input, wall)", "CPU s", "GB per CPU-s", "output GB", "peak RSS MiB", "tensor types"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => "| " + cells.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
  console.log(`export-gguf, synthetic Llama-3.2-1B shape (${layers} layers, ${(inputBytes / 1e9).toFixed(2)} GB BF16 safetensors), ` +
    `${threads} threads, ${cpus()[0]?.model ?? "cpu"}, load average before the runs ${loadBefore}`);
  console.log(line(head));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of rows) console.log(line(r));
  if (refRows.length > 0) {
    console.log(`\nreference: llama.cpp ${LIBLLAMA.split("/").pop()} llama_model_quantize, same model as a BF16 GGUF, ${threads} threads`);
    const w2 = head.map((h, i) => Math.max(h.length, ...refRows.map((r) => r[i].length)));
    const line2 = (cells: string[]) => "| " + cells.map((c, i) => c.padEnd(w2[i])).join(" | ") + " |";
    console.log(line2(head));
    console.log("|" + w2.map((w) => "-".repeat(w + 2)).join("|") + "|");
    for (const r of refRows) console.log(line2(r));
  }
  if (!keep) rmSync(work, { recursive: true, force: true });
}

main();
