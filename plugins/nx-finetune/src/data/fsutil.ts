// fsutil.ts — small file helpers shared by the data pipeline: atomic writes, sha256, manifest JSON.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, basename, join } from "node:path";

// Writes `data` to `path` atomically: a temp file in the same folder, then rename, so a killed run never leaves a
// half-written file that looks like output.
export function writeFileAtomic(path: string, data: string | Uint8Array): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function sha256File(path: string): string {
  return sha256Hex(readFileSync(path));
}

// Pretty JSON for manifests (stable because every manifest object is built with a fixed key order).
export function manifestJson(value: unknown): string {
  return JSON.stringify(value, null, 2) + "\n";
}
