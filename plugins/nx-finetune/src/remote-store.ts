// remote-store.ts — the content store's remote half on S3-compatible object storage (AWS S3, R2, GCS interop,
// MinIO, SeaweedFS …), so artifacts follow the Nx cache to other clones, teammates and CI runners.
//
//   NXFT_STORE_REMOTE=s3://bucket/prefix      blobs at s3://bucket/prefix/blobs/<sha[0:2]>/<sha>
//   NXFT_STORE_REMOTE_ENDPOINT=http://…       an S3-compatible server (else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)
//   NXFT_STORE_REMOTE_READONLY=1              fetch only, never upload (untrusted CI: pull requests from forks)
//   NXFT_STORE_REMOTE_ANONYMOUS=1             unsigned requests, read-only (a bucket that allows public reads; forks
//                                             get no secrets)
// Credentials and region come from the standard AWS chain (env, ~/.aws, SSO, instance roles …).
//
// Content-addressed: a key names its bytes, so an object is written once and never changes; an upload is visible
// only when complete (a PUT or a completed multipart upload), so readers never see a partial object. A big upload
// resumes from the parts the server already holds (<store>/tmp/<sha>.upload.json keeps its upload id). A fetch
// downloads ranged parts in parallel into <store>/tmp/<sha>.part, remembering finished parts in <sha>.part.json
// (an interrupted fetch resumes), then checks the sha256 before the blob enters the store.
import { createHash } from "node:crypto";
import { createReadStream, existsSync, promises as fsp, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { blobPath, type StoredFile } from "./store";
import { writeJsonAtomic } from "./atomic";

type S3 = typeof import("@aws-sdk/client-s3");

export interface RemoteStore {
  url: string;        // s3://bucket/prefix, as configured
  bucket: string;
  prefix: string;     // "" or "prefix/"
  readonly: boolean;
  client: import("@aws-sdk/client-s3").S3Client;
  s3: S3;
}

const PART_BYTES = 16 << 20;     // ranged GET / multipart part size (grown for huge blobs: S3 allows 10,000 parts)
const CONCURRENCY = 8;
const PROGRESS_MIN_BYTES = 64 << 20;

let cached: { key: string; remote: RemoteStore | undefined } | undefined;

// The remote store configured by the environment, or undefined when NXFT_STORE_REMOTE is unset.
export function remoteStore(): RemoteStore | undefined {
  const url = process.env.NXFT_STORE_REMOTE?.trim();
  const endpoint = process.env.NXFT_STORE_REMOTE_ENDPOINT || process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL;
  const flag = (v: string | undefined) => ["1", "true", "yes"].includes((v ?? "").toLowerCase());
  const anonymous = flag(process.env.NXFT_STORE_REMOTE_ANONYMOUS);
  const readonly = anonymous || flag(process.env.NXFT_STORE_REMOTE_READONLY);
  const key = `${url}|${endpoint}|${readonly}|${anonymous}|${process.env.AWS_ACCESS_KEY_ID ?? ""}`;
  if (cached?.key === key) return cached.remote;
  let remote: RemoteStore | undefined;
  if (url) {
    const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
    if (!m) throw new Error(`NXFT_STORE_REMOTE=${url}: expected s3://bucket/prefix`);
    // The SDK warns on Node < 22 about versions published after January 2027; package.json pins one that supports 20.
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
    const s3: S3 = require("@aws-sdk/client-s3");
    const client = new s3.S3Client({
      region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || "us-east-1",
      ...(endpoint ? { endpoint, forcePathStyle: true } : {}),
      // Many S3-compatible servers reject the SDK's default CRC32 trailers; we check sha256 ourselves.
      requestChecksumCalculation: "WHEN_REQUIRED",
      responseChecksumValidation: "WHEN_REQUIRED",
      // Anonymous: no credential lookup, requests go out unsigned.
      ...(anonymous ? { credentials: { accessKeyId: "", secretAccessKey: "" }, signer: { sign: async (request: any) => request } } : {}),
    });
    const prefix = m[2].replace(/\/+$/, "");
    remote = { url, bucket: m[1], prefix: prefix ? `${prefix}/` : "", readonly, client, s3 };
  }
  cached = { key, remote };
  return remote;
}

export function remoteKey(remote: RemoteStore, sha256: string): string {
  return `${remote.prefix}blobs/${sha256.slice(0, 2)}/${sha256}`;
}

// Size of the remote object for `sha256`, or undefined when there is none.
export async function remoteSize(remote: RemoteStore, sha256: string): Promise<number | undefined> {
  try {
    const head = await remote.client.send(new remote.s3.HeadObjectCommand({ Bucket: remote.bucket, Key: remoteKey(remote, sha256) }));
    return Number(head.ContentLength ?? 0);
  } catch (e: any) {
    if (e?.$metadata?.httpStatusCode === 404 || e?.name === "NotFound" || e?.name === "NoSuchKey") return undefined;
    throw new Error(`remote store ${remote.url}: HEAD ${remoteKey(remote, sha256)}: ${e?.message ?? e}`);
  }
}

// A progress line at most every 2 s for a big transfer ("…: 1.2/4.0 GB, 310 MB/s").
function progress(label: string, total: number, log: (l: string) => void): (done: number) => void {
  if (total < PROGRESS_MIN_BYTES) return () => {};
  const t0 = Date.now();
  let last = 0, shown = -1;
  return (done) => {
    const now = Date.now();
    if (done === shown || (done < total && now - last < 2000)) return;
    last = now;
    shown = done;
    const mbs = done / 1e6 / Math.max(1e-3, (now - t0) / 1000);
    log(`${label}: ${(done / 1e9).toFixed(2)}/${(total / 1e9).toFixed(2)} GB, ${mbs.toFixed(0)} MB/s`);
  };
}

function partSize(size: number): number {
  let part = PART_BYTES;
  while (Math.ceil(size / part) > 10_000) part *= 2;
  return part;
}

// Uploads each blob the remote store lacks; see uploadBlob.
export async function uploadBlobs(remote: RemoteStore, store: string, files: StoredFile[], log: (l: string) => void): Promise<number> {
  if (remote.readonly) throw new Error(`remote store ${remote.url} is read-only (NXFT_STORE_REMOTE_READONLY)`);
  let uploaded = 0;
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.sha256)) continue;
    seen.add(f.sha256);
    if ((await remoteSize(remote, f.sha256)) === f.size) continue;
    try {
      await uploadBlob(remote, store, f, log);
    } catch (e: any) {
      throw new Error(`remote store ${remote.url}: uploading ${f.path} (${f.sha256}): ${e?.message ?? e} (rerun to resume)`);
    }
    uploaded++;
  }
  if (uploaded) log(`remote store: uploaded ${uploaded} blob(s) to ${remote.url}`);
  return uploaded;
}

// One blob: a PUT when it fits in one part, else a multipart upload, CONCURRENCY parts at a time, resumable: its
// upload id is kept in <store>/tmp/<sha>.upload.json, and a later call asks the server which parts it holds
// (ListParts; a part counts when its size and, where the ETag is an MD5, its MD5 match) and sends only the rest.
// The object appears only when CompleteMultipartUpload succeeds. (lib-storage's Upload cannot resume.)
async function uploadBlob(remote: RemoteStore, store: string, f: StoredFile, log: (l: string) => void): Promise<void> {
  const { s3, client, bucket } = remote;
  const Key = remoteKey(remote, f.sha256), file = blobPath(store, f.sha256);
  const step = partSize(f.size);
  const show = progress(`remote store: uploading ${f.path}`, f.size, log);
  if (f.size <= step) {
    await client.send(new s3.PutObjectCommand({ Bucket: bucket, Key, Body: await fsp.readFile(file), ContentLength: f.size, Metadata: { sha256: f.sha256 } }));
    show(f.size);
    return;
  }
  const nParts = Math.ceil(f.size / step);
  const partLength = (n: number) => Math.min(step, f.size - (n - 1) * step);   // parts are numbered from 1
  await fsp.mkdir(join(store, "tmp"), { recursive: true });
  const stateFile = join(store, "tmp", `${f.sha256}.upload.json`);
  const fh = await fsp.open(file, "r");
  const readPart = async (n: number) => {
    const buf = Buffer.alloc(partLength(n));
    await fh.read(buf, 0, buf.length, (n - 1) * step);
    return buf;
  };
  try {
    const etags = new Map<number, string>();
    let uploadId: string | undefined;
    try {
      const state = JSON.parse(readFileSync(stateFile, "utf8"));
      if (state.part === step && state.size === f.size) uploadId = state.uploadId;
    } catch { /* no upload to resume */ }
    if (uploadId) {
      try {
        let marker: string | undefined;
        do {
          const page = await client.send(new s3.ListPartsCommand({ Bucket: bucket, Key, UploadId: uploadId, PartNumberMarker: marker }));
          for (const p of page.Parts ?? []) {
            const n = p.PartNumber!, etag = (p.ETag ?? "").replace(/"/g, "");
            if (Number(p.Size) !== partLength(n)) continue;
            if (/^[0-9a-f]{32}$/.test(etag) && createHash("md5").update(await readPart(n)).digest("hex") !== etag) continue;
            etags.set(n, p.ETag!);
          }
          marker = page.IsTruncated ? String(page.NextPartNumberMarker) : undefined;
        } while (marker);
        if (etags.size) log(`remote store: resuming the upload of ${f.path}: ${etags.size} of ${nParts} parts already there`);
      } catch {
        uploadId = undefined;   // the server forgot it (aborted, expired): start over
        etags.clear();
      }
    }
    if (!uploadId) {
      const created = await client.send(new s3.CreateMultipartUploadCommand({ Bucket: bucket, Key, Metadata: { sha256: f.sha256 } }));
      uploadId = created.UploadId!;
      writeJsonAtomic(stateFile, { uploadId, part: step, size: f.size });
    }
    let sent = [...etags.keys()].reduce((t, n) => t + partLength(n), 0);
    const todo = [...Array(nParts).keys()].map((i) => i + 1).filter((n) => !etags.has(n));
    let failed = false;
    const worker = async () => {
      for (let n = todo.shift(); n !== undefined && !failed; n = todo.shift()) {
        const body = await readPart(n);
        const r = await client.send(new s3.UploadPartCommand({ Bucket: bucket, Key, UploadId: uploadId, PartNumber: n, Body: body, ContentLength: body.length }))
          .catch((e) => { failed = true; throw e; });
        etags.set(n, r.ETag!);
        sent += body.length;
        show(sent);
      }
    };
    // Parts in flight when one fails are let finish (the server keeps them for the resume); then the error.
    const settled = await Promise.allSettled(Array.from({ length: Math.min(CONCURRENCY, todo.length) }, worker));
    const error = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (error) throw error.reason;
    await client.send(new s3.CompleteMultipartUploadCommand({
      Bucket: bucket, Key, UploadId: uploadId,
      MultipartUpload: { Parts: [...etags.entries()].sort((x, y) => x[0] - y[0]).map(([PartNumber, ETag]) => ({ PartNumber, ETag })) },
    }));
    await fsp.rm(stateFile, { force: true });
  } finally {
    await fh.close();
  }
}

// Fetches each listed blob into the local store; returns those the remote store does not have (or has with other
// bytes than their sha256 says: such an object is reported and left alone).
export async function fetchBlobs(remote: RemoteStore, store: string, files: StoredFile[], log: (l: string) => void): Promise<StoredFile[]> {
  const absent: StoredFile[] = [];
  let fetched = 0, bytes = 0;
  const t0 = Date.now();
  for (const f of files) {
    if (existsSync(blobPath(store, f.sha256))) continue; // a duplicate entry fetched just before
    const size = await remoteSize(remote, f.sha256);
    if (size !== f.size) { absent.push(f); continue; }
    if (!(await fetchBlob(remote, store, f.sha256, f.size, log, f.path))) { absent.push(f); continue; }
    fetched++;
    bytes += f.size;
  }
  if (fetched) {
    const s = (Date.now() - t0) / 1000;
    log(`remote store: fetched ${fetched} blob(s), ${(bytes / 1e6).toFixed(1)} MB in ${s.toFixed(1)} s from ${remote.url}`);
  }
  return absent;
}

// Downloads one blob by ranged GETs (CONCURRENCY at a time) into a partial file, resuming one left by an
// interrupted fetch; verifies its sha256; moves it into the store read-only. False when the bytes don't match.
export async function fetchBlob(remote: RemoteStore, store: string, sha256: string, size: number,
                                log: (l: string) => void, label = sha256.slice(0, 12)): Promise<boolean> {
  const tmpDir = join(store, "tmp");
  await fsp.mkdir(tmpDir, { recursive: true });
  const part = join(tmpDir, `${sha256}.part`), doneFile = `${part}.json`;
  const step = partSize(size);
  const nParts = Math.max(1, Math.ceil(size / step));
  let done = new Set<number>();
  if (existsSync(part) && existsSync(doneFile)) {
    try {
      const state = JSON.parse(readFileSync(doneFile, "utf8"));
      if (state.size === size && state.part === step) done = new Set(state.done as number[]);
    } catch { /* a torn state file: start over */ }
  }
  if (done.size === 0) await fsp.writeFile(part, "");
  const fh = await fsp.open(part, "r+");
  const show = progress(`remote store: fetching ${label}`, size, log);
  let received = [...done].reduce((n, i) => n + Math.min(step, size - i * step), 0);
  try {
    await fh.truncate(size);
    const todo = [...Array(nParts).keys()].filter((i) => !done.has(i));
    let saveChain = Promise.resolve();
    const worker = async () => {
      for (let i = todo.shift(); i !== undefined; i = todo.shift()) {
        const start = i * step, end = Math.min(size, start + step) - 1;
        if (size === 0) break;
        const res = await remote.client.send(new remote.s3.GetObjectCommand({
          Bucket: remote.bucket, Key: remoteKey(remote, sha256), Range: `bytes=${start}-${end}`,
        }));
        let at = start;
        for await (const chunk of res.Body as AsyncIterable<Uint8Array>) {
          await fh.write(chunk, 0, chunk.length, at);
          at += chunk.length;
          received += chunk.length;
          show(received);
        }
        if (at !== end + 1) throw new Error(`short read of bytes ${start}-${end}: got ${at - start}`);
        done.add(i);
        // Written after the part's bytes: a part listed here is on disk (a kill leaves at worst a part fetched twice).
        saveChain = saveChain.then(async () => { await fh.datasync(); writeJsonAtomic(doneFile, { size, part: step, done: [...done] }); });
      }
    };
    await Promise.all(Array.from({ length: Math.min(CONCURRENCY, nParts) }, worker));
    await saveChain;
  } catch (e: any) {
    throw new Error(`remote store ${remote.url}: fetching ${label} (${sha256}): ${e?.message ?? e} (rerun to resume)`);
  } finally {
    await fh.close();
  }
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(part, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer);
  const got = hash.digest("hex");
  await fsp.rm(doneFile, { force: true });
  if (got !== sha256) {
    await fsp.rm(part, { force: true });
    log(`remote store: ${remoteKey(remote, sha256)} holds bytes with sha256 ${got}, not ${sha256}: ignored`);
    return false;
  }
  await fsp.chmod(part, 0o444);
  await fsp.mkdir(dirname(blobPath(store, sha256)), { recursive: true });
  await fsp.rename(part, blobPath(store, sha256));
  return true;
}
