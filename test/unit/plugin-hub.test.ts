// The one Hub client (src/hub-client.ts) for base models and datasets, against a local fake Hub
// (test/support/fake-hub-files.ts): the shared HF cache layout (HF_HUB_CACHE), HF_TOKEN from .env for gated models
// and gated datasets (never logged, never exported), resume after a truncated download, checksum mismatch → a clear
// error and nothing cached, a branch revision pinned to its commit (noted when it moves, used offline), clear errors
// for offline / denied / missing.
import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { hubCacheDir, hubToken, resolveRevision } from "../../plugins/nx-finetune/src/hub-client";
import { ensureHubModel, hubModelDir } from "../../plugins/nx-finetune/src/hub-model";
import { runDatasetStage } from "../../plugins/nx-finetune/src/data";
import { fetchHubDataset } from "../../plugins/nx-finetune/src/data/hub-dataset";
import { gitBlobId, sha256, startFakeHub, type FakeHub, type FakeRepo } from "../support/fake-hub-files";

const TOKEN = "hf_secretsecretsecret";
const C1 = "1".repeat(40), C2 = "2".repeat(40), D1 = "d".repeat(40), D2 = "e".repeat(40), PQ = "f".repeat(40);
const WEIGHTS = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 7919) & 0xff));

function modelRepo(): FakeRepo {
  return {
    kind: "model", name: "org/tiny", refs: { main: C1 }, token: TOKEN,
    commits: {
      [C1]: {
        "config.json": { bytes: Buffer.from('{"model_type":"llama"}\n') },
        "model.safetensors": { bytes: WEIGHTS, lfs: true },
        "tokenizer.json": { bytes: Buffer.from("{}\n") },
        "README.md": { bytes: Buffer.from("# tiny\n") },
        "original/consolidated.pth": { bytes: Buffer.from("not for us"), lfs: true },
      },
      [C2]: { "config.json": { bytes: Buffer.from('{"model_type":"llama","v":2}\n') } },
    },
  };
}

function datasetRepos(): FakeRepo[] {
  const rows = (s: string) => Buffer.from(`{"text":"${s} one"}\n{"text":"${s} two"}\n`);
  return [
    { kind: "dataset", name: "org/gated", token: TOKEN, refs: { main: D1 },
      commits: {
        [D1]: { "data/train.jsonl": { bytes: rows("first"), lfs: true }, "data/test.jsonl": { bytes: rows("test") }, "README.md": { bytes: Buffer.from("x") } },
        [D2]: { "data/train.jsonl": { bytes: rows("second"), lfs: true } },
      } },
    // no data files in the repo itself: the Hub's parquet conversion branch has them (read as jsonl here: only the
    // file choice is under test, the reader is covered elsewhere)
    { kind: "dataset", name: "org/converted", refs: { main: C1, "refs/convert/parquet": PQ },
      commits: { [C1]: { "README.md": { bytes: Buffer.from("x") } },
                 [PQ]: { ".gitattributes": { bytes: Buffer.from("x") }, "default/train/0000.parquet": { bytes: Buffer.from("PAR1") }, "default/test/0000.parquet": { bytes: Buffer.from("PAR1") } } } },
  ];
}

let ws = "", store = "", cache = "", hub: FakeHub;
const saved: Record<string, string | undefined> = {};
const ENV = ["HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME"];

beforeEach(async () => {
  for (const k of ENV) { saved[k] = process.env[k]; delete process.env[k]; }
  ws = mkdtempSync(join(tmpdir(), "nxft-hub-"));
  store = join(ws, "store");
  cache = join(ws, "hf-cache");
  process.env.HF_HUB_CACHE = cache;
  hub = await startFakeHub([modelRepo(), ...datasetRepos()]);
  process.env.HF_ENDPOINT = hub.url;
});

afterEach(async () => {
  await hub.close();
  for (const k of ENV) { if (saved[k] === undefined) delete process.env[k]; else process.env[k] = saved[k]; }
});

const logs: string[] = [];
const log = (l: string) => logs.push(l);
const downloads = () => hub.requests.filter((r) => r.url.includes("/resolve/"));

test("a gated model: files into the shared HF cache with the token from .env; the store folder holds what the engine reads", async () => {
  assert.equal(await hubCacheDir(), cache);
  process.env.HF_HUB_CACHE = "";
  delete process.env.HF_HUB_CACHE;
  process.env.HF_HOME = join(ws, "hf-home");
  assert.equal(await hubCacheDir(), join(ws, "hf-home", "hub"), "HF_HOME/hub when HF_HUB_CACHE is unset");
  delete process.env.HF_HOME;
  process.env.HF_HUB_CACHE = cache;

  writeFileSync(join(ws, ".env"), `HF_TOKEN=${TOKEN}\n`);
  assert.equal(hubToken(ws), TOKEN);
  logs.length = 0;
  const commit = await resolveRevision({ workspaceRoot: ws, log }, { kind: "model", name: "org/tiny", field: "base" }, "main");
  assert.equal(commit, C1);
  const dir = await ensureHubModel(store, ws, "org/tiny", commit, log);
  assert.equal(dir, hubModelDir(store, "org/tiny", C1));
  assert.deepEqual(readdirSync(dir).sort(), ["config.json", "model.safetensors", "tokenizer.json"]);
  assert.ok(readFileSync(join(dir, "model.safetensors")).equals(WEIGHTS));
  assert.equal(process.env.HF_TOKEN, undefined, ".env is read without exporting the token to child processes");
  assert.ok(!logs.join("\n").includes(TOKEN));
  assert.ok(hub.requests.every((r) => r.auth === `Bearer ${TOKEN}`));

  // huggingface_hub's layout: refs/main, blobs named by sha256 (LFS) or git blob id, snapshot symlinks
  const repoDir = join(cache, "models--org--tiny");
  assert.equal(readFileSync(join(repoDir, "refs", "main"), "utf8"), C1);
  assert.ok(existsSync(join(repoDir, "blobs", sha256(WEIGHTS))));
  assert.ok(existsSync(join(repoDir, "blobs", gitBlobId(Buffer.from('{"model_type":"llama"}\n')))));
  const pointer = join(repoDir, "snapshots", C1, "model.safetensors");
  assert.ok(lstatSync(pointer).isSymbolicLink());
  assert.equal(readlinkSync(pointer), join("..", "..", "blobs", sha256(WEIGHTS)));
  assert.equal(statSync(join(dir, "model.safetensors")).ino, statSync(pointer).ino, "hard-linked from the cache, not copied");

  // again: nothing asked; a second store (another clone) lists the repo but downloads nothing: the cache is shared
  const n = hub.requests.length;
  await ensureHubModel(store, ws, "org/tiny", C1, log);
  assert.equal(hub.requests.length, n);
  const before = downloads().length;
  await ensureHubModel(join(ws, "store2"), ws, "org/tiny", C1, log);
  assert.equal(downloads().length, before);
  assert.ok(!readdirSync(join(store, "hub", "org", "tiny")).some((f) => f.includes(".tmp-")));
});

test("a download that breaks off resumes with a Range request on the next run", async () => {
  process.env.HF_TOKEN = TOKEN;
  hub.truncate.add(`${C1}/model.safetensors`);
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", C1, log), /org\/tiny@1{40}: model\.safetensors: (the download broke off at \d+|received \d+) of 200000 bytes.*next run resumes/);
  const incomplete = join(cache, "models--org--tiny", "blobs", `${sha256(WEIGHTS)}.incomplete`);
  const partial = statSync(incomplete).size;
  assert.ok(partial > 0 && partial < WEIGHTS.length, `partial ${partial}`);
  assert.ok(!existsSync(hubModelDir(store, "org/tiny", C1)));

  logs.length = 0;
  const dir = await ensureHubModel(store, ws, "org/tiny", C1, log);
  const resumed = downloads().filter((r) => r.url.endsWith("/model.safetensors")).at(-1)!;
  assert.equal(resumed.range, `bytes=${partial}-`);
  assert.match(logs.join("\n"), /model\.safetensors: resuming at 0\.\d MB of 0\.2 MB/);
  assert.ok(readFileSync(join(dir, "model.safetensors")).equals(WEIGHTS));
  assert.ok(!existsSync(incomplete));
});

test("two runs downloading the same base at once: one writer per blob, both get the model", async () => {
  process.env.HF_TOKEN = TOKEN;
  const [a, b] = await Promise.all([ensureHubModel(store, ws, "org/tiny", C1, log), ensureHubModel(join(ws, "store2"), ws, "org/tiny", C1, log)]);
  for (const dir of [a, b]) assert.ok(readFileSync(join(dir, "model.safetensors")).equals(WEIGHTS));
  assert.equal(downloads().filter((r) => r.url.endsWith("/model.safetensors")).length, 1);
  assert.deepEqual(readdirSync(join(cache, "models--org--tiny", "blobs")).filter((f) => !/^[0-9a-f]+$/.test(f)), [], "no lock or partial file left");
});

test("a checksum mismatch is an error naming the file and both digests, and nothing is cached", async () => {
  process.env.HF_TOKEN = TOKEN;
  hub.corrupt.add(`${C1}/model.safetensors`);
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", C1, log),
    new RegExp(`base org/tiny@${C1}: model\\.safetensors: sha256 [0-9a-f]{64} does not match the Hub's ${sha256(WEIGHTS)}; the download was dropped \\(nothing cached\\)`));
  const blobs = join(cache, "models--org--tiny", "blobs");
  assert.ok(!readdirSync(blobs).some((f) => f.startsWith(sha256(WEIGHTS))), "neither the blob nor its .incomplete");
  assert.ok(!existsSync(join(cache, "models--org--tiny", "snapshots", C1, "model.safetensors")));
  assert.ok(!existsSync(hubModelDir(store, "org/tiny", C1)));
  hub.corrupt.clear();
  const dir = await ensureHubModel(store, ws, "org/tiny", C1, log);
  assert.ok(readFileSync(join(dir, "model.safetensors")).equals(WEIGHTS));
});

test("errors: denied without a token, unknown revision, unreachable, offline", async () => {
  const repo = { kind: "model" as const, name: "org/tiny", field: "base" };
  const env = { workspaceRoot: ws, log };
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", C1, log), /base org\/tiny@1{40}: access denied by .* \(HTTP 401\); gated or private models need HF_TOKEN in the environment or in \.env/);
  process.env.HF_TOKEN = TOKEN;
  await assert.rejects(resolveRevision(env, repo, "nope"), /base org\/tiny@nope: not found on .*check base and its revision/);
  process.env.HF_ENDPOINT = "http://127.0.0.1:1"; // nothing listens there
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", C1, log), (e: Error) => /cannot reach .* \(offline\?\)/.test(e.message) && !e.message.includes(TOKEN));
  process.env.HF_HUB_OFFLINE = "1";
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", C1, log), /not in the local cache .*HF_HUB_OFFLINE=1/);
  await assert.rejects(resolveRevision(env, repo, "dev"), /HF_HUB_OFFLINE=1 and the revision was never resolved/);
  assert.ok(!existsSync(hubModelDir(store, "org/tiny", C1)));
});

test("a gated dataset gets the token from .env; its branch is pinned to a commit, a move is noted, offline reads the cache", async () => {
  const dataset = (out: string, revision?: string) => runDatasetStage({
    recipePath: join(ws, "recipe.json"), data: { hub: "org/gated", format: "text", ...(revision ? { revision } : {}) }, outDir: join(ws, out), workspaceRoot: ws, log,
  });
  await assert.rejects(dataset("a"), /hub dataset org\/gated .*: data\.hub org\/gated@main: access denied .*gated or private datasets need HF_TOKEN in the environment or in \.env/);
  writeFileSync(join(ws, ".env"), `HF_TOKEN=${TOKEN}\n`);
  logs.length = 0;
  const a = await dataset("a");
  assert.equal(a.rows, 2);
  assert.deepEqual(a.sources.map((s) => s.file), [`hub:org/gated@${D1}/data/train.jsonl`]);
  assert.equal(a.hub_commit, D1, "pinned in the dataset manifest");
  assert.match(logs.join("\n"), new RegExp(`data\\.hub: org/gated@main is commit ${D1} \\(pinned in the manifest\\)`));
  assert.equal(readFileSync(join(cache, "datasets--org--gated", "refs", "main"), "utf8"), D1);

  const repo = datasetRepos()[0];
  hub.close();
  hub = await startFakeHub([{ ...repo, refs: { main: D2 } }]);
  process.env.HF_ENDPOINT = hub.url;
  logs.length = 0;
  const b = await dataset("b");
  assert.deepEqual(b.sources.map((s) => s.file), [`hub:org/gated@${D2}/data/train.jsonl`]);
  assert.match(logs.join("\n"), new RegExp(`note: org/gated@main moved from commit ${D1} to ${D2}; pinned to ${D2} now`));

  const n = hub.requests.length;
  process.env.HF_HUB_OFFLINE = "1";
  const c = await dataset("c");
  assert.equal(hub.requests.length, n, "offline: no request");
  assert.equal(c.rows_sha256, b.rows_sha256);
  const old = await dataset("d", D1);
  assert.deepEqual(old.sources.map((s) => s.file), [`hub:org/gated@${D1}/data/train.jsonl`], "an older commit from the cache");
});

test("a dataset without data files in the repo reads the split from the Hub's parquet conversion branch", async () => {
  const got = await fetchHubDataset({ hub: "org/converted" }, { workspaceRoot: ws, log });
  assert.equal(got.commit, PQ);
  assert.deepEqual(got.label, [`hub:org/converted@${PQ}/default/train/0000.parquet`]);
  assert.ok(got.files[0].startsWith(join(cache, "datasets--org--converted", "snapshots", PQ)));
});
