// hub-dataset.ts — the data files of one split of a Hugging Face Hub dataset, through the plugin's one Hub client
// (hub-client.ts: the shared HF cache, resumed and checksummed downloads, HF_TOKEN from the environment or the
// workspace's .env for gated datasets, HF_HUB_OFFLINE, HF_ENDPOINT). The revision (default "main") is pinned to the
// commit it names now: the labels the dataset manifest records carry that commit, and the log notes when a branch
// has moved since it was last resolved. Files are chosen from the repo's tree at that commit (data files whose path
// names the split, e.g. train.jsonl, data/train-00000-of-00001.parquet); when there are none, from the Hub's
// parquet conversion of the dataset (the refs/convert/parquet branch: <config>/<split>/NNNN.parquet).
import { snapshot, type HubEnv, type HubRepo } from "../hub-client";

export interface HubSpec {
  hub: string; // "org/name"
  split?: string;
  revision?: string;
  config?: string;
}

export interface HubFiles {
  files: string[]; // local paths, in a stable order
  label: string[]; // "hub:org/name@<commit>/path" for each file (manifests)
  commit: string;  // the commit the files come from
}

const DATA_EXTS = [".parquet", ".jsonl", ".json", ".csv"];
const PARQUET_BRANCH = "refs/convert/parquet";

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

export async function fetchHubDataset(spec: HubSpec, env: HubEnv): Promise<HubFiles> {
  const split = spec.split ?? "train";
  const revision = spec.revision ?? "main";
  const config = spec.config ?? "default";
  if (!/^[\w.-]+\/[\w.-]+$/.test(spec.hub)) throw new Error(`data: field "hub": expected "org/name", found ${JSON.stringify(spec.hub)}`);
  const repo: HubRepo = { kind: "dataset", name: spec.hub, field: "data.hub" };
  const what = `hub dataset ${spec.hub} (config ${config}, split ${split}, revision ${revision})`;
  try {
    let got = await snapshot(env, repo, revision, (p) => pathMatchesSplit(p, split, config));
    if (got.files.length === 0) {
      // The parquet conversion: "default" means the first config folder (most datasets have only one).
      let first: string | undefined;
      got = await snapshot(env, repo, PARQUET_BRANCH, (p) => {
        if (!p.includes("/")) return false;   // .gitattributes, README.md
        const top = p.split("/")[0];
        first ??= top;
        return (config === "default" ? top === first : top === config) && p.endsWith(".parquet") && pathMatchesSplit(p, split, "default");
      });
    }
    if (got.files.length === 0) throw new Error(`no data files for split "${split}"`);
    return { files: got.files.map((f) => f.local), label: got.files.map((f) => `hub:${spec.hub}@${got.commit}/${f.path}`), commit: got.commit };
  } catch (err) {
    throw new Error(`${what}: ${(err as Error).message}`);
  }
}
