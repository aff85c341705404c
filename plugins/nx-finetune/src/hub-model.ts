// hub-model.ts — a base model from the Hugging Face Hub: its files come through the one Hub client (hub-client.ts:
// the shared HF cache, resumed and checksummed downloads, HF_TOKEN from the environment or .env), and the folder the
// engine reads, <store>/hub/<org>/<name>/<commit>/, holds exactly the files a model folder needs, hard-linked from
// the cache's blobs (copied where the store is on another filesystem). A cache snapshot may hold more (README,
// original/, onnx/ that Python downloaded); the engine and the fingerprint see only these.
import { existsSync, mkdirSync, promises as fsp, realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { snapshot, type HubEnv } from "./hub-client";

// A line of progress for people (the stage's log).
type Log = (line: string) => void;

// Files a model folder needs; other repo files (README, onnx, original/ …) are skipped.
const WANTED = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)$/;

export function hubModelDir(store: string, repo: string, revision: string): string {
  return join(store, "hub", ...repo.split("/"), revision.replace(/[^A-Za-z0-9._-]/g, "_"));
}

// Returns the model folder for `commit` (resolve a branch first: hub-client.ts resolveRevision), building it from
// the cache (downloading what the cache lacks) when absent. The folder appears complete or not at all.
export async function ensureHubModel(store: string, workspaceRoot: string, repo: string, commit: string, log: Log): Promise<string> {
  const dir = hubModelDir(store, repo, commit);
  if (existsSync(join(dir, "config.json"))) return dir;
  const env: HubEnv = { workspaceRoot, log };
  const snap = await snapshot(env, { kind: "model", name: repo, field: "base" }, commit, (p) => WANTED.test(p));
  if (!snap.files.some((f) => f.path === "config.json")) throw new Error(`base ${repo}@${commit}: the repo has no config.json`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    for (const f of snap.files) {
      const dest = join(tmp, f.path);
      mkdirSync(dirname(dest), { recursive: true });
      const blob = realpathSync(f.local);
      try { await fsp.link(blob, dest); } catch { await fsp.copyFile(blob, dest); }
    }
    await fsp.rename(tmp, dir);
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return dir;
}
