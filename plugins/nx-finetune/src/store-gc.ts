// store-gc.ts — garbage collection of the content store: `nx run <recipe>:gc` (or `--dry-run` to list what it would free).
//
// A blob is live while any stage manifest references it: in a recipe's out/<stage>/ folder (every recipe of the
// workspace, the store is shared) or in an Nx cache entry (a later cache hit relinks from it). A shard-cache entry
// is live while a shards manifest.json lists its key. Everything else goes, except what is younger than the grace
// period (a stage that is running now has put its blobs but not yet written its manifest). Checkpoints of
// unfinished training runs (<store>/checkpoints/<key>/) are kept: a rerun resumes from them; `--checkpoints`
// removes them too. A blob collected by mistake is not an error anyway: a cache hit fetches it from the remote
// store or reruns its stage (stage-run.ts).
import { existsSync, lstatSync, readFileSync, readdirSync, promises as fsp } from "node:fs";
import { basename, join } from "node:path";

export interface GcOptions {
  store: string;
  roots: string[];        // folders searched for stage-manifest.json and shards manifest.json files
  dryRun: boolean;
  graceMs: number;        // keep anything changed this recently
  checkpoints: boolean;   // also remove checkpoint folders
  log: (line: string) => void;
}

export interface GcResult { blobs: number; bytes: number; kept: number; keptBytes: number; shardEntries: number; checkpointDirs: number }

// Every stage-manifest.json and shards manifest.json under `root` (symlinks not followed).
function* manifestFiles(root: string): Generator<string> {
  if (!existsSync(root)) return;
  const stack = [root];
  while (stack.length) {
    const dir = stack.pop()!;
    let entries: import("node:fs").Dirent[];
    try { entries = readdirSync(dir, { withFileTypes: true }); } catch { continue; }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile() && (e.name === "stage-manifest.json" || (e.name === "manifest.json" && basename(dir) === "shards"))) yield p;
    }
  }
}

export function liveReferences(roots: string[]): { blobs: Set<string>; shardKeys: Set<string>; manifests: number } {
  const blobs = new Set<string>(), shardKeys = new Set<string>();
  let manifests = 0;
  for (const root of roots) {
    for (const file of manifestFiles(root)) {
      let m: any;
      try { m = JSON.parse(readFileSync(file, "utf8")); } catch { continue; }
      manifests++;
      for (const f of Array.isArray(m?.files) ? m.files : []) if (typeof f?.sha256 === "string") blobs.add(f.sha256);
      for (const s of Array.isArray(m?.shards) ? m.shards : []) if (typeof s?.key === "string") shardKeys.add(s.key);
    }
  }
  return { blobs, shardKeys, manifests };
}

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

export async function collectGarbage(o: GcOptions): Promise<GcResult> {
  const live = liveReferences(o.roots);
  const now = Date.now();
  const young = (p: string) => { const s = lstatSync(p); return now - Math.max(s.mtimeMs, s.ctimeMs) < o.graceMs; };
  const r: GcResult = { blobs: 0, bytes: 0, kept: 0, keptBytes: 0, shardEntries: 0, checkpointDirs: 0 };
  const remove = async (p: string, what: string, size: number) => {
    o.log(`${o.dryRun ? "would remove" : "removing"} ${what} (${mb(size)})`);
    if (!o.dryRun) await fsp.rm(p, { recursive: true, force: true });
  };
  const blobsDir = join(o.store, "blobs");
  for (const prefix of existsSync(blobsDir) ? readdirSync(blobsDir) : []) {
    for (const sha of readdirSync(join(blobsDir, prefix))) {
      const p = join(blobsDir, prefix, sha);
      const size = lstatSync(p).size;
      if (live.blobs.has(sha) || young(p)) { r.kept++; r.keptBytes += size; continue; }
      await remove(p, `blob ${sha}`, size);
      r.blobs++; r.bytes += size;
    }
  }
  const shardCache = join(o.store, "shard-cache");
  for (const name of existsSync(shardCache) ? readdirSync(shardCache) : []) {
    const m = /^([0-9a-f]{64})\.(tokens\.bin|json)$/.exec(name);
    if (!m || live.shardKeys.has(m[1])) continue;
    const p = join(shardCache, name);
    if (young(p)) continue;
    const size = lstatSync(p).size;
    if (m[2] === "tokens.bin") r.shardEntries++;
    await remove(p, `shard-cache ${name}`, size);
    r.bytes += size;
  }
  const ckpts = join(o.store, "checkpoints");
  if (o.checkpoints && existsSync(ckpts)) {
    for (const key of readdirSync(ckpts)) {
      const p = join(ckpts, key);
      if (young(p)) continue;
      const size = dirSize(p);
      await remove(p, `checkpoints ${key}`, size);
      r.checkpointDirs++; r.bytes += size;
    }
  }
  o.log(`gc: ${live.manifests} manifest(s) reference ${live.blobs.size} blob(s); ${o.dryRun ? "would free" : "freed"} ${mb(r.bytes)} ` +
        `(${r.blobs} blob(s), ${r.shardEntries} shard-cache entr${r.shardEntries === 1 ? "y" : "ies"}` +
        `${o.checkpoints ? `, ${r.checkpointDirs} checkpoint folder(s)` : ""}); kept ${r.kept} blob(s), ${mb(r.keptBytes)}`);
  return r;
}

function dirSize(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    n += e.isDirectory() ? dirSize(p) : lstatSync(p).size;
  }
  return n;
}
