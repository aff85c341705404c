// fake-hub-files.ts — a local Hugging Face Hub (node:http) serving the read routes the plugin's Hub client
// (plugins/nx-finetune/src/hub-client.ts, through @huggingface/hub) uses, the way the Hub answers them:
//   GET /api/{models|datasets}/{org}/{name}/revision/{rev}    {sha, siblings}            (modelInfo / datasetInfo)
//   GET /api/{models|datasets}/{org}/{name}/tree/{rev}?…       [{type, path, size, oid, lfs?}]  (listFiles)
//   GET /[datasets/]{org}/{name}/resolve/{rev}/{path}          the bytes; Range: bytes=N- → 206
// A repo may be gated (its token required: 401 otherwise). Faults for the tests: `truncate` sends half of a file
// then drops the connection; `corrupt` serves other bytes of the same length. Every request is recorded.
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeRepo {
  kind: "model" | "dataset";
  name: string;                                    // "org/name"
  refs: Record<string, string>;                    // branch or tag → commit
  commits: Record<string, Record<string, { bytes: Buffer; lfs?: boolean }>>;   // commit → path → file
  token?: string;                                  // gated: this bearer token is required
}

export interface FakeRequest { method: string; url: string; range?: string; auth?: string }

export interface FakeHub {
  url: string;
  requests: FakeRequest[];
  truncate: Set<string>;   // "<commit>/<path>": the next download of it breaks off half way (then the fault clears)
  corrupt: Set<string>;    // "<commit>/<path>": downloads of it serve other bytes
  close(): Promise<void>;
}

export const gitBlobId = (bytes: Buffer) => createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
export const sha256 = (bytes: Buffer) => createHash("sha256").update(bytes).digest("hex");

export async function startFakeHub(repos: FakeRepo[]): Promise<FakeHub> {
  const requests: FakeRequest[] = [];
  const truncate = new Set<string>(), corrupt = new Set<string>();
  const find = (kind: string, name: string) => repos.find((r) => r.kind === kind && r.name === name);
  const commitOf = (repo: FakeRepo, rev: string) => (repo.commits[rev] ? rev : repo.refs[rev]);
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    requests.push({ method: req.method ?? "GET", url: req.url ?? "", range: req.headers.range, auth: req.headers.authorization });
    const json = (status: number, body: unknown) => { res.statusCode = status; res.setHeader("content-type", "application/json"); res.end(JSON.stringify(body)); };
    const path = decodeURIComponent(url.pathname);
    let m = /^\/api\/(models|datasets)\/([^/]+\/[^/]+)\/(revision|tree)\/(.+?)\/?$/.exec(path);
    let kind: string, name: string, rev: string, route: string, file = "";
    if (m) { kind = m[1].slice(0, -1); name = m[2]; route = m[3]; rev = m[4]; }
    else if ((m = /^\/(datasets\/)?([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40}|[^/]+)\/(.+)$/.exec(path))) { kind = m[1] ? "dataset" : "model"; name = m[2]; route = "resolve"; rev = m[3]; file = m[4]; }
    else return json(404, { error: "no such route" });
    const repo = find(kind, name);
    if (!repo) return json(404, { error: "Repository not found" });
    if (repo.token && req.headers.authorization !== `Bearer ${repo.token}`) return json(401, { error: "Access to this repo is restricted" });
    const commit = commitOf(repo, rev);
    if (!commit) return json(404, { error: "Revision not found" });
    const files = repo.commits[commit];
    if (route === "revision") {
      return json(200, { id: repo.name, sha: commit, siblings: Object.keys(files).map((rfilename) => ({ rfilename })) });
    }
    if (route === "tree") {   // recursive
      return json(200, Object.entries(files).map(([p, f]) => {
        const pointer = Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(f.bytes)}\nsize ${f.bytes.length}\n`);
        return f.lfs
          ? { type: "file", path: p, size: f.bytes.length, oid: gitBlobId(pointer), lfs: { oid: sha256(f.bytes), size: f.bytes.length, pointerSize: pointer.length } }
          : { type: "file", path: p, size: f.bytes.length, oid: gitBlobId(f.bytes) };
      }));
    }
    const f = files[file];
    if (!f) return json(404, { error: "Entry not found" });
    const key = `${commit}/${file}`;
    let bytes = f.bytes;
    if (corrupt.has(key)) bytes = Buffer.from(bytes.map((b) => b ^ 0x5a));
    let start = 0;
    const r = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (r) start = Number(r[1]);
    if (start > bytes.length) { res.statusCode = 416; return res.end(); }
    res.statusCode = r ? 206 : 200;
    res.setHeader("content-length", String(bytes.length - start));
    if (r) res.setHeader("content-range", `bytes ${start}-${bytes.length - 1}/${bytes.length}`);
    if (truncate.has(key)) {
      truncate.delete(key);
      res.write(bytes.subarray(start, start + Math.floor((bytes.length - start) / 2)));
      setTimeout(() => res.socket?.destroy(), 50);
      return;
    }
    res.end(bytes.subarray(start));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests, truncate, corrupt,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}
