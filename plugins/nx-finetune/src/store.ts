// store.ts — the content-addressed store (CAS) that holds every stage's big files, DVC-style.
//
// Nx caches only each stage's small manifest (file name → sha256, size); the blobs live here, once, named by
// sha256, and are hard-linked (fallback: copied) into the stage output folders. So a cached rerun neither copies
// nor re-hashes gigabytes, and a fresh clone pointed at the same store relinks outputs by manifest.
//
//   <store>/blobs/<sha[0:2]>/<sha>     read-only blobs
//   <store>/tmp/                       staging for atomic inserts (same filesystem as blobs/)
//   <store>/fingerprints.json          fingerprint cache (fingerprint.cjs)
import { createHash } from "node:crypto";
import { createReadStream, promises as fsp, constants as fsc, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

export interface StoredFile { path: string; sha256: string; size: number }

// A blob a manifest lists is neither in the store nor in the output folder (e.g. the Nx cache came from another
// clone or runner, the store did not). Callers recover: fetch it from the remote store, or rerun the stage.
export class MissingBlobError extends Error {
  constructor(readonly store: string, readonly sha256: string, readonly size: number, readonly dest: string) {
    super(`content store ${store} lacks blob ${sha256} (${size} bytes) needed for ${dest}`);
  }
}

// Where the store lives: $NXFT_STORE, else the plugin option, else <workspace>/.nxft/store.
export function storeRoot(workspaceRoot: string, option?: string): string {
  const configured = process.env.NXFT_STORE || option;
  return configured ? resolve(workspaceRoot, configured) : join(workspaceRoot, ".nxft", "store");
}

export function blobPath(store: string, sha256: string): string {
  return join(store, "blobs", sha256.slice(0, 2), sha256);
}

export function fingerprintCachePath(store: string): string {
  return join(store, "fingerprints.json");
}

export async function sha256OfFile(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

function tempName(dir: string, base: string): string {
  return join(dir, `.${base}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
}

// Link `src` to `dest` when they share a filesystem, else copy; never leaves a partial `dest`.
async function linkOrCopy(src: string, dest: string): Promise<void> {
  const tmp = tempName(dirname(dest), "link");
  try {
    await fsp.link(src, tmp);
  } catch (e: any) {
    if (!["EXDEV", "EPERM", "EMLINK", "ENOTSUP", "EACCES"].includes(e.code)) throw e;
    await fsp.copyFile(src, tmp, fsc.COPYFILE_FICLONE);
  }
  try {
    await fsp.rename(tmp, dest);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}

// Adds `file` to the store (if its content isn't there yet) and returns its sha256 and size. The file itself is
// left in place (it becomes another name of the blob when the store shares its filesystem).
export async function putFile(store: string, file: string): Promise<{ sha256: string; size: number }> {
  const sha256 = await sha256OfFile(file);
  const size = statSync(file).size;
  const blob = blobPath(store, sha256);
  const existing = await fsp.stat(blob).catch(() => undefined);
  if (existing && existing.size === size) return { sha256, size };
  await fsp.mkdir(dirname(blob), { recursive: true });
  await fsp.mkdir(join(store, "tmp"), { recursive: true });
  const staged = tempName(join(store, "tmp"), sha256);
  try {
    await fsp.link(file, staged);
  } catch (e: any) {
    if (!["EXDEV", "EPERM", "EMLINK", "ENOTSUP", "EACCES"].includes(e.code)) throw e;
    await fsp.copyFile(file, staged, fsc.COPYFILE_FICLONE);
  }
  // Read-only: the blob is shared by every output folder that links it; nothing may edit it in place.
  await fsp.chmod(staged, 0o444);
  await fsp.rename(staged, blob);
  return { sha256, size };
}

// Makes `dest` hold the blob `sha256` (a hard link when possible). Cheap when it already does (same inode, or
// same size for a copied fallback). Throws a clear error when the blob is missing from the store.
export async function linkFromStore(store: string, sha256: string, size: number, dest: string): Promise<"kept" | "linked"> {
  const blob = blobPath(store, sha256);
  const [b, d] = await Promise.all([fsp.stat(blob).catch(() => undefined), fsp.stat(dest).catch(() => undefined)]);
  if (d && b && d.ino === b.ino && d.dev === b.dev) return "kept";
  if (!b) {
    if (d && d.size === size && (await sha256OfFile(dest)) === sha256) {
      await putFile(store, dest); // the store lost it but the output still has it: put it back
      return "kept";
    }
    throw new MissingBlobError(store, sha256, size, dest);
  }
  await fsp.mkdir(dirname(dest), { recursive: true });
  await linkOrCopy(blob, dest);
  return "linked";
}

// Puts every listed file of `dir` into the store; returns the manifest entries (paths relative to `dir`).
export async function putDir(store: string, dir: string, relPaths: string[]): Promise<StoredFile[]> {
  const out: StoredFile[] = [];
  for (const rel of [...relPaths].sort()) {
    const { sha256, size } = await putFile(store, join(dir, rel));
    out.push({ path: rel, sha256, size });
  }
  return out;
}

// Manifest entries whose blob is in neither the store nor (with that content) the output folder.
export async function missingBlobs(store: string, dir: string, files: StoredFile[]): Promise<StoredFile[]> {
  const missing: StoredFile[] = [];
  for (const f of files) {
    if (await fsp.stat(blobPath(store, f.sha256)).then(() => true, () => false)) continue;
    const d = await fsp.stat(join(dir, f.path)).catch(() => undefined);
    if (d && d.size === f.size && (await sha256OfFile(join(dir, f.path))) === f.sha256) continue;
    missing.push(f);
  }
  return missing;
}

// Relinks every file of a manifest into `dir`. Returns how many files had to be (re)linked.
export async function materialize(store: string, dir: string, files: StoredFile[]): Promise<number> {
  let linked = 0;
  for (const f of files) if ((await linkFromStore(store, f.sha256, f.size, join(dir, f.path))) === "linked") linked++;
  return linked;
}
