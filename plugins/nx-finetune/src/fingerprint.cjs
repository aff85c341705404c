// fingerprint.cjs — sha256 fingerprints of files and folders (datasets, base models) that live outside Nx's view
// (outside the workspace, or git-ignored), without rereading gigabytes on every run: a file's sha256 is
// remembered in a small JSON cache keyed by absolute path and revalidated by (size, mtime, inode).
//
// Plain CommonJS on purpose: Nx runs `bin/fingerprint.cjs` as a `runtime` input at every task hash, so it must
// start in ~50 ms (no TypeScript loader). Types: fingerprint.d.cts.
"use strict";
const { createHash } = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

// A file whose mtime is this close to "now" may still be changing within the same mtime tick: don't remember it
// (git's "racy" rule).
const RACY_MS = 2000;

function loadCache(cacheFile) {
  try {
    const parsed = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
    return parsed && parsed.version === 1 ? parsed : { version: 1, files: {} };
  } catch {
    return { version: 1, files: {} };
  }
}

function saveCache(cacheFile, cache) {
  fs.mkdirSync(path.dirname(cacheFile), { recursive: true });
  const tmp = `${cacheFile}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(cache));
  fs.renameSync(tmp, cacheFile);
}

function sha256File(file) {
  const hash = createHash("sha256");
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    let n;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest("hex");
}

// Lists regular files under `dir` (sorted, relative, "/"-separated), skipping dot-entries like .git.
function listFiles(dir, prefix = "") {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
    if (entry.name.startsWith(".")) continue;
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    const abs = path.join(dir, entry.name);
    const stat = fs.statSync(abs);
    if (stat.isDirectory()) out.push(...listFiles(abs, rel));
    else if (stat.isFile()) out.push(rel);
  }
  return out;
}

// Returns { sha256, size, files, hashed } for a file or folder. `hashed` counts files actually read (the cache
// missed); a folder's sha256 is the sha256 of its "relative-path\0file-sha256\n" lines.
function fingerprint(target, cacheFile) {
  const abs = path.resolve(target);
  const cache = cacheFile ? loadCache(cacheFile) : { version: 1, files: {} };
  let hashed = 0;
  let dirty = false;
  const fileSha = (file) => {
    const stat = fs.statSync(file);
    const key = path.resolve(file);
    const hit = cache.files[key];
    if (hit && hit.size === stat.size && hit.mtimeMs === stat.mtimeMs && hit.ino === stat.ino) return { sha256: hit.sha256, size: stat.size };
    const sha256 = sha256File(file);
    hashed++;
    if (Date.now() - stat.mtimeMs > RACY_MS) {
      cache.files[key] = { size: stat.size, mtimeMs: stat.mtimeMs, ino: stat.ino, sha256 };
      dirty = true;
    }
    return { sha256, size: stat.size };
  };
  const stat = fs.statSync(abs);
  let result;
  if (stat.isDirectory()) {
    const lines = [];
    let size = 0;
    const files = listFiles(abs);
    for (const rel of files) {
      const f = fileSha(path.join(abs, rel));
      size += f.size;
      lines.push(`${rel}\0${f.sha256}\n`);
    }
    result = { sha256: createHash("sha256").update(lines.join("")).digest("hex"), size, files: files.length, hashed };
  } else {
    const f = fileSha(abs);
    result = { sha256: f.sha256, size: f.size, files: 1, hashed };
  }
  if (dirty && cacheFile) saveCache(cacheFile, cache);
  return result;
}

module.exports = { fingerprint, sha256File, listFiles };

// CLI (the Nx `runtime` input), run in the workspace root:  node fingerprint.cjs [--store <dir>] <path>...
// The cache is <store>/fingerprints.json, store = $NXFT_STORE, else --store (the plugin option), else .nxft/store.
// Prints one "<path> sha256:<hex>" line per path; a missing path prints "<path> missing" (Nx ignores the exit
// code of runtime inputs, so the output itself must differ).
if (require.main === module) {
  const args = process.argv.slice(2);
  let store = ".nxft/store";
  if (args[0] === "--store") {
    store = args[1];
    args.splice(0, 2);
  }
  const cacheFile = path.join(path.resolve(process.env.NXFT_STORE || store), "fingerprints.json");
  for (const p of args) {
    try {
      console.log(`${p} sha256:${fingerprint(p, cacheFile).sha256}`);
    } catch (e) {
      console.log(`${p} missing (${e.code || e.message})`);
    }
  }
}
