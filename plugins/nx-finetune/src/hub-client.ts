// hub-client.ts — the plugin's one Hugging Face Hub client. Base models (hub-model.ts, the base stage) and Hub
// datasets (data/hub-dataset.ts, the dataset stage) are resolved, listed and downloaded here, on @huggingface/hub
// (revision info, the file tree with each LFS file's sha256, the cache layout), into the cache huggingface_hub and
// transformers share — HF_HUB_CACHE, else $HF_HOME/hub, else ($XDG_CACHE_HOME or ~/.cache)/huggingface/hub:
//   <cache>/<models|datasets>--org--name/refs/<branch or tag>   the commit it named when last resolved
//   <cache>/<…>/blobs/<id>                                      a file's bytes, once per content; id = the sha256 of
//                                                                an LFS file, the git blob id of a small one
//   <cache>/<…>/snapshots/<commit>/<path>                       → ../../blobs/<id> (relative symlink)
// so a model or dataset Python already downloaded is not downloaded again, and the other way round.
//
// Downloads resume: bytes go to blobs/<id>.incomplete (as huggingface_hub names them; one writer per blob, through
// blobs/<id>.lock) and a later run continues that file with an HTTP Range request. A file becomes a blob only once
// checked — an LFS file against the sha256 the Hub lists, a small file against its git blob id (sha1 of
// "blob <size>\0" + bytes) — and a mismatch is an error naming the file and both digests, with the partial bytes
// dropped: nothing unverified is ever cached.
//
// A branch or tag is resolved to its commit on every online run and remembered in refs/; the caller pins the commit
// (base and dataset manifests), and the log says when the branch has moved since. HF_HUB_OFFLINE=1 never touches the
// network: refs and snapshots only. The token — HF_TOKEN (or HUGGING_FACE_HUB_TOKEN) in the environment, else HF_TOKEN
// in the workspace's .env — goes only into Authorization headers: never logged, hashed or written anywhere.
// HF_ENDPOINT replaces https://huggingface.co.
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync, statSync, promises as fsp } from "node:fs";
import { dirname, join, relative } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";

// A line of progress for people (the stage's log).
type Log = (line: string) => void;

export type RepoKind = "model" | "dataset";

export interface HubRepo {
  kind: RepoKind;
  name: string;   // "org/name"
  field: string;  // the recipe field that names it, for errors ("base.hub", "data.hub")
}

export interface HubEnv {
  workspaceRoot: string; // where .env is read from
  log: Log;
  cacheDir?: string;     // the HF hub cache; default hubCacheDir()
}

// One file of a repo at a commit, as the Hub's tree lists it.
export interface RepoFile {
  path: string;
  size: number;
  blobId: string;   // the blob's name in the cache: lfs.oid (sha256) for LFS files, else the git blob id
  sha256?: string;  // LFS files only
}

export function hubEndpoint(): string {
  return (process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, "");
}

export function hubToken(workspaceRoot: string): string | undefined {
  const fromEnv = process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN;
  if (fromEnv) return fromEnv;
  const envFile = join(workspaceRoot, ".env");
  if (!existsSync(envFile)) return undefined;
  // dotenv.parse reads the file without touching process.env (so the token can't leak into child processes).
  const { parse } = require("dotenv") as typeof import("dotenv");
  return parse(readFileSync(envFile)).HF_TOKEN || undefined;
}

const hubLib = () => import("@huggingface/hub");

// The shared cache folder (huggingface_hub's rules, through @huggingface/hub's getHFHubCachePath).
export async function hubCacheDir(): Promise<string> {
  return (await hubLib()).getHFHubCachePath();
}

async function repoDir(env: HubEnv, repo: HubRepo): Promise<string> {
  const cache = env.cacheDir ?? (await hubCacheDir());
  return join(cache, (await hubLib()).getRepoFolderName({ name: repo.name, type: repo.kind }));
}

// The local folder of a commit's files (present or not).
export async function snapshotDir(env: HubEnv, repo: HubRepo, commit: string): Promise<string> {
  return join(await repoDir(env, repo), "snapshots", commit);
}

const isCommit = (rev: string) => /^[0-9a-f]{40}$/.test(rev);
const offline = () => process.env.HF_HUB_OFFLINE === "1";
const kindName = (repo: HubRepo) => (repo.kind === "dataset" ? "dataset" : "model");

function credentials(env: HubEnv, repo: HubRepo): { accessToken?: string } {
  const token = hubToken(env.workspaceRoot);
  if (!token) return {};
  if (!token.startsWith("hf_")) throw new Error(`${repo.field} ${repo.name}: HF_TOKEN must be a Hugging Face access token (hf_…)`);
  return { accessToken: token };
}

// Runs one Hub API call; its failures become errors that say what to do.
async function api<T>(env: HubEnv, repo: HubRepo, revision: string, call: () => Promise<T>): Promise<T> {
  const where = `${repo.field} ${repo.name}@${revision}`;
  try {
    return await call();
  } catch (e: any) {
    const status: number | undefined = e?.statusCode;
    if (status === 401 || status === 403) {
      throw new Error(`${where}: access denied by ${hubEndpoint()} (HTTP ${status}); gated or private ${kindName(repo)}s need HF_TOKEN in the environment or in .env`);
    }
    if (status === 404) throw new Error(`${where}: not found on ${hubEndpoint()} (check ${repo.field} and its revision)`);
    if (status !== undefined) throw new Error(`${where}: HTTP ${status} from ${hubEndpoint()}`);
    if (e instanceof TypeError || e?.cause) {
      throw new Error(`cannot reach ${hubEndpoint()} for ${where} (offline?): ${e.cause?.code ?? e.cause?.message ?? e.message}. ` +
        `Run once with network access (files are cached in ${await repoDir(env, repo)}) or use local files`);
    }
    throw e;
  }
}

// The commit `revision` names. A commit is itself; a branch or tag is asked of the Hub and remembered in refs/,
// which offline runs (and unreachable Hubs) fall back to.
export async function resolveRevision(env: HubEnv, repo: HubRepo, revision: string): Promise<string> {
  if (isCommit(revision)) return revision;
  if (revision.split("/").includes("..")) throw new Error(`${repo.field} ${repo.name}: invalid revision ${JSON.stringify(revision)}`);
  const refFile = join(await repoDir(env, repo), "refs", revision);
  const previous = existsSync(refFile) ? readFileSync(refFile, "utf8").trim() : undefined;
  const where = `${repo.name}@${revision}`;
  if (offline()) {
    if (previous) return previous;
    throw new Error(`${repo.field} ${where}: HF_HUB_OFFLINE=1 and the revision was never resolved to a commit here; run once online or give the revision as a commit sha`);
  }
  const hub = await hubLib();
  const args = { name: repo.name, revision, hubUrl: hubEndpoint(), ...credentials(env, repo), additionalFields: ["sha"] as any };
  let sha: string | undefined;
  try {
    const info: any = await api(env, repo, revision, () => (repo.kind === "model" ? hub.modelInfo(args) : hub.datasetInfo(args)));
    sha = info.sha;
  } catch (e) {
    if (previous && /cannot reach/.test((e as Error).message)) {
      env.log(`note: cannot reach ${hubEndpoint()}; using ${where} as resolved earlier, commit ${previous}`);
      return previous;
    }
    throw e;
  }
  if (!sha || !isCommit(sha)) return revision;   // a Hub without commit ids: keep the name
  if (previous && previous !== sha) env.log(`note: ${where} moved from commit ${previous} to ${sha}; pinned to ${sha} now`);
  else if (!previous) env.log(`${repo.field}: ${where} is commit ${sha} (pinned in the manifest)`);
  if (previous !== sha) await writeAtomic(refFile, sha);
  return sha;
}

// Every file of the repo at `commit` (online: the Hub's tree; offline: what the local snapshot holds).
export async function listRepoFiles(env: HubEnv, repo: HubRepo, commit: string): Promise<RepoFile[]> {
  if (offline()) {
    const snap = await snapshotDir(env, repo, commit);
    if (!existsSync(snap)) throw new Error(`${repo.field} ${repo.name}@${commit} is not in the local cache (${snap}) and HF_HUB_OFFLINE=1; download it once online`);
    return walk(snap).map((p) => ({ path: p, size: statSync(join(snap, p)).size, blobId: "" }));
  }
  const hub = await hubLib();
  return api(env, repo, commit, async () => {
    const out: RepoFile[] = [];
    for await (const f of hub.listFiles({ repo: { type: repo.kind, name: repo.name }, revision: commit, recursive: true, hubUrl: hubEndpoint(), ...credentials(env, repo) })) {
      if (f.type !== "file") continue;
      if (!f.lfs && !f.oid) throw new Error(`${repo.field} ${repo.name}@${commit}: the Hub lists ${f.path} without a blob id`);
      out.push({ path: f.path, size: f.lfs?.size ?? f.size, blobId: f.lfs?.oid ?? f.oid!, ...(f.lfs ? { sha256: f.lfs.oid } : {}) });
    }
    return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  });
}

function walk(root: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(root, prefix), { withFileTypes: true })) {
    const p = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...walk(root, p));
    else out.push(p);
  }
  return out.sort();
}

// The local path of `file` at `commit` in the snapshot, downloading (or resuming) it first when needed.
export async function downloadFile(env: HubEnv, repo: HubRepo, commit: string, file: RepoFile): Promise<string> {
  const base = await repoDir(env, repo);
  const pointer = join(base, "snapshots", commit, file.path);
  if (existsSync(pointer)) return pointer;
  if (offline()) throw new Error(`${repo.field} ${repo.name}@${commit}: ${file.path} is not in the local cache and HF_HUB_OFFLINE=1`);
  if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(file.blobId)) throw new Error(`${repo.field} ${repo.name}: unexpected blob id ${JSON.stringify(file.blobId)} for ${file.path}`);
  const blob = join(base, "blobs", file.blobId);
  if (!existsSync(blob)) await withBlobLock(blob, () => (existsSync(blob) ? Promise.resolve() : fetchBlob(env, repo, commit, file, blob)));
  mkdirSync(dirname(pointer), { recursive: true });
  const tmp = `${pointer}.tmp-${process.pid}`;
  await fsp.rm(tmp, { force: true });
  await fsp.symlink(relative(dirname(pointer), blob), tmp);
  await fsp.rename(tmp, pointer);
  return pointer;
}

// One writer per blob across processes (Nx runs recipes in parallel; two may share a base): blobs/<id>.lock holds
// the writer's pid, created exclusively; others wait for it, and a lock whose process is gone is taken over.
async function withBlobLock(blob: string, work: () => Promise<void>): Promise<void> {
  const lock = `${blob}.lock`;
  mkdirSync(dirname(blob), { recursive: true });
  for (;;) {
    try {
      await fsp.writeFile(lock, String(process.pid), { flag: "wx" });
      break;
    } catch (e: any) {
      if (e?.code !== "EEXIST") throw e;
      const holder = Number(await fsp.readFile(lock, "utf8").catch(() => ""));
      let alive = false;
      try { if (holder > 0) { process.kill(holder, 0); alive = true; } } catch { alive = false; }
      if (!alive) { await fsp.rm(lock, { force: true }); continue; }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  try {
    await work();
  } finally {
    await fsp.rm(lock, { force: true });
  }
}

async function fetchBlob(env: HubEnv, repo: HubRepo, commit: string, file: RepoFile, blob: string): Promise<void> {
  const incomplete = `${blob}.incomplete`;
  mkdirSync(dirname(blob), { recursive: true });
  let have = existsSync(incomplete) ? statSync(incomplete).size : 0;
  if (have > file.size) { await fsp.rm(incomplete, { force: true }); have = 0; }
  const url = `${hubEndpoint()}/${repo.kind === "dataset" ? "datasets/" : ""}${repo.name}/resolve/${commit}/${file.path.split("/").map(encodeURIComponent).join("/")}`;
  const where = `${repo.field} ${repo.name}@${commit}: ${file.path}`;
  if (have < file.size) {
    const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;
    env.log(have > 0 ? `downloading ${repo.name} ${file.path}: resuming at ${mb(have)} of ${mb(file.size)}` : `downloading ${repo.name} ${file.path} (${mb(file.size)})`);
    const { accessToken } = credentials(env, repo);
    const headers: Record<string, string> = { ...(accessToken ? { authorization: `Bearer ${accessToken}` } : {}), ...(have > 0 ? { range: `bytes=${have}-` } : {}) };
    let res: Response;
    try {
      res = await fetch(url, { headers, redirect: "follow" });
    } catch (e) {
      throw new Error(`cannot reach ${hubEndpoint()} for ${where} (offline?): ${(e as any).cause?.code ?? (e as Error).message}; ${have > 0 ? "the next run resumes" : "run again with network access"}`);
    }
    if (res.status === 401 || res.status === 403) throw new Error(`${where}: access denied by ${hubEndpoint()} (HTTP ${res.status}); gated or private ${kindName(repo)}s need HF_TOKEN in the environment or in .env`);
    if (res.status === 416 && have > 0) { await fsp.rm(incomplete, { force: true }); return fetchBlob(env, repo, commit, file, blob); }   // a Range the server refuses: start over
    if (!res.ok || !res.body) throw new Error(`${where}: HTTP ${res.status} from ${hubEndpoint()}`);
    const append = res.status === 206 && have > 0;   // 200: the server sent the whole file again
    try {
      await pipeline(Readable.fromWeb(res.body as any), createWriteStream(incomplete, { flags: append ? "a" : "w" }));
    } catch (e) {
      throw new Error(`${where}: the download broke off at ${statSync(incomplete).size} of ${file.size} bytes (${(e as Error).message}); the next run resumes it`);
    }
  }
  const size = statSync(incomplete).size;
  if (size !== file.size) {
    if (size > file.size) await fsp.rm(incomplete, { force: true });
    throw new Error(`${where}: received ${size} of ${file.size} bytes${size < file.size ? "; the next run resumes the download" : ""}`);
  }
  const [algo, got, want] = file.sha256
    ? ["sha256", await digest("sha256", incomplete), file.sha256]
    : ["git blob id", await digest("sha1", incomplete, `blob ${file.size}\0`), file.blobId];
  if (got !== want) {
    await fsp.rm(incomplete, { force: true });
    throw new Error(`${where}: ${algo} ${got} does not match the Hub's ${want}; the download was dropped (nothing cached), run again`);
  }
  await fsp.rename(incomplete, blob);
}

async function digest(algo: "sha256" | "sha1", path: string, prefix = ""): Promise<string> {
  const h = createHash(algo);
  if (prefix) h.update(prefix);
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest("hex");
}

async function writeAtomic(path: string, text: string): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  await fsp.writeFile(tmp, text);
  await fsp.rename(tmp, path);
}

// The files of `repo` at `revision` that `wanted` accepts, downloaded (or found) in the cache: the commit the
// revision names and each file's local path, in path order.
export async function snapshot(env: HubEnv, repo: HubRepo, revision: string, wanted: (path: string) => boolean):
    Promise<{ commit: string; files: Array<{ path: string; local: string }> }> {
  const commit = await resolveRevision(env, repo, revision);
  const listed = (await listRepoFiles(env, repo, commit)).filter((f) => wanted(f.path));
  const files: Array<{ path: string; local: string }> = [];
  for (const f of listed) files.push({ path: f.path, local: await downloadFile(env, repo, commit, f) });
  return { commit, files };
}
