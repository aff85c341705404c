// Shards stage: shard file round trip, targets/positions/packing rules, truncation, byte determinism, content-defined
// sharding (a one-row edit of a 5k-row dataset re-tokenizes exactly one shard), reuse through a cache dir.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createHash } from "node:crypto";
import { runDatasetStage, runShardsStage, parseShard, encodeShard, tokenizerFor, rowId, IGNORE_INDEX } from "../../plugins/nx-finetune/src/data";
import { buildRows, isCutRow } from "../../plugins/nx-finetune/src/stages/shards";
import type { DataSpec, ShardsManifest, TemplateSpec } from "../../plugins/nx-finetune/src/data";

const ROOT = resolve(__dirname, "../..");
const DEMO = join(ROOT, "recipes/demo/base");

async function dataset(dir: string, lines: string[], data: Partial<DataSpec> = {}, name = "ds") {
  writeFileSync(join(dir, "d.jsonl"), lines.join("\n") + "\n");
  await runDatasetStage({ recipePath: join(dir, "recipe.json"), data: { path: "d.jsonl", format: "alpaca", ...data }, outDir: join(dir, name), workspaceRoot: dir });
  return join(dir, name);
}

function alpacaRows(n: number): string[] {
  const words = ["cat", "dog", "sun", "moon", "tree", "river", "stone", "cloud", "bird", "fish"];
  return Array.from({ length: n }, (_, i) => JSON.stringify({
    instruction: `Give the opposite of the word number ${i}.`,
    input: i % 3 === 0 ? words[i % words.length] : "",
    output: `${words[(i * 7) % words.length]} ${words[(i * 3) % words.length]} ${i}`,
  }));
}

function readShards(dir: string, m: ShardsManifest) {
  return m.shards.map((s) => {
    const bytes = readFileSync(join(dir, s.file));
    assert.equal(createHash("sha256").update(bytes).digest("hex"), s.sha256);
    assert.equal(s.file, `${s.sha256}.tokens.bin`);
    return { entry: s, shard: parseShard(bytes, s.file) };
  });
}

test("shard file: encode/parse round trip and header checks", () => {
  const T = 5, R = 2;
  const tokens = Int32Array.from({ length: R * T }, (_, i) => i + 1);
  const targets = Int32Array.from({ length: R * T }, (_, i) => (i % 2 ? -100 : 1000 + i));
  const positions = Int32Array.from({ length: R * T }, (_, i) => i % T);
  const buf = encodeShard({ seqLen: T, nRows: R, tokens, targets, positions });
  assert.equal(buf.length, 24 + R * 3 * T * 4);
  assert.equal(buf.toString("latin1", 0, 8), "NXFTSHD1");
  assert.deepEqual([buf.readUInt32LE(8), buf.readUInt32LE(12), buf.readUInt32LE(16), buf.readUInt32LE(20)], [1, T, R, 0]);
  // Row 0 is tokens[0..T), then targets[0..T), then positions[0..T).
  assert.equal(buf.readInt32LE(24 + T * 4), targets[0]);
  assert.equal(buf.readInt32LE(24 + 2 * T * 4 + 4), 1);
  const back = parseShard(buf);
  assert.deepEqual([back.seqLen, back.nRows], [T, R]);
  assert.deepEqual(back.tokens, tokens);
  assert.deepEqual(back.targets, targets);
  assert.deepEqual(back.positions, positions);
  assert.throws(() => parseShard(buf.subarray(0, buf.length - 4), "x.bin"), /x\.bin: size/);
  const bad = Buffer.from(buf); bad.write("NOTSHARD", 0, "latin1");
  assert.throws(() => parseShard(bad, "y.bin"), /y\.bin: bad magic/);
});

test("unpacked rows: one example per row, shifted targets, only the response trained, padding is its own document", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-shards-"));
  const ds = await dataset(dir, [JSON.stringify({ instruction: "What colour is coal?", output: "Black." }), JSON.stringify({ instruction: "What colour is snow?", output: "White." })]);
  const out = join(dir, "sh");
  const m = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "chatml", max_seq_len: 48 }, outDir: out });
  const tok = tokenizerFor(DEMO);
  const [{ shard, entry }] = readShards(out, m);
  assert.deepEqual([shard.seqLen, shard.nRows, entry.examples, m.examples.train, m.vocab_size, m.pad_id], [48, 2, 2, 2, 512, tok.padId]);
  const T = 48;
  const row0 = Array.from(shard.tokens.subarray(0, T));
  const tg0 = Array.from(shard.targets.subarray(0, T));
  const pos0 = Array.from(shard.positions.subarray(0, T));
  const L = row0.indexOf(tok.padId, 1);
  assert.equal(tok.decode(row0.slice(0, L)), "<s><|im_start|> user\nWhat colour is coal?<|im_end|> \n<|im_start|> assistant\nBlack.<|im_end|> \n");
  // Targets: position t predicts token t+1 where that token is in the response.
  const trained = tg0.filter((x) => x !== IGNORE_INDEX);
  assert.equal(tok.decode(trained), "Black.<|im_end|>");
  for (let t = 0; t + 1 < L; t++) if (tg0[t] !== IGNORE_INDEX) assert.equal(tg0[t], row0[t + 1]);
  assert.equal(tg0[L - 1], IGNORE_INDEX);
  assert.deepEqual(pos0.slice(0, L), Array.from({ length: L }, (_, i) => i));
  assert.deepEqual(pos0.slice(L), Array.from({ length: T - L }, (_, i) => i)); // padding: new document
  assert.ok(tg0.slice(L).every((x) => x === IGNORE_INDEX));
  assert.ok(row0.slice(L).every((x) => x === tok.padId));
  assert.equal(entry.tokens, L + Array.from(shard.tokens.subarray(T, 2 * T)).indexOf(tok.padId, 1));
  assert.equal(entry.target_tokens, Array.from(shard.targets).filter((x) => x !== IGNORE_INDEX).length);
});

test("packing: several examples per row, positions restart, targets never cross examples; truncation counted", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-shards-"));
  const ds = await dataset(dir, alpacaRows(40));
  const tpl: TemplateSpec = { name: "chatml", max_seq_len: 256, packing: true };
  const m = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: tpl, outDir: join(dir, "p") });
  const unpacked = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { ...tpl, packing: false }, outDir: join(dir, "u") });
  const rowsPacked = m.shards.reduce((n, s) => n + s.rows, 0), rowsUnpacked = unpacked.shards.reduce((n, s) => n + s.rows, 0);
  assert.equal(rowsUnpacked, 40);
  assert.ok(rowsPacked <= 40 / 3, `packed rows ${rowsPacked}`);
  assert.equal(m.shards.reduce((n, s) => n + s.target_tokens, 0), unpacked.shards.reduce((n, s) => n + s.target_tokens, 0));
  let docs = 0;
  for (const { shard } of readShards(join(dir, "p"), m)) {
    const T = shard.seqLen;
    for (let r = 0; r < shard.nRows; r++) {
      const tk = shard.tokens.subarray(r * T, (r + 1) * T), tg = shard.targets.subarray(r * T, (r + 1) * T), ps = shard.positions.subarray(r * T, (r + 1) * T);
      for (let t = 0; t < T; t++) {
        if (ps[t] === 0 && tk[t] === 1) docs++; // an example starts with BOS at position 0
        if (t > 0 && ps[t] !== 0) assert.equal(ps[t], ps[t - 1] + 1);
        if (t + 1 < T && ps[t + 1] === 0) assert.equal(tg[t], IGNORE_INDEX, "a target crosses into the next document");
        if (tg[t] !== IGNORE_INDEX) assert.equal(tg[t], tk[t + 1]);
      }
      assert.equal(tg[T - 1], IGNORE_INDEX);
    }
  }
  assert.equal(docs, 40);
  // Truncation: a short seq_len cuts examples and counts them.
  const short = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "chatml", max_seq_len: 24 }, outDir: join(dir, "t") });
  assert.equal(short.truncated, 40);
  assert.equal(short.untrained, 40); // the prompt alone fills 24 tokens: no answer token is left
  const mid = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "chatml", max_seq_len: 256 }, outDir: join(dir, "m") });
  assert.equal(mid.untrained, 0);
  await assert.rejects(runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "text", max_seq_len: 64 }, outDir: join(dir, "x") }),
    /template "text" cannot render conversation rows \(dataset format "alpaca"\)/);
  const long = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { name: "chatml", max_seq_len: 256 }, outDir: join(dir, "l") });
  assert.equal(long.truncated, 0);
});

test("packing fills rows first-fit decreasing: longest first, each into the first row with room", () => {
  // Lengths 6, 5, 4, 5 into rows of 10: next-fit in this order needs 3 rows ([6] [5 4] [5]); first-fit decreasing
  // needs 2: [6 4] and [5 5] (equal lengths keep their order). Every example is whole, and each row's padding follows.
  const ex = (id: number, L: number) => ({ ids: Array.from({ length: L }, (_, t) => id * 10 + t), train: new Uint8Array(L).fill(1) });
  const built = buildRows([ex(1, 6), ex(2, 5), ex(3, 4), ex(4, 5)], 10, 0, true);
  assert.equal(built.nRows, 2);
  assert.deepEqual(Array.from(built.tokens.subarray(0, 10)), [10, 11, 12, 13, 14, 15, 30, 31, 32, 33]);
  assert.deepEqual(Array.from(built.tokens.subarray(10, 20)), [20, 21, 22, 23, 24, 40, 41, 42, 43, 44]);
  assert.deepEqual(Array.from(built.positions.subarray(0, 10)), [0, 1, 2, 3, 4, 5, 0, 1, 2, 3]);
  assert.equal(built.tokenCount, 20);
  assert.equal(built.targetTokens, 20 - 4);   // each example's last token has no target
  const unpacked = buildRows([ex(1, 6), ex(2, 5), ex(3, 4), ex(4, 5)], 10, 0, false);
  assert.equal(unpacked.nRows, 4);
  assert.deepEqual(Array.from(unpacked.tokens.subarray(20, 30)), [30, 31, 32, 33, 0, 0, 0, 0, 0, 0]);   // chunk order, padded
});

test("byte-deterministic: two runs give identical shards and manifests", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-shards-"));
  const ds = await dataset(dir, alpacaRows(600), { eval_fraction: 0.1 });
  const opts = { datasetDir: ds, tokenizerDir: DEMO, template: { name: "alpaca", max_seq_len: 64, packing: true } as TemplateSpec, rowsPerShard: 64 };
  await runShardsStage({ ...opts, outDir: join(dir, "a") });
  await runShardsStage({ ...opts, outDir: join(dir, "b") });
  const files = readdirSync(join(dir, "a")).sort();
  assert.deepEqual(files, readdirSync(join(dir, "b")).sort());
  assert.ok(files.length > 5);
  for (const f of files) assert.ok(readFileSync(join(dir, "a", f)).equals(readFileSync(join(dir, "b", f))), f);
  const m = JSON.parse(readFileSync(join(dir, "a/manifest.json"), "utf8")) as ShardsManifest;
  assert.ok(m.shards.some((s) => s.split === "eval") && m.shards.some((s) => s.split === "train"));
  assert.equal(m.examples.train + m.examples.eval, 600);
});

test("content-defined shards: editing one row of 5,000 re-tokenizes exactly one shard; a cache dir serves a fresh output dir", async () => {
  const dir = mkdtempSync(join(tmpdir(), "nxft-shards-"));
  const lines = alpacaRows(5000);
  const N = 256;
  let ds = await dataset(dir, lines);
  const template: TemplateSpec = { name: "chatml", max_seq_len: 64 };
  const out = join(dir, "out"), cache = join(dir, "cache");
  const first = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: out, rowsPerShard: N, cacheDir: cache });
  assert.ok(first.shards.length >= 10, `${first.shards.length} shards`);
  assert.equal(first.retokenized, first.shards.length);

  // Unchanged input: nothing is tokenized again.
  const again = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: out, rowsPerShard: N, cacheDir: cache });
  assert.deepEqual([again.retokenized, again.reused], [0, first.shards.length]);

  // Edit row 2500 (neither the old nor the new text is a cut point: the documented condition).
  const k = 2500;
  const oldLine = JSON.stringify(JSON.parse(readFileSync(join(ds, "rows.jsonl"), "utf8").split("\n")[k]));
  assert.equal(isCutRow(rowId(oldLine), N), false);
  let edited = "";
  for (let v = 0; ; v++) {
    const cand = JSON.stringify({ instruction: `An edited instruction, version ${v}.`, input: "", output: "Edited." });
    const norm = JSON.stringify({ messages: [{ role: "user", content: `An edited instruction, version ${v}.` }, { role: "assistant", content: "Edited." }] });
    if (!isCutRow(rowId(norm), N)) { edited = cand; break; }
  }
  lines[k] = edited;
  ds = await dataset(dir, lines, {}, "ds2");
  const t0 = Date.now();
  const second = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: out, rowsPerShard: N, cacheDir: cache });
  const ms = Date.now() - t0;
  assert.equal(second.retokenized, 1);
  assert.equal(second.reused, second.shards.length - 1);
  assert.equal(second.shards.length, first.shards.length);
  const changed = second.shards.filter((s, i) => s.sha256 !== first.shards[i].sha256);
  assert.equal(changed.length, 1);
  assert.deepEqual(readdirSync(out).filter((f) => f.endsWith(".tokens.bin")).sort(), second.shards.map((s) => s.file).sort());
  assert.ok(ms < 5000, `incremental run took ${ms} ms`);

  // A fresh output dir with the same cache dir reuses every shard, byte-identical.
  const fresh = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template, outDir: join(dir, "fresh"), rowsPerShard: N, cacheDir: cache });
  assert.equal(fresh.retokenized, 0);
  for (const s of fresh.shards) assert.ok(readFileSync(join(dir, "fresh", s.file)).equals(readFileSync(join(out, s.file))));
  // A different template changes every key: everything is tokenized again.
  const other = await runShardsStage({ datasetDir: ds, tokenizerDir: DEMO, template: { ...template, max_seq_len: 80 }, outDir: out, rowsPerShard: N });
  assert.equal(other.retokenized, other.shards.length);
});
