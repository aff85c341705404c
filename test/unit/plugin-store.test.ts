// The content store and stage folders: blobs by sha256, hard links into outputs, relink by manifest after Nx
// restored only the manifest (cache hit / fresh clone), atomic stage commits.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { blobPath, linkFromStore, materialize, missingBlobs, MissingBlobError, putFile, storeRoot } from "../../plugins/nx-finetune/src/store";
import { beginStage, commitStage, materializeStage, readManifest, stageDir, sweepTemp } from "../../plugins/nx-finetune/src/stage-dir";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const tmp = () => mkdtempSync(join(tmpdir(), "nxft-store-"));

test("storeRoot: NXFT_STORE, then the plugin option, then .nxft/store", () => {
  const saved = process.env.NXFT_STORE;
  delete process.env.NXFT_STORE;
  assert.equal(storeRoot("/ws"), "/ws/.nxft/store");
  assert.equal(storeRoot("/ws", "cas"), "/ws/cas");
  process.env.NXFT_STORE = "/big/cas";
  assert.equal(storeRoot("/ws", "cas"), "/big/cas");
  if (saved === undefined) delete process.env.NXFT_STORE; else process.env.NXFT_STORE = saved;
});

test("putFile stores content once, read-only, as a hard link of the file", async () => {
  const dir = tmp(), store = join(dir, "store");
  writeFileSync(join(dir, "a.bin"), "hello");
  writeFileSync(join(dir, "b.bin"), "hello");
  const a = await putFile(store, join(dir, "a.bin"));
  assert.deepEqual(a, { sha256: sha("hello"), size: 5 });
  const blob = blobPath(store, a.sha256);
  assert.equal(statSync(blob).ino, statSync(join(dir, "a.bin")).ino);
  assert.equal(statSync(blob).mode & 0o222, 0, "blobs are read-only");
  await putFile(store, join(dir, "b.bin")); // same content: no second blob
  assert.equal(readdirSync(join(store, "blobs", a.sha256.slice(0, 2))).length, 1);
  assert.deepEqual(readdirSync(join(store, "tmp")), [], "no staging leftovers");
});

test("linkFromStore: link, keep when already linked, replace a stale file, explain a missing blob", async () => {
  const dir = tmp(), store = join(dir, "store");
  writeFileSync(join(dir, "src"), "weights");
  const { sha256, size } = await putFile(store, join(dir, "src"));
  const out = join(dir, "out", "deep", "model.bin");
  assert.equal(await linkFromStore(store, sha256, size, out), "linked");
  assert.equal(readFileSync(out, "utf8"), "weights");
  assert.equal(statSync(out).ino, statSync(blobPath(store, sha256)).ino);
  assert.equal(await linkFromStore(store, sha256, size, out), "kept");
  rmSync(out);
  writeFileSync(out, "stale content");
  assert.equal(await linkFromStore(store, sha256, size, out), "linked");
  assert.equal(readFileSync(out, "utf8"), "weights");
  await assert.rejects(linkFromStore(store, sha("nope"), 4, join(dir, "x")), /content store .* lacks blob/);
});

test("commitStage + materializeStage: a cache hit restores only the manifest, the blobs come back by link", async () => {
  const ws = tmp(), store = join(ws, "store"), project = join(ws, "recipes", "demo");
  mkdirSync(project, { recursive: true });
  const t = await beginStage(project, "gguf");
  writeFileSync(join(t, "demo.q8_0.gguf"), "GGUF".padEnd(4096, "x"));
  writeFileSync(join(t, "Modelfile"), "FROM ./demo.q8_0.gguf\n");
  writeFileSync(join(t, "metrics.jsonl"), "{}\n"); // a report file: cached by Nx, not part of the manifest
  const manifest = await commitStage(store, project, "gguf", t, { types: ["q8_0"] }, { wall_s: 1.5 });
  assert.deepEqual(manifest.files.map((f) => f.path), ["Modelfile", "demo.q8_0.gguf"]);
  assert.ok(!existsSync(t), "temp folder swapped in");
  const dir = stageDir(project, "gguf");
  assert.deepEqual(readdirSync(dir).sort(), ["Modelfile", "demo.q8_0.gguf", "metrics.jsonl", "run.json", "stage-manifest.json"]);
  const manifestText = readFileSync(join(dir, "stage-manifest.json"), "utf8");
  assert.ok(!manifestText.includes(ws), "no absolute paths in the manifest");
  assert.ok(!manifestText.includes("wall_s"), "no times in the manifest");

  // Simulate a fresh clone that got stage-manifest.json from the Nx cache.
  rmSync(join(dir, "demo.q8_0.gguf"));
  rmSync(join(dir, "Modelfile"));
  await materializeStage(store, project, "gguf");
  assert.equal(readFileSync(join(dir, "Modelfile"), "utf8"), "FROM ./demo.q8_0.gguf\n");
  assert.equal(statSync(join(dir, "demo.q8_0.gguf")).size, 4096);
  assert.equal(await materialize(store, dir, readManifest(project, "gguf").files), 0, "second materialize links nothing");
});

test("a killed stage leaves no output: only a temp folder, swept later; the previous output stays intact", async () => {
  const ws = tmp(), store = join(ws, "store"), project = join(ws, "p");
  mkdirSync(project, { recursive: true });
  const first = await beginStage(project, "merged");
  writeFileSync(join(first, "model.safetensors"), "v1");
  await commitStage(store, project, "merged", first, {}, {});
  // A run that dies mid-way (here: a temp folder owned by a pid that no longer exists).
  const dead = join(project, "out", ".tmp-merged-999999");
  mkdirSync(dead);
  writeFileSync(join(dead, "model.safetensors"), "half-writt");
  assert.equal(readFileSync(join(stageDir(project, "merged"), "model.safetensors"), "utf8"), "v1");
  assert.equal(readManifest(project, "merged").files[0].sha256, sha("v1"));
  await sweepTemp(project);
  assert.ok(!existsSync(dead));
  assert.throws(() => readManifest(project, "adapter"), /run the 'adapter' target first/);
});

test("missingBlobs: only entries in neither the store nor (with that content) the output folder; a typed error names them", async () => {
  const dir = tmp(), store = join(dir, "store"), out = join(dir, "out");
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, "kept.bin"), "kept");
  writeFileSync(join(dir, "in-store.bin"), "in store");
  const inStore = await putFile(store, join(dir, "in-store.bin"));
  writeFileSync(join(out, "stale.bin"), "other bytes");
  const files = [
    { path: "in-store.bin", ...inStore },
    { path: "kept.bin", sha256: sha("kept"), size: 4 },          // not in the store, but the output has it
    { path: "stale.bin", sha256: sha("wanted!!!!!"), size: 11 }, // same size, other content
    { path: "gone.bin", sha256: sha("gone"), size: 4 },
  ];
  assert.deepEqual((await missingBlobs(store, out, files)).map((f) => f.path), ["stale.bin", "gone.bin"]);
  const err = await materialize(store, out, files).catch((e) => e);
  assert.ok(err instanceof MissingBlobError);
  assert.equal(err.sha256, sha("wanted!!!!!"));
});
