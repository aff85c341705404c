// Dataset stage: readers (jsonl, json array, csv, parquet), formats, validation errors (file:line + field), column
// mapping, skip_bad_rows, deterministic output and per-row split stability.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { runDatasetStage, isEvalRow } from "../../plugins/nx-finetune/src/data";
import { pathMatchesSplit } from "../../plugins/nx-finetune/src/data/hub-dataset";
import type { DataSpec } from "../../plugins/nx-finetune/src/data";

const GOLDEN = resolve(__dirname, "data-golden");
const FIXTURES = resolve(__dirname, "../../../shared/fixtures");

function workspace(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "nxft-data-"));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, ".."), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

async function run(dir: string, data: DataSpec, out = "out") {
  const manifest = await runDatasetStage({ recipePath: join(dir, "recipe.json"), data, outDir: join(dir, out), workspaceRoot: dir });
  const rows = readFileSync(join(dir, out, "rows.jsonl"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
  return { manifest, rows };
}

test("alpaca jsonl: normalized messages, input kept apart, canonical key order", async () => {
  const dir = workspace({
    "d.jsonl": [
      JSON.stringify({ output: "Paris", instruction: "Capital of France?", input: "" }),
      "",
      JSON.stringify({ instruction: "Opposite of the word.", input: "hot", output: "cold", extra: 1 }),
      JSON.stringify({ instruction: "Hi", output: "Hello", system: "Be kind." }),
    ].join("\n") + "\n",
  });
  const { manifest, rows } = await run(dir, { path: "d.jsonl", format: "alpaca" });
  assert.equal(manifest.rows, 3);
  assert.deepEqual(rows[0], { messages: [{ role: "user", content: "Capital of France?" }, { role: "assistant", content: "Paris" }] });
  assert.deepEqual(rows[1].messages[0], { role: "user", content: "Opposite of the word.", input: "hot" });
  assert.deepEqual(rows[2].messages[0], { role: "system", content: "Be kind." });
  const text = readFileSync(join(dir, "out", "rows.jsonl"), "utf8");
  assert.ok(text.startsWith('{"messages":[{"role":"user","content":"Capital of France?"}'));
  assert.equal(manifest.row_ids.length, 3);
  assert.match(manifest.row_ids[0], /^[0-9a-f]{16}$/);
  assert.equal(manifest.sources[0].file, "d.jsonl");
});

test("malformed rows: errors name file:line and field", async () => {
  const cases: Array<[string, DataSpec["format"], RegExp]> = [
    ['{"instruction":"a","output":"b"}\n{"instruction":"a"}\n', "alpaca", /d\.jsonl:2: field "output": missing/],
    ['{"instruction":"a","output":"b"}\n\n{"instruction":5,"output":"b"}\n', "alpaca", /d\.jsonl:3: field "instruction": expected a string/],
    ['{"instruction":"a","output":"b"}\n{not json\n', "alpaca", /d\.jsonl:2: invalid JSON/],
    ['{"conversations":[{"from":"human","value":"q"},{"from":"robot","value":"a"}]}\n', "sharegpt", /d\.jsonl:1: field "conversations\[1\]\.from": unknown speaker "robot"/],
    ['{"conversations":[{"from":"human","value":"q"}]}\n', "sharegpt", /d\.jsonl:1: field "conversations": no assistant message/],
    ['{"messages":[{"role":"user","content":"q"},{"role":"assistant"}]}\n', "messages", /d\.jsonl:1: field "messages\[1\]\.content": missing/],
    ['{"messages":[{"role":"user","content":"q"},{"role":"bot","content":"a"}]}\n', "messages", /d\.jsonl:1: field "messages\[1\]\.role": unknown role "bot"/],
    ['{"text":""}\n', "text", /d\.jsonl:1: field "text": empty/],
    ['[1,2]\n', "text", /d\.jsonl:1: expected an object/],
  ];
  for (const [content, format, re] of cases) {
    const dir = workspace({ "d.jsonl": content });
    await assert.rejects(run(dir, { path: "d.jsonl", format }), re, `${format}: ${content}`);
  }
});

test("json array: an element's error names the line where the element starts", async () => {
  const text = `[\n  {"instruction": "a", "output": "b"},\n  {\n    "instruction": "c",\n    "output": ""\n  }\n]\n`;
  const dir = workspace({ "d.json": text });
  await assert.rejects(run(dir, { path: "d.json", format: "alpaca" }), /d\.json:3: field "output": empty/);
  const bad = workspace({ "d.json": `[\n {"text": "a"},\n {"text": "b",}\n]` });
  await assert.rejects(run(bad, { path: "d.json", format: "text" }), /d\.json:3: invalid JSON/);
});

test("json array fixture: alpaca_data_cleaned_1000.json reads 1000 rows", async () => {
  const dir = workspace({});
  const { manifest, rows } = await run(dir, { path: join(FIXTURES, "datasets/alpaca_data_cleaned_1000.json"), format: "alpaca" });
  assert.equal(manifest.rows, 1000);
  assert.equal(rows[0].messages[0].content, "Give three tips for staying healthy.");
  assert.equal(rows.filter((r: any) => r.messages[0].input !== undefined).length, 409);
});

test("sharegpt fixture (jsonl) and multi-turn json array", async () => {
  const dir = workspace({});
  const a = await run(dir, { path: join(FIXTURES, "datasets/numina_cot_sharegpt_1k.jsonl"), format: "sharegpt" }, "a");
  assert.equal(a.manifest.rows, 1000);
  assert.deepEqual(a.rows[0].messages.map((m: any) => m.role), ["user", "assistant"]);
  const b = await run(dir, { path: join(FIXTURES, "datasets/fastchat_dummy_conversation.json"), format: "sharegpt" }, "b");
  assert.equal(b.manifest.rows, 500);
  assert.equal(b.rows.reduce((n: number, r: any) => n + r.messages.length, 0), 2000);
});

test("csv: quoted fields with commas, quotes and newlines; errors give the record's line", async () => {
  const csv = 'question,answer\n"Say ""hi""",hello\n"multi\nline, with comma",ok\nplain,\n';
  const dir = workspace({ "d.csv": csv });
  await assert.rejects(run(dir, { path: "d.csv", format: "alpaca", columns: { question: "instruction", answer: "output" } }),
    /d\.csv:5: field "output" \(column "answer"\): empty/);
  const { manifest, rows } = await run(dir, { path: "d.csv", format: "alpaca", columns: { question: "instruction", answer: "output" }, skip_bad_rows: true });
  assert.equal(manifest.rows, 2);
  assert.equal(manifest.skipped, 1);
  assert.equal(manifest.skipped_examples[0].line, 5);
  assert.equal(rows[0].messages[0].content, 'Say "hi"');
  assert.equal(rows[1].messages[0].content, "multi\nline, with comma");
  const ragged = workspace({ "d.csv": "text\nok\n\"a\",b\n" });
  await assert.rejects(run(ragged, { path: "d.csv", format: "text" }), /d\.csv:3: expected 1 fields/);
});

test("csv messages column holding JSON", async () => {
  const msgs = JSON.stringify([{ role: "user", content: "q" }, { role: "assistant", content: "a" }]).replace(/"/g, '""');
  const dir = workspace({ "d.csv": `dialog\n"${msgs}"\n` });
  const { rows } = await run(dir, { path: "d.csv", format: "messages", columns: { dialog: "messages" } });
  assert.deepEqual(rows[0], { messages: [{ role: "user", content: "q" }, { role: "assistant", content: "a" }] });
});

test("parquet (hyparquet): alpaca with null input, sharegpt list-of-struct column, bad row by row number", async () => {
  const dir = workspace({});
  const a = await run(dir, { path: join(GOLDEN, "alpaca.parquet"), format: "alpaca" }, "a");
  assert.equal(a.manifest.rows, 3);
  assert.deepEqual(a.rows[1].messages[0], { role: "user", content: "Translate to French.", input: "cat" });
  assert.deepEqual(a.rows[2].messages[0], { role: "user", content: "Say hi." });
  await assert.rejects(run(dir, { path: join(GOLDEN, "sharegpt.parquet"), format: "sharegpt" }, "b"), /sharegpt\.parquet:3: field "conversations": no assistant message/);
  const b = await run(dir, { path: join(GOLDEN, "sharegpt.parquet"), format: "sharegpt", skip_bad_rows: true }, "b");
  assert.equal(b.manifest.rows, 2);
  assert.equal(b.manifest.skipped, 1);
  assert.deepEqual(b.rows[1].messages, [
    { role: "system", content: "Be brief." }, { role: "user", content: "Capital of Peru?" }, { role: "assistant", content: "Lima" },
  ]);
});

test("skip_bad_rows counts skipped rows; max_rows; several files", async () => {
  const dir = workspace({
    "a.jsonl": '{"text":"one"}\n{"txt":"bad"}\n{"text":"two"}\n',
    "b.jsonl": '{"text":"three"}\n{"text":4}\n{"text":"five"}\n',
  });
  const { manifest, rows } = await run(dir, { path: ["a.jsonl", "b.jsonl"], format: "text", skip_bad_rows: true });
  assert.deepEqual(rows.map((r: any) => r.text), ["one", "two", "three", "five"]);
  assert.equal(manifest.skipped, 2);
  assert.deepEqual(manifest.skipped_examples.map((s) => `${s.file}:${s.line}:${s.field}`), ["a.jsonl:2:text", "b.jsonl:2:text"]);
  assert.deepEqual(manifest.sources.map((s) => s.rows), [2, 2]);
  const limited = await run(dir, { path: ["a.jsonl", "b.jsonl"], format: "text", skip_bad_rows: true, max_rows: 3 }, "o2");
  assert.equal(limited.manifest.rows, 3);
});

test("output is byte-deterministic and the split is per row: editing one row moves no other row", async () => {
  const lines = Array.from({ length: 400 }, (_, i) => JSON.stringify({ text: `row number ${i}` }));
  const dir = workspace({ "d.jsonl": lines.join("\n") + "\n" });
  const spec: DataSpec = { path: "d.jsonl", format: "text", eval_fraction: 0.25, split_seed: 7 };
  const a = await run(dir, spec, "a");
  const b = await run(dir, spec, "b");
  assert.equal(readFileSync(join(dir, "a/manifest.json"), "utf8"), readFileSync(join(dir, "b/manifest.json"), "utf8"));
  assert.equal(readFileSync(join(dir, "a/rows.jsonl"), "utf8"), readFileSync(join(dir, "b/rows.jsonl"), "utf8"));
  assert.ok(a.manifest.eval_rows > 60 && a.manifest.eval_rows < 140, `eval rows ${a.manifest.eval_rows}`);
  assert.equal(a.manifest.train_rows + a.manifest.eval_rows, 400);
  // Edit row 10: every other row keeps its id and split.
  lines[10] = JSON.stringify({ text: "an edited row" });
  writeFileSync(join(dir, "d.jsonl"), lines.join("\n") + "\n");
  const c = await run(dir, spec, "c");
  for (let i = 0; i < 400; i++) {
    if (i === 10) continue;
    assert.equal(c.manifest.row_ids[i], a.manifest.row_ids[i]);
    assert.equal(c.manifest.row_splits[i], a.manifest.row_splits[i]);
  }
  assert.notEqual(c.manifest.row_ids[10], a.manifest.row_ids[10]);
  // Another seed gives another split.
  const d = await run(dir, { ...spec, split_seed: 8 }, "d");
  assert.notEqual(d.manifest.row_splits, c.manifest.row_splits);
  // eval_rows is converted to a fraction of the row count.
  const e = await run(dir, { path: "d.jsonl", format: "text", eval_rows: 40 }, "e");
  assert.equal(e.manifest.eval_fraction, 0.1);
  assert.ok(Math.abs(e.manifest.eval_rows - 40) < 20);
  assert.equal(isEvalRow(a.manifest.row_ids[0], 7, 0), false);
});

test("spec errors: unknown format, both path and hub, missing file, unsupported extension", async () => {
  const dir = workspace({ "d.txt": "x" });
  await assert.rejects(run(dir, { path: "d.jsonl", format: "nope" as any }), /field "format"/);
  await assert.rejects(run(dir, { path: "d.jsonl", hub: "a/b", format: "text" }), /exactly one of "path" and "hub"/);
  await assert.rejects(run(dir, { path: "missing.jsonl", format: "text" }), /field "data.path": file not found/);
  await assert.rejects(run(dir, { path: "d.txt", format: "text" }), /unsupported file type ".txt"/);
});

test("hub dataset offline: a clear error naming the dataset and the cache; a cached split is read without the network", async () => {
  const dir = workspace({});
  const prev = process.env.HF_HUB_OFFLINE;
  process.env.HF_HUB_OFFLINE = "1";
  try {
    await assert.rejects(
      runDatasetStage({ recipePath: join(dir, "recipe.json"), data: { hub: "yahma/alpaca-cleaned", format: "alpaca" }, outDir: join(dir, "o"), workspaceRoot: dir, hubCacheDir: join(dir, "cache") }),
      /hub dataset yahma\/alpaca-cleaned \(config default, split train, revision main\): data\.hub yahma\/alpaca-cleaned@main: HF_HUB_OFFLINE=1 and the revision was never resolved/,
    );
    // A split in the shared HF cache layout (refs/main → snapshots/<commit>/…) is read without the network.
    const sha = "a".repeat(40);
    const repo = join(dir, "cache", "datasets--org--set");
    mkdirSync(join(repo, "refs"), { recursive: true });
    writeFileSync(join(repo, "refs", "main"), sha);
    mkdirSync(join(repo, "snapshots", sha), { recursive: true });
    writeFileSync(join(repo, "snapshots", sha, "train.jsonl"), '{"text":"from the cache"}\n');
    const m = await runDatasetStage({ recipePath: join(dir, "recipe.json"), data: { hub: "org/set", format: "text" }, outDir: join(dir, "o"), workspaceRoot: dir, hubCacheDir: join(dir, "cache") });
    assert.equal(m.rows, 1);
    assert.equal(m.sources[0].file, `hub:org/set@${sha}/train.jsonl`);
  } finally {
    if (prev === undefined) delete process.env.HF_HUB_OFFLINE; else process.env.HF_HUB_OFFLINE = prev;
  }
});

test("hub dataset: split files chosen by name (the Hub client itself: test/unit/plugin-hub.test.ts)", () => {
  assert.ok(pathMatchesSplit("data/train-00000-of-00001.parquet", "train", "default"));
  assert.ok(pathMatchesSplit("train.jsonl", "train", "default"));
  assert.ok(!pathMatchesSplit("test.jsonl", "train", "default"));
  assert.ok(!pathMatchesSplit("README.md", "train", "default"));
  assert.ok(pathMatchesSplit("en/train/0000.parquet", "train", "en"));
});

test("columns mapping for sharegpt: a renamed conversation field; errors name the source column", async () => {
  const dir = workspace({ "d.jsonl": [
    JSON.stringify({ dialog: [{ from: "human", value: "hi" }, { from: "gpt", value: "hello" }] }),
    JSON.stringify({ dialog: [{ from: "human", value: "hi" }, { from: "gpt" }] }),
  ].join("\n") + "\n" });
  await assert.rejects(run(dir, { path: "d.jsonl", format: "sharegpt", columns: { dialog: "conversations" } }),
    /d\.jsonl:2: field "conversations\[1\]\.value" \(column "dialog"\): missing/);
  const { rows } = await run(dir, { path: "d.jsonl", format: "sharegpt", columns: { dialog: "conversations" }, skip_bad_rows: true });
  assert.deepEqual(rows, [{ messages: [{ role: "user", content: "hi" }, { role: "assistant", content: "hello" }] }]);
});
