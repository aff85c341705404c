// hub-model.ts — a base model from the Hugging Face Hub, downloaded once into <store>/hub/<org>/<name>/<revision>/.
// HF_TOKEN comes from the environment or the workspace's .env (dotenv); it is sent only as an Authorization
// header — never logged, never part of a hash, a job file or an artifact.
import { existsSync, mkdirSync, readFileSync, promises as fsp, createWriteStream } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

// A line of progress for people (the stage's log); declared here so this module imports nothing of the stages.
type Log = (line: string) => void;

// Files a model folder needs; other repo files (README, onnx, original/ …) are skipped.
const WANTED = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)$/;

export function hubModelDir(store: string, repo: string, revision: string): string {
  return join(store, "hub", ...repo.split("/"), revision.replace(/[^A-Za-z0-9._-]/g, "_"));
}

export function hfToken(workspaceRoot: string): string | undefined {
  if (process.env.HF_TOKEN) return process.env.HF_TOKEN;
  const envFile = join(workspaceRoot, ".env");
  if (!existsSync(envFile)) return undefined;
  // dotenv.parse reads the file without touching process.env (so the token can't leak into child processes).
  const { parse } = require("dotenv") as typeof import("dotenv");
  return parse(readFileSync(envFile)).HF_TOKEN || undefined;
}

// The commit a revision names. A commit sha is itself; a branch or tag is resolved through the Hub API and
// remembered in <store>/hub/<org>/<name>/refs/<revision> (as the HF cache does), which is what offline runs use.
// When a branch has moved since it was last resolved, the log says so: the base stage pins the commit in its
// manifest, so everything downstream is keyed to the exact weights.
export async function resolveHubRevision(store: string, workspaceRoot: string, repo: string, revision: string, log: Log): Promise<string> {
  if (/^[0-9a-f]{40}$/.test(revision)) return revision;
  const refFile = join(store, "hub", ...repo.split("/"), "refs", revision.replace(/[^A-Za-z0-9._-]/g, "_"));
  const previous = existsSync(refFile) ? readFileSync(refFile, "utf8").trim() : undefined;
  const where = `${repo}@${revision}`;
  const endpoint = (process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/$/, "");
  if (process.env.HF_HUB_OFFLINE === "1") {
    if (previous) return previous;
    throw new Error(`base ${where}: HF_HUB_OFFLINE=1 and the revision was never resolved to a commit here; run once online or give base.revision as a commit sha`);
  }
  const token = hfToken(workspaceRoot);
  let res: Response;
  try {
    res = await fetch(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  } catch (e) {
    if (previous) { log(`note: cannot reach ${endpoint}; using ${where} as resolved earlier, commit ${previous}`); return previous; }
    throw new Error(`cannot reach ${endpoint} to resolve base ${where} (offline?): ${(e as Error).cause ?? (e as Error).message}`);
  }
  if (res.status === 401 || res.status === 403) throw new Error(`base ${where}: access denied by ${endpoint} (HTTP ${res.status}); gated or private models need HF_TOKEN in the environment or in .env`);
  if (res.status === 404) throw new Error(`base ${where}: not found on ${endpoint} (check base.hub and base.revision)`);
  if (!res.ok) throw new Error(`base ${where}: HTTP ${res.status} from ${endpoint}`);
  const sha = ((await res.json()) as { sha?: string }).sha;
  if (!sha || !/^[0-9a-f]{40}$/.test(sha)) return revision; // a Hub without commit ids: keep the name
  if (previous && previous !== sha) log(`note: ${where} moved from commit ${previous} to ${sha}; the base is now pinned to ${sha}`);
  else if (!previous) log(`base: ${where} is commit ${sha} (pinned in the base manifest)`);
  if (previous !== sha) {
    mkdirSync(join(refFile, ".."), { recursive: true });
    await fsp.writeFile(`${refFile}.tmp-${process.pid}`, sha + "\n");
    await fsp.rename(`${refFile}.tmp-${process.pid}`, refFile);
  }
  return sha;
}

// Returns the local folder, downloading it (atomically: temp folder + rename) when absent.
export async function ensureHubModel(store: string, workspaceRoot: string, repo: string, revision: string, log: Log): Promise<string> {
  const dir = hubModelDir(store, repo, revision);
  if (existsSync(join(dir, "config.json"))) return dir;
  const where = `${repo}@${revision}`;
  if (process.env.HF_HUB_OFFLINE === "1") {
    throw new Error(`base ${where} is not in the local cache (${dir}) and HF_HUB_OFFLINE=1; download it once online or set base to a local folder`);
  }
  const endpoint = (process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/$/, "");
  const token = hfToken(workspaceRoot);
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const get = async (url: string) => {
    let res: Response;
    try {
      res = await fetch(url, { headers, redirect: "follow" });
    } catch (e) {
      throw new Error(`cannot reach ${endpoint} to download base ${where} (offline?): ${(e as Error).cause ?? (e as Error).message}. ` +
        `Download it once with network access (it is cached in ${dir}) or set base to a local folder.`);
    }
    if (res.status === 401 || res.status === 403) throw new Error(`base ${where}: access denied by ${endpoint} (HTTP ${res.status}); gated or private models need HF_TOKEN in the environment or in .env`);
    if (res.status === 404) throw new Error(`base ${where}: not found on ${endpoint} (check base.hub and base.revision)`);
    if (!res.ok) throw new Error(`base ${where}: HTTP ${res.status} from ${endpoint}`);
    return res;
  };
  const info = (await (await get(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`)).json()) as { siblings?: Array<{ rfilename: string }> };
  const files = (info.siblings ?? []).map((s) => s.rfilename).filter((f) => WANTED.test(f));
  if (!files.includes("config.json")) throw new Error(`base ${where}: the repo has no config.json`);
  const tmp = `${dir}.tmp-${process.pid}`;
  await fsp.rm(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    for (const [i, f] of files.entries()) {
      log(`downloading ${where} ${f} (${i + 1}/${files.length})`);
      const res = await get(`${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${f}`);
      await pipeline(Readable.fromWeb(res.body as any), createWriteStream(join(tmp, f)));
    }
    await fsp.rename(tmp, dir);
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return dir;
}
