// Fingerprints of data/base files outside Nx's view: sha256 remembered by (path, size, mtime, inode).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, renameSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fingerprint } from "../../plugins/nx-finetune/src/fingerprint.cjs";

const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const old = new Date(Date.now() - 60_000); // older than the racy window, so the result may be remembered

function setup() {
  const dir = mkdtempSync(join(tmpdir(), "nxft-fp-"));
  const file = join(dir, "data.jsonl");
  writeFileSync(file, "row1\n");
  utimesSync(file, old, old);
  return { dir, file, cache: join(dir, "store", "fingerprints.json") };
}

test("a file is hashed once, then served from the cache while (size, mtime, inode) match", () => {
  const { file, cache } = setup();
  const a = fingerprint(file, cache);
  assert.deepEqual(a, { sha256: sha("row1\n"), size: 5, files: 1, hashed: 1 });
  const b = fingerprint(file, cache);
  assert.equal(b.hashed, 0);
  assert.equal(b.sha256, a.sha256);
  assert.equal(JSON.parse(readFileSync(cache, "utf8")).files[file].sha256, a.sha256);
});

test("the cache never serves stale content: new mtime, new size or new inode rehash", () => {
  const { dir, file, cache } = setup();
  fingerprint(file, cache);
  writeFileSync(file, "row2\n"); // same size, new mtime
  utimesSync(file, new Date(old.getTime() + 1000), new Date(old.getTime() + 1000));
  const b = fingerprint(file, cache);
  assert.equal(b.hashed, 1);
  assert.equal(b.sha256, sha("row2\n"));
  // Same size and mtime, but a different file (inode) moved into place.
  const other = join(dir, "other");
  writeFileSync(other, "row3\n");
  utimesSync(other, new Date(old.getTime() + 1000), new Date(old.getTime() + 1000));
  renameSync(other, file);
  const c = fingerprint(file, cache);
  assert.equal(c.hashed, 1);
  assert.equal(c.sha256, sha("row3\n"));
});

test("a freshly written file (racy mtime) is hashed but not remembered", () => {
  const { dir, cache } = setup();
  const fresh = join(dir, "fresh");
  writeFileSync(fresh, "x");
  assert.equal(fingerprint(fresh, cache).hashed, 1);
  assert.equal(fingerprint(fresh, cache).hashed, 1);
});

test("a folder's fingerprint covers names and contents of its files", () => {
  const { dir, cache } = setup();
  const model = join(dir, "model");
  mkdirSync(join(model, "sub"), { recursive: true });
  writeFileSync(join(model, "config.json"), "{}");
  writeFileSync(join(model, "sub", "w.bin"), "abc");
  const a = fingerprint(model, cache);
  assert.equal(a.files, 2);
  renameSync(join(model, "sub", "w.bin"), join(model, "sub", "w2.bin"));
  const b = fingerprint(model, cache);
  assert.notEqual(b.sha256, a.sha256, "a rename changes the fingerprint");
});

test("CLI (the Nx runtime input) prints one line per path and marks missing paths", () => {
  const { dir, file } = setup();
  const script = join(__dirname, "..", "..", "plugins", "nx-finetune", "src", "fingerprint.cjs");
  const out = execFileSync(process.execPath, [script, "--store", join(dir, "cas"), file, join(dir, "missing")], { cwd: dir, encoding: "utf8", env: { ...process.env, NXFT_STORE: "" } });
  assert.equal(out, `${file} sha256:${sha("row1\n")}\n${join(dir, "missing")} missing (ENOENT)\n`);
  assert.ok(JSON.parse(readFileSync(join(dir, "cas", "fingerprints.json"), "utf8")).files[file]);
});
