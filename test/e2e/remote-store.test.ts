// The remote content store against a real S3-compatible server (SeaweedFS `weed mini` on 127.0.0.1, built by
// test/support/install-seaweedfs.sh; .ci/run builds it in CI):
//   - blobs round-trip: parallel multipart upload, parallel ranged fetch, sha256-checked; a fetch interrupted
//     half-way resumes; an object whose bytes don't match its name is refused; read-only mode never writes;
//   - a new CI runner (an empty clone, the Nx cache folder restored by a cache step, an empty local store, the
//     remote store read-only) gets a fully cached `nx run demo:gguf`: every task a cache hit, the GGUF files present
//     with the first runner's bytes, nothing trained.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { blobPath, putFile } from "../../plugins/nx-finetune/src/store";
import { fetchBlob, fetchBlobs, remoteKey, remoteSize, remoteStore, uploadBlobs } from "../../plugins/nx-finetune/src/remote-store";
import { startS3Server, weedBinary, type S3Server } from "../support/s3-server";
import { cloneWorkspace, makeWorkspace, nxEnvironment, repoRoot, runNx, removeTestDirs, type NxEnv } from "./temp-workspace";

let root = "", engine = "";
let server: S3Server | undefined;
const weed = weedBinary();
const skip = weed ? false : process.env.CI ? false : "no SeaweedFS binary (test/support/install-seaweedfs.sh needs Go)";
const sharedDirs: string[] = [];
const savedEnv = { ...process.env };

before(async () => {
  if (skip) return;
  if (!weed) throw new Error("CI: the SeaweedFS binary is missing (.ci/run runs test/support/install-seaweedfs.sh)");
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  root = mkdtempSync(join(tmpdir(), "nxft-remote-"));
  server = await startS3Server(weed, join(root, "s3"));
});

after(async () => {
  process.env = savedEnv;
  await server?.stop();
  for (const s of sharedDirs) removeTestDirs(s);
  if (root) rmSync(root, { recursive: true, force: true });
});

// Points this process's remote store at the test server, as `who`, under `prefix`.
function useRemote(who: "writer" | "reader" | "anonymous", prefix: string, readonly = false): void {
  Object.assign(process.env, who === "anonymous" ? { AWS_ACCESS_KEY_ID: "", AWS_SECRET_ACCESS_KEY: "" } : server![who], {
    NXFT_STORE_REMOTE: `s3://${server!.bucket}/${prefix}`, NXFT_STORE_REMOTE_ENDPOINT: server!.endpoint,
    NXFT_STORE_REMOTE_READONLY: readonly ? "1" : "", NXFT_STORE_REMOTE_ANONYMOUS: who === "anonymous" ? "1" : "",
  });
}

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

test("blobs round-trip through the S3 server: multipart up, ranged parallel down, sha256 checked, progress shown", { skip }, async () => {
  useRemote("writer", "unit-roundtrip");
  const remote = remoteStore()!;
  const dir = join(root, "roundtrip"), storeA = join(dir, "a"), storeB = join(dir, "b");
  mkdirSync(dir, { recursive: true });
  const data = randomBytes(70 << 20); // > 4 parts of 16 MiB, above the progress threshold
  writeFileSync(join(dir, "big.bin"), data);
  writeFileSync(join(dir, "empty.bin"), "");
  const big = await putFile(storeA, join(dir, "big.bin"));
  const empty = await putFile(storeA, join(dir, "empty.bin"));
  const files = [{ path: "big.bin", ...big }, { path: "empty.bin", ...empty }];
  const lines: string[] = [];
  assert.equal(await uploadBlobs(remote, storeA, files, (l) => lines.push(l)), 2);
  assert.ok(lines.some((l) => /uploading big\.bin: [\d.]+\/0\.07 GB/.test(l)), lines.join("\n"));
  assert.equal(await remoteSize(remote, big.sha256), data.length);
  assert.equal(await uploadBlobs(remote, storeA, files, () => {}), 0, "content-addressed: uploaded once");

  const absent = await fetchBlobs(remote, storeB, files, (l) => lines.push(l));
  assert.deepEqual(absent, []);
  assert.equal(sha(readFileSync(blobPath(storeB, big.sha256))), big.sha256);
  assert.equal(readFileSync(blobPath(storeB, empty.sha256)).length, 0);
  assert.ok(lines.some((l) => /fetching big\.bin: 0\.07\/0\.07 GB/.test(l)), lines.join("\n"));
  assert.deepEqual(readdirSync(join(storeB, "tmp")), [], "no partial files left");
});

test("an interrupted fetch resumes from the parts it finished; wrong bytes under a name are refused", { skip }, async () => {
  useRemote("writer", "unit-resume");
  const remote = remoteStore()!;
  const dir = join(root, "resume"), storeA = join(dir, "a"), storeB = join(dir, "b");
  mkdirSync(dir, { recursive: true });
  const data = randomBytes(40 << 20);
  writeFileSync(join(dir, "x.bin"), data);
  const x = await putFile(storeA, join(dir, "x.bin"));
  await uploadBlobs(remote, storeA, [{ path: "x.bin", ...x }], () => {});
  // What a killed fetch leaves: the part file with parts 0 and 2 written, and the state that lists them.
  mkdirSync(join(storeB, "tmp"), { recursive: true });
  const part = join(storeB, "tmp", `${x.sha256}.part`);
  const partial = Buffer.alloc(data.length);
  data.copy(partial, 0, 0, 16 << 20);
  data.copy(partial, 32 << 20, 32 << 20);
  writeFileSync(part, partial);
  writeFileSync(`${part}.json`, JSON.stringify({ size: data.length, part: 16 << 20, done: [0, 2] }));
  // Parts 0 and 2 must not be fetched again: count the ranged GETs.
  let gets = 0;
  const send = remote.client.send.bind(remote.client);
  (remote.client as any).send = (cmd: any, ...rest: any[]) => { if (cmd.constructor.name === "GetObjectCommand") gets++; return send(cmd, ...rest); };
  try {
    assert.equal(await fetchBlob(remote, storeB, x.sha256, data.length, () => {}), true);
  } finally {
    (remote.client as any).send = send;
  }
  assert.equal(gets, 1, "only the missing part was fetched");
  assert.equal(sha(readFileSync(blobPath(storeB, x.sha256))), x.sha256);

  // An object whose bytes are not those its name says (a broken or hostile bucket): not taken into the store.
  const fake = sha(Buffer.from("what the name says"));
  const { PutObjectCommand } = await import("@aws-sdk/client-s3");
  await remote.client.send(new PutObjectCommand({ Bucket: remote.bucket, Key: remoteKey(remote, fake), Body: "something else" }));
  const lines: string[] = [];
  const absent = await fetchBlobs(remote, storeB, [{ path: "f", sha256: fake, size: "something else".length }], (l) => lines.push(l));
  assert.equal(absent.length, 1);
  assert.ok(!existsSync(blobPath(storeB, fake)));
  assert.ok(lines.some((l) => /not [0-9a-f]{64}: ignored/.test(l)), lines.join("\n"));
});

test("an interrupted multipart upload resumes: only the parts the server lacks are sent", { skip }, async () => {
  useRemote("writer", "unit-upload-resume");
  const remote = remoteStore()!;
  const dir = join(root, "upload-resume"), storeA = join(dir, "a"), storeB = join(dir, "b");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "u.bin"), randomBytes((4 << 20) * 16 + 12345)); // 5 parts of 16 MiB, the last one short
  const u = await putFile(storeA, join(dir, "u.bin"));
  const files = [{ path: "u.bin", ...u }];
  let parts = 0;
  const send = remote.client.send.bind(remote.client);
  // A network that dies after two parts went through.
  (remote.client as any).send = (cmd: any, ...rest: any[]) => {
    if (cmd.constructor.name === "UploadPartCommand" && ++parts > 2) return Promise.reject(new Error("connection reset"));
    return send(cmd, ...rest);
  };
  try {
    await assert.rejects(uploadBlobs(remote, storeA, files, () => {}), /connection reset.*rerun to resume/);
  } finally {
    (remote.client as any).send = send;
  }
  assert.equal(await remoteSize(remote, u.sha256), undefined, "no object before the upload completes");
  parts = 0;
  (remote.client as any).send = (cmd: any, ...rest: any[]) => {
    if (cmd.constructor.name === "UploadPartCommand") parts++;
    return send(cmd, ...rest);
  };
  const lines: string[] = [];
  try {
    assert.equal(await uploadBlobs(remote, storeA, files, (l) => lines.push(l)), 1);
  } finally {
    (remote.client as any).send = send;
  }
  assert.equal(parts, 3, "the two parts the server held were not sent again");
  assert.ok(lines.some((l) => /resuming the upload of u\.bin: 2 of 5 parts already there/.test(l)), lines.join("\n"));
  assert.deepEqual(await fetchBlobs(remote, storeB, files, () => {}), []);
  assert.equal(sha(readFileSync(blobPath(storeB, u.sha256))), u.sha256);
});

test("read-only mode never writes; the server refuses the reader identity's writes anyway; anonymous reads", { skip }, async () => {
  const dir = join(root, "ro");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "y.bin"), "y");
  const y = await putFile(join(dir, "store"), join(dir, "y.bin"));
  useRemote("writer", "unit-ro");
  assert.equal(await uploadBlobs(remoteStore()!, join(dir, "store"), [{ path: "y.bin", ...y }], () => {}), 1);
  useRemote("anonymous", "unit-ro");
  assert.equal(remoteStore()!.readonly, true);
  assert.deepEqual(await fetchBlobs(remoteStore()!, join(dir, "anon-store"), [{ path: "y.bin", ...y }], () => {}), []);
  assert.equal(readFileSync(blobPath(join(dir, "anon-store"), y.sha256), "utf8"), "y");
  writeFileSync(join(dir, "z.bin"), "z");
  const z = await putFile(join(dir, "store"), join(dir, "z.bin"));
  useRemote("reader", "unit-ro", true);
  await assert.rejects(uploadBlobs(remoteStore()!, join(dir, "store"), [{ path: "z.bin", ...z }], () => {}), /read-only/);
  useRemote("reader", "unit-ro", false);
  await assert.rejects(uploadBlobs(remoteStore()!, join(dir, "store"), [{ path: "z.bin", ...z }], () => {}), /uploading z\.bin/);
});

test("a new runner: empty clone + restored Nx cache folder + read-only remote store → fully cached demo:gguf, GGUFs, no training", { skip }, () => {
  const sharedA = join(root, "runner-a", "shared"), sharedB = join(root, "runner-b", "shared");
  sharedDirs.push(sharedA, sharedB);
  const ws = join(root, "runner-a", "ws"), clone = join(root, "runner-b", "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, () => {
    const f = join(ws, "recipes", "demo", "recipe.json");
    const r = JSON.parse(readFileSync(f, "utf8"));
    r.train = { ...r.train, steps: 20, warmup_steps: 2, eval_every: 10 };
    writeFileSync(f, JSON.stringify(r, null, 2) + "\n");
  });
  const remoteVars = { NXFT_STORE_REMOTE: `s3://${server!.bucket}/ci`, NXFT_STORE_REMOTE_ENDPOINT: server!.endpoint };
  const a: NxEnv = { shared: sharedA, engine, extra: { ...server!.writer, ...remoteVars } };
  const first = runNx(ws, a, "run", "demo:gguf");
  assert.equal(first.code, 0, first.out);
  assert.match(first.out, /remote store: uploaded \d+ blob\(s\)/);

  // Runner B: a fresh clone, its own HOME into which a CI cache step restored runner A's ~/.nx, an empty store.
  cloneWorkspace(ws, clone);
  const b: NxEnv = { shared: sharedB, engine, extra: { ...server!.reader, ...remoteVars, NXFT_STORE_REMOTE_READONLY: "1" } };
  const homeA = nxEnvironment(ws, a).HOME!, homeB = nxEnvironment(clone, b).HOME!;
  cpSync(join(homeA, ".nx"), join(homeB, ".nx"), { recursive: true });
  assert.ok(!existsSync(join(sharedB, "store")));
  const r = runNx(clone, b, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /for 6 out of 6 tasks/);
  assert.match(r.out, /remote store: fetched \d+ blob\(s\)/);
  assert.doesNotMatch(r.out, /rerunning/);
  // (Nx replays the first runner's cached terminal output, training steps included: what ran is in runs.log.)
  assert.ok(!existsSync(join(clone, "recipes", "demo", "out", "runs.log")), "no stage ran");
  const gguf = (d: string) => join(d, "recipes", "demo", "out", "gguf");
  const files = readdirSync(gguf(clone)).filter((f) => f.endsWith(".gguf")).sort();
  assert.deepEqual(files, ["demo.adapter.gguf", "demo.f16.gguf", "demo.q4_k_m.gguf", "demo.q8_0.gguf"]);
  for (const f of files) assert.equal(sha(readFileSync(join(gguf(clone), f))), sha(readFileSync(join(gguf(ws), f))), f);
});
