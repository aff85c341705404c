// fake-hub.ts — a local stand-in for the Hugging Face Hub on 127.0.0.1, implementing the endpoints
// @huggingface/hub's createRepo and commit (plain LFS transfer) call, the way the Hub answers them:
//   POST /api/repos/create                                  → 200 {url} (409 when the repo exists)
//   POST /api/models/<org>/<name>/preupload/<branch>        → {files: [{path, uploadMode: "lfs" | "regular"}]}
//   POST /<org>/<name>.git/info/lfs/objects/batch           → basic transfer, an upload href per missing object
//   PUT  /lfs-upload/<oid>                                  → stores the body after checking its sha256 is the oid
//   POST /api/models/<org>/<name>/commit/<branch>           → ndjson header + file/lfsFile lines → {commitOid, commitUrl}
// Every API call must carry `Authorization: Bearer <token>`; what the server saw is kept for the test to check.
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface FakeHub {
  url: string;
  repos: Map<string, { private: boolean; files: Map<string, Buffer>; commits: string[] }>;
  requests: Array<{ method: string; path: string; authorization?: string }>;
  close(): Promise<void>;
}

// What the real Hub stores through LFS: binary weights and GGUF files (and anything over 10 MB).
const isLfs = (path: string, size: number) => /\.(safetensors|gguf|bin)$/.test(path) || size > 10_000_000;

export async function startFakeHub(token: string): Promise<FakeHub> {
  const repos: FakeHub["repos"] = new Map();
  const requests: FakeHub["requests"] = [];
  const lfs = new Map<string, Buffer>();
  let url = "";
  const body = (req: IncomingMessage) => new Promise<Buffer>((res, rej) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c)).on("end", () => res(Buffer.concat(chunks))).on("error", rej);
  });
  const server: Server = createServer(async (req, res) => {
    const path = new URL(req.url!, "http://x").pathname;
    requests.push({ method: req.method!, path, authorization: req.headers.authorization });
    const send = (status: number, value: unknown) => { res.writeHead(status, { "content-type": "application/json" }); res.end(JSON.stringify(value)); };
    const data = await body(req);
    if (path.startsWith("/lfs-upload/") && req.method === "PUT") {
      const oid = path.split("/").pop()!;
      if (createHash("sha256").update(data).digest("hex") !== oid) return send(400, { error: "sha256 mismatch" });
      lfs.set(oid, data);
      res.writeHead(200); return res.end();
    }
    if (req.headers.authorization !== `Bearer ${token}`) return send(401, { error: "Invalid credentials in Authorization header" });
    let m: RegExpExecArray | null;
    if (path === "/api/repos/create" && req.method === "POST") {
      const j = JSON.parse(data.toString());
      const id = `${j.organization}/${j.name}`;
      if (repos.has(id)) return send(409, { error: "You already created this model repo", url: `${url}/${id}` });
      repos.set(id, { private: j.visibility === "private" || j.private === true, files: new Map(), commits: [] });
      return send(200, { url: `${url}/${id}`, name: id });
    }
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/preupload\/([^/]+)$/.exec(path)) && req.method === "POST") {
      if (!repos.has(m[1])) return send(404, { error: "Repository not found" });
      const j = JSON.parse(data.toString());
      return send(200, { files: j.files.map((f: any) => ({ path: f.path, uploadMode: isLfs(f.path, f.size) ? "lfs" : "regular", shouldIgnore: false })) });
    }
    if ((m = /^\/([^/]+\/[^/]+)\.git\/info\/lfs\/objects\/batch$/.exec(path)) && req.method === "POST") {
      if (!repos.has(m[1])) return send(404, { error: "Repository not found" });
      const j = JSON.parse(data.toString());
      if (!j.transfers.includes("basic")) return send(422, { error: "basic transfer required" });
      return send(200, { transfer: "basic", objects: j.objects.map((o: any) => ({
        oid: o.oid, size: o.size, ...(lfs.has(o.oid) ? {} : { actions: { upload: { href: `${url}/lfs-upload/${o.oid}` } } }),
      })) });
    }
    if ((m = /^\/api\/models\/([^/]+\/[^/]+)\/commit\/([^/]+)$/.exec(path)) && req.method === "POST") {
      const repo = repos.get(m[1]);
      if (!repo) return send(404, { error: "Repository not found" });
      const lines = data.toString().split("\n").filter(Boolean).map((l) => JSON.parse(l));
      if (lines[0]?.key !== "header") return send(400, { error: "first line must be the header" });
      for (const { key, value } of lines.slice(1)) {
        if (key === "file") repo.files.set(value.path, Buffer.from(value.content, value.encoding === "base64" ? "base64" : "utf8"));
        else if (key === "lfsFile") {
          const blob = lfs.get(value.oid);
          if (!blob || blob.length !== value.size) return send(400, { error: `LFS object ${value.oid} for ${value.path} was not uploaded` });
          repo.files.set(value.path, blob);
        } else return send(400, { error: `unknown operation ${key}` });
      }
      const oid = createHash("sha1").update(data).digest("hex");
      repo.commits.push(lines[0].value.summary);
      return send(200, { commitOid: oid, commitUrl: `${url}/${m[1]}/commit/${oid}` });
    }
    send(404, { error: `fake hub: no route for ${req.method} ${path}` });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, repos, requests, close: () => new Promise((r) => server.close(() => r())) };
}
