// stage-dir.ts — one folder per stage output, <projectRoot>/out/<stage>/, replaced atomically.
//
// A stage writes into out/.tmp-<stage>-<pid>/, puts its big files into the store, writes stage-manifest.json last, then
// swaps the folder in with renames. A stage killed at any moment leaves at most a .tmp-* folder (swept on the next
// run), never an out/<stage>/stage-manifest.json that Nx or a later stage would take for output.
//
// stage-manifest.json is deterministic (no times, no absolute paths): it is what downstream stages hash
// (dependentTasksOutputFiles), so identical outputs give identical manifests and stop reruns (early cutoff).
import { existsSync, readFileSync, readdirSync, promises as fsp } from "node:fs";
import { join } from "node:path";
import { listFiles } from "./fingerprint.cjs";
import { materialize, putDir, type StoredFile } from "./store";
import { writeJsonAtomic } from "./atomic";

export type StageName = "base" | "dataset" | "shards" | "adapter" | "merged" | "gguf" | "eval";

export interface StageManifest {
  stage: StageName;
  files: StoredFile[];          // big or small, all in the store, relative to the stage folder
  info: Record<string, unknown>; // stage-specific, deterministic facts (e.g. shard list, base kind/path)
}

// Files a stage may write next to its manifest that are reports (times, curves, counters): cached by Nx as outputs
// (index.ts stageOutputs) but not part of the manifest, so they never break early cutoff. The shards stage's own
// manifest.json counts how many shards this run tokenized vs reused, which depends on what was cached before.
const REPORT_FILES = ["stage-manifest.json", "run.json", "metrics.jsonl", "loss.svg", "summary.json"];
// The eval stage's metrics.json and report.html carry times and throughput; its manifest's info holds the metrics.
export function reportFiles(stage: StageName): Set<string> {
  if (stage === "eval") return new Set([...REPORT_FILES, "metrics.json", "report.html"]);
  return new Set(stage === "shards" ? [...REPORT_FILES, "manifest.json"] : REPORT_FILES);
}

export function stageDir(projectDir: string, stage: StageName): string {
  return join(projectDir, "out", stage);
}

export function readManifest(projectDir: string, stage: StageName): StageManifest {
  const file = join(stageDir(projectDir, stage), "stage-manifest.json");
  if (!existsSync(file)) throw new Error(`${file} is missing: run the '${stage}' target first`);
  return JSON.parse(readFileSync(file, "utf8")) as StageManifest;
}

// Makes sure every file a stage's manifest lists is present in its folder (relinking from the store).
export async function materializeStage(store: string, projectDir: string, stage: StageName): Promise<StageManifest> {
  const manifest = readManifest(projectDir, stage);
  await materialize(store, stageDir(projectDir, stage), manifest.files);
  return manifest;
}

// Removes leftovers of killed runs (their pid is gone).
export async function sweepTemp(projectDir: string): Promise<void> {
  const out = join(projectDir, "out");
  if (!existsSync(out)) return;
  for (const name of readdirSync(out)) {
    const m = /^\.(tmp|old)-[a-z]+-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[2]);
    let alive = false;
    try { process.kill(pid, 0); alive = pid !== process.pid; } catch { alive = false; }
    if (!alive) await fsp.rm(join(out, name), { recursive: true, force: true });
  }
}

// A fresh, empty temp folder for `stage`.
export async function beginStage(projectDir: string, stage: StageName): Promise<string> {
  await sweepTemp(projectDir);
  const tmp = join(projectDir, "out", `.tmp-${stage}-${process.pid}`);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  return tmp;
}

// Stores every non-report file of `tmp`, writes the manifest, swaps `tmp` in as out/<stage>/.
export async function commitStage(store: string, projectDir: string, stage: StageName, tmp: string,
                                  info: Record<string, unknown>, run: Record<string, unknown>): Promise<StageManifest> {
  const reports = reportFiles(stage);
  const files = listFiles(tmp).filter((f) => !reports.has(f));
  const manifest: StageManifest = { stage, files: await putDir(store, tmp, files), info };
  writeJsonAtomic(join(tmp, "run.json"), run);
  writeJsonAtomic(join(tmp, "stage-manifest.json"), manifest);
  const dest = stageDir(projectDir, stage);
  const old = join(projectDir, "out", `.old-${stage}-${process.pid}`);
  if (existsSync(dest)) await fsp.rename(dest, old);
  await fsp.rename(tmp, dest);
  await fsp.rm(old, { recursive: true, force: true });
  return manifest;
}
