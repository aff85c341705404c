// hub-dataset.ts — fetches a Hugging Face Hub dataset split once into a local cache and returns its local files.
// Files are chosen from the repo listing at the requested revision (data files whose path names the split, e.g.
// train.jsonl, data/train-00000-of-00001.parquet); when there are none, the datasets-server's parquet conversion
// (refs/convert/parquet) is used. HF_TOKEN (from the environment or the workspace's .env, as for base models: hub-model.ts hfToken) is sent when
// given (gated/private datasets). HF_HUB_OFFLINE=1 never touches
// the network. Later runs read the cache only. HF_ENDPOINT (as in huggingface_hub) replaces https://huggingface.co.
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "./fsutil";

export interface HubSpec {
  hub: string; // "org/name"
  split?: string;
  revision?: string;
  config?: string;
}

export interface HubFiles {
  files: string[]; // local paths, in a stable order
  label: string[]; // "hub:org/name@sha/path" for each file (manifests)
}

const DATA_EXTS = [".parquet", ".jsonl", ".json", ".csv"];

const endpoint = () => (process.env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, "");

function headers(token: string | undefined): Record<string, string> {
  const t = token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  return t ? { authorization: `Bearer ${t}` } : {};
}

async function getJson(url: string, token: string | undefined): Promise<any> {
  const res = await fetch(url, { headers: headers(token) });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}${res.status === 401 || res.status === 403 ? " (set HF_TOKEN for gated or private datasets)" : ""}`);
  return res.json();
}

async function download(url: string, dest: string, token: string | undefined): Promise<void> {
  const res = await fetch(url, { headers: headers(token), redirect: "follow" });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  const buf = new Uint8Array(await res.arrayBuffer());
  writeFileAtomic(dest, buf);
}

// Does `path` hold rows of `split` (by file or folder name)?
export function pathMatchesSplit(path: string, split: string, config: string): boolean {
  const lower = path.toLowerCase();
  if (!DATA_EXTS.some((e) => lower.endsWith(e))) return false;
  const parts = lower.split("/");
  if (config !== "default" && !parts.slice(0, -1).includes(config.toLowerCase())) return false;
  const name = parts[parts.length - 1];
  const s = split.toLowerCase();
  return parts.slice(0, -1).includes(s) || name === `${s}${name.slice(name.indexOf("."))}` || name.startsWith(`${s}-`) || name.startsWith(`${s}.`) || name.startsWith(`${s}_`);
}

export async function fetchHubDataset(spec: HubSpec, cacheRoot: string, token?: string): Promise<HubFiles> {
  const split = spec.split ?? "train";
  const revision = spec.revision ?? "main";
  const config = spec.config ?? "default";
  if (!/^[\w.-]+\/[\w.-]+$/.test(spec.hub)) throw new Error(`data: field "hub": expected "org/name", found ${JSON.stringify(spec.hub)}`);
  const dir = join(cacheRoot, spec.hub.replace("/", "--"), encodeURIComponent(revision), encodeURIComponent(config), encodeURIComponent(split));
  const index = join(dir, "files.json");
  if (existsSync(index)) {
    const saved = JSON.parse(readFileSync(index, "utf8")) as { files: string[]; label: string[] };
    if (saved.files.every((f) => existsSync(join(dir, f)))) return { files: saved.files.map((f) => join(dir, f)), label: saved.label };
  }
  const what = `hub dataset ${spec.hub} (config ${config}, split ${split}, revision ${revision})`;
  if (process.env.HF_HUB_OFFLINE === "1") {
    throw new Error(`${what} is not in the local cache ${dir} and HF_HUB_OFFLINE=1: run once with network access, or point data.path at local files`);
  }
  try {
    const info = await getJson(`${endpoint()}/api/datasets/${spec.hub}/revision/${encodeURIComponent(revision)}`, token);
    const sha: string = info.sha ?? revision;
    let remote: Array<{ url: string; label: string }> = (info.siblings ?? [])
      .map((s: any) => String(s.rfilename))
      .filter((p: string) => pathMatchesSplit(p, split, config))
      .sort()
      .map((p: string) => ({ url: `${endpoint()}/datasets/${spec.hub}/resolve/${sha}/${p}`, label: `hub:${spec.hub}@${sha}/${p}` }));
    if (remote.length === 0) {
      const pq = await getJson(`https://datasets-server.huggingface.co/parquet?dataset=${encodeURIComponent(spec.hub)}`, token);
      remote = (pq.parquet_files ?? [])
        .filter((f: any) => f.split === split && (config === "default" ? true : f.config === config))
        .filter((f: any, _: number, all: any[]) => f.config === (config === "default" ? all[0].config : config))
        .map((f: any) => ({ url: String(f.url), label: `hub:${spec.hub}@refs/convert/parquet/${f.config}/${f.split}/${f.filename}` }))
        .sort((a: any, b: any) => (a.url < b.url ? -1 : 1));
    }
    if (remote.length === 0) throw new Error(`no data files for split "${split}"`);
    mkdirSync(dir, { recursive: true });
    const names: string[] = [];
    for (const [i, r] of remote.entries()) {
      const ext = DATA_EXTS.find((e) => r.url.toLowerCase().split("?")[0].endsWith(e)) ?? ".parquet";
      const name = `${String(i).padStart(5, "0")}${ext}`;
      await download(r.url, join(dir, name), token);
      names.push(name);
    }
    writeFileAtomic(index, JSON.stringify({ files: names, label: remote.map((r) => r.label) }, null, 2) + "\n");
    return { files: names.map((n) => join(dir, n)), label: remote.map((r) => r.label) };
  } catch (err) {
    throw new Error(`${what} is not in the local cache ${dir} and could not be downloaded (offline?): ${(err as Error).message}`);
  }
}
