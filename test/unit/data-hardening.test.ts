// Bad input the dataset stage must refuse with the user's file and line: bytes that are not UTF-8 (a lenient decode
// would train on U+FFFD), a multi-megabyte row (minutes in the tokenizer), a file without rows.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MAX_ROW_CHARS, runDatasetStage } from "../../plugins/nx-finetune/src/stages/dataset";
import type { DataSpec } from "../../plugins/nx-finetune/src/data";

function workspace(files: Record<string, string | Buffer>): string {
  const dir = mkdtempSync(join(tmpdir(), "nxft-hard-"));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
  return dir;
}

const run = (dir: string, data: DataSpec) =>
  runDatasetStage({ recipePath: join(dir, "recipe.json"), data, outDir: join(dir, "out"), workspaceRoot: dir });

const row = (i: number) => JSON.stringify({ instruction: `question ${i}`, output: `answer ${i}` });

test("invalid UTF-8 in row 5 of a jsonl file: an error naming train.jsonl:5; skip_bad_rows skips just that row", async () => {
  const lines = [1, 2, 3, 4, 5, 6].map((i) => Buffer.from(row(i) + "\n"));
  lines[4] = Buffer.concat([Buffer.from('{"instruction":"caf'), Buffer.from([0xe9]), Buffer.from('","output":"x"}\n')]); // latin-1 é
  const dir = workspace({ "train.jsonl": Buffer.concat(lines) });
  await assert.rejects(run(dir, { path: "train.jsonl", format: "alpaca" }), /^Error: train\.jsonl:5: invalid UTF-8/);
  const m = await run(dir, { path: "train.jsonl", format: "alpaca", skip_bad_rows: true });
  assert.equal(m.rows, 5);
  assert.equal(m.skipped, 1);
  assert.equal(m.skipped_examples[0].line, 5);
  assert.ok(!readFileSync(join(dir, "out", "rows.jsonl"), "utf8").includes("\uFFFD"));
});

test("invalid UTF-8 in a json array and a csv file names the line of the bad byte", async () => {
  const json = Buffer.concat([Buffer.from(`[\n${row(1)},\n${row(2)},\n{"instruction":"a\xff`, "latin1"), Buffer.from('","output":"b"}\n]\n')]);
  await assert.rejects(run(workspace({ "d.json": json }), { path: "d.json", format: "alpaca" }), /d\.json:4: invalid UTF-8/);
  const csv = Buffer.concat([Buffer.from("instruction,output\nq,a\nq2,"), Buffer.from([0xc3, 0x28]), Buffer.from("\n")]);
  await assert.rejects(run(workspace({ "d.csv": csv }), { path: "d.csv", format: "alpaca" }), /d\.csv:3: invalid UTF-8/);
});

test("a row longer than the row limit (8 MB without spaces) fails naming file:line, quickly", async () => {
  const huge = JSON.stringify({ text: "x".repeat(8 << 20) });
  const dir = workspace({ "big.jsonl": [JSON.stringify({ text: "fine" }), huge, JSON.stringify({ text: "also fine" })].join("\n") + "\n" });
  const t0 = Date.now();
  await assert.rejects(run(dir, { path: "big.jsonl", format: "text" }), /big\.jsonl:2: row is 8\.0 M characters long; rows are limited to 1 M/);
  assert.ok(Date.now() - t0 < 10_000);
  const m = await run(dir, { path: "big.jsonl", format: "text", skip_bad_rows: true });
  assert.equal(m.rows, 2);
  // A long document under the limit still passes.
  const long = workspace({ "long.jsonl": JSON.stringify({ text: "word ".repeat((MAX_ROW_CHARS - 100) / 5) }) + "\n" });
  assert.equal((await run(long, { path: "long.jsonl", format: "text" })).rows, 1);
});

test("an empty dataset names its file", async () => {
  const dir = workspace({ "empty.jsonl": "\n\n" });
  await assert.rejects(run(dir, { path: "empty.jsonl", format: "alpaca" }), /^Error: empty\.jsonl: the dataset has no valid rows \(the file holds no rows\)/);
  const bad = workspace({ "bad.jsonl": '{"instruction":"q"}\n' });
  await assert.rejects(run(bad, { path: "bad.jsonl", format: "alpaca", skip_bad_rows: true }), /^Error: bad\.jsonl: the dataset has no valid rows \(1 skipped as bad\)/);
});

test("invalid UTF-8 in a parquet string cell: an error naming the row and the column", async () => {
  // The golden file stores its strings uncompressed: damage "Translate" in place (same length).
  const bytes = readFileSync(join(__dirname, "data-golden", "alpaca.parquet"));
  const at = bytes.indexOf("Translate");
  assert.ok(at > 0);
  for (let i = at; i >= 0; i = bytes.indexOf("Translate", i + 1)) bytes[i + 2] = 0xff;
  const dir = workspace({ "d.parquet": bytes });
  await assert.rejects(run(dir, { path: "d.parquet", format: "alpaca" }), /d\.parquet:2: field "instruction": invalid UTF-8/);
  const m = await run(dir, { path: "d.parquet", format: "alpaca", skip_bad_rows: true });
  assert.equal(m.rows, 2);
});
