// Base models from the Hub: downloaded once into the store, HF_TOKEN from .env sent as a header and never shown,
// clear errors for offline / denied / missing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingMessage } from "node:http";
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { ensureHubModel, hfToken, hubModelDir, resolveHubRevision } from "../../plugins/nx-finetune/src/hub-model";

const TOKEN = "hf_secretsecretsecret";

async function fakeHub(requests: IncomingMessage[]) {
  const server = createServer((req, res) => {
    requests.push(req);
    if (req.headers.authorization !== `Bearer ${TOKEN}`) { res.statusCode = 401; return res.end("no"); }
    if (req.url === "/api/models/org/tiny/revision/abc123") {
      res.setHeader("content-type", "application/json");
      return res.end(JSON.stringify({ siblings: [{ rfilename: "config.json" }, { rfilename: "model.safetensors" }, { rfilename: "README.md" }, { rfilename: "tokenizer.json" }] }));
    }
    const m = /^\/org\/tiny\/resolve\/abc123\/(.+)$/.exec(req.url ?? "");
    if (m) return res.end(`content of ${m[1]}`);
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

test("downloads the model files once, with the token from .env, never logging it", async (t) => {
  const ws = mkdtempSync(join(tmpdir(), "nxft-hub-")), store = join(ws, "store");
  writeFileSync(join(ws, ".env"), `HF_TOKEN=${TOKEN}\n`);
  const requests: IncomingMessage[] = [];
  const { server, url } = await fakeHub(requests);
  t.after(() => server.close());
  const saved = { endpoint: process.env.HF_ENDPOINT, token: process.env.HF_TOKEN };
  process.env.HF_ENDPOINT = url;
  delete process.env.HF_TOKEN;
  t.after(() => { process.env.HF_ENDPOINT = saved.endpoint; if (saved.token) process.env.HF_TOKEN = saved.token; });

  const logs: string[] = [];
  const dir = await ensureHubModel(store, ws, "org/tiny", "abc123", (l) => logs.push(l));
  assert.equal(dir, hubModelDir(store, "org/tiny", "abc123"));
  assert.deepEqual(readdirSync(dir).sort(), ["config.json", "model.safetensors", "tokenizer.json"]);
  assert.equal(readFileSync(join(dir, "model.safetensors"), "utf8"), "content of model.safetensors");
  assert.equal(process.env.HF_TOKEN, undefined, ".env is read without exporting the token to child processes");
  assert.ok(!logs.join("\n").includes(TOKEN));
  const n = requests.length;
  await ensureHubModel(store, ws, "org/tiny", "abc123", () => {});
  assert.equal(requests.length, n, "second call is served from the store");
  assert.ok(!readdirSync(join(store, "hub", "org")).some((f) => f.includes(".tmp-")));
});

test("errors: denied without a token, unknown revision, offline", async (t) => {
  const ws = mkdtempSync(join(tmpdir(), "nxft-hub-")), store = join(ws, "store");
  const { server, url } = await fakeHub([]);
  t.after(() => server.close());
  const saved = { endpoint: process.env.HF_ENDPOINT, token: process.env.HF_TOKEN, offline: process.env.HF_HUB_OFFLINE };
  t.after(() => { process.env.HF_ENDPOINT = saved.endpoint; process.env.HF_TOKEN = saved.token ?? ""; if (!saved.token) delete process.env.HF_TOKEN; if (saved.offline === undefined) delete process.env.HF_HUB_OFFLINE; });
  process.env.HF_ENDPOINT = url;
  delete process.env.HF_TOKEN;
  assert.equal(hfToken(ws), undefined);
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", "abc123", () => {}), /access denied .*HTTP 401.*HF_TOKEN/);
  process.env.HF_TOKEN = TOKEN;
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", "nope", () => {}), /not found on .*check base.hub and base.revision/);
  process.env.HF_ENDPOINT = "http://127.0.0.1:1"; // nothing listens there
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", "abc123", () => {}), (e: Error) => /cannot reach .* \(offline\?\)/.test(e.message) && !e.message.includes(TOKEN));
  process.env.HF_HUB_OFFLINE = "1";
  await assert.rejects(ensureHubModel(store, ws, "org/tiny", "abc123", () => {}), /HF_HUB_OFFLINE=1/);
  assert.ok(!existsSync(hubModelDir(store, "org/tiny", "abc123")));
});

test("a branch revision is resolved to its commit, remembered for offline runs, and a move is noted", async (t) => {
  const ws = mkdtempSync(join(tmpdir(), "nxft-hub-")), store = join(ws, "store");
  let head = "a".repeat(40);
  const server = createServer((req, res) => {
    if (req.url === "/api/models/org/tiny/revision/main") {
      res.setHeader("content-type", "application/json");
      return res.end(JSON.stringify({ sha: head, siblings: [] }));
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => server.close());
  const saved = { endpoint: process.env.HF_ENDPOINT, offline: process.env.HF_HUB_OFFLINE };
  t.after(() => { process.env.HF_ENDPOINT = saved.endpoint; if (saved.offline === undefined) delete process.env.HF_HUB_OFFLINE; else process.env.HF_HUB_OFFLINE = saved.offline; });
  process.env.HF_ENDPOINT = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  delete process.env.HF_HUB_OFFLINE;

  const logs: string[] = [];
  assert.equal(await resolveHubRevision(store, ws, "org/tiny", "main", (l) => logs.push(l)), head);
  assert.match(logs.join("\n"), /org\/tiny@main is commit a{40} \(pinned in the base manifest\)/);
  const sha = "b".repeat(40);
  assert.equal(await resolveHubRevision(store, ws, "org/tiny", sha, () => assert.fail("a commit is not resolved")), sha);
  head = "c".repeat(40);
  assert.equal(await resolveHubRevision(store, ws, "org/tiny", "main", (l) => logs.push(l)), head);
  assert.match(logs.at(-1)!, /note: org\/tiny@main moved from commit a{40} to c{40}/);
  process.env.HF_HUB_OFFLINE = "1";
  assert.equal(await resolveHubRevision(store, ws, "org/tiny", "main", () => {}), head, "offline: the commit resolved last");
  await assert.rejects(resolveHubRevision(store, ws, "org/tiny", "dev", () => {}), /HF_HUB_OFFLINE=1 and the revision was never resolved/);
});
