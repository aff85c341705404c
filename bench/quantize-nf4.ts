// quantize-nf4.ts — NF4 quantization of a bf16 base on the host (`finetune-engine quantize`: bitsandbytes'
// quantize_4bit, blocksize 64, with double quantization; the same code the train loader runs for quantize_base
// "nf4"), on a synthetic Llama-3.2-1B-shaped model (bench/synthetic-llama.ts, random weights). Prints one line per
// thread count: seconds for conversion + quantization (quantize_seconds, without disk I/O), wall seconds of the
// whole command (read, quantize, write 4-bit safetensors), GB/s of bf16 projection weights, and peak RSS (the
// command streams one tensor at a time, so it stays far below the 2.5 GB model).
//
//   npx tsx bench/quantize-nf4.ts [--threads 1,2] [--layers 16] [--keep]
//
// NXFT_ENGINE selects the engine binary (default native/build/finetune-engine).
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { writeSyntheticLlama1B } from "./synthetic-llama";
import { flag } from "./args";

const ROOT = resolve(__dirname, "..");
const ENGINE = process.env.NXFT_ENGINE ?? join(ROOT, "native/build/finetune-engine");
const threadCounts = flag("threads", "1,2").split(",").map(Number);
const layers = Number(flag("layers", "16"));

const dir = mkdtempSync(join(tmpdir(), "nxft-quantize-bench-"));
try {
  const base = join(dir, "base");
  const bytes = writeSyntheticLlama1B(base, layers);
  const projParams = layers * (2048 * 2048 * 2 + 512 * 2048 * 2 + 8192 * 2048 * 3);
  console.log(`quantize (nf4, double quantization), synthetic Llama-3.2-1B shape: ${layers} layers, ${(bytes / 1e9).toFixed(2)} GB bf16, ` +
    `${(projParams / 1e9).toFixed(3)} B projection parameters; ${cpus().length} cores, load average ${loadavg()[0].toFixed(1)}`);
  console.log("| threads | quantize s | wall s | GB/s (bf16 in) | peak RSS MB |");
  console.log("|---|---|---|---|---|");
  for (const t of threadCounts) {
    const out = join(dir, `q${t}`);
    const job = join(dir, `job-${t}.json`);
    writeFileSync(job, JSON.stringify({ command: "quantize", base, out, double_quant: true, threads: t }));
    const r = spawnSync(ENGINE, ["quantize", "--job", job], { encoding: "utf8", maxBuffer: 64 << 20 });
    if (r.status !== 0) throw new Error(`quantize failed: ${r.stdout.slice(-2000)} ${r.stderr}`);
    const done = r.stdout.trim().split("\n").map((l) => JSON.parse(l)).find((e) => e.event === "done").summary;
    console.log(`| ${t} | ${done.quantize_seconds.toFixed(2)} | ${done.wall_s.toFixed(2)} | ${(projParams * 2 / 1e9 / done.quantize_seconds).toFixed(2)} | ` +
      `${(done.peak_memory_bytes / 2 ** 20).toFixed(0)} |`);
    rmSync(out, { recursive: true, force: true });
  }
} finally {
  if (!process.argv.includes("--keep")) rmSync(dir, { recursive: true, force: true });
}
