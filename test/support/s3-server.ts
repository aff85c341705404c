// s3-server.ts — a real S3-compatible server for tests: SeaweedFS `weed mini` on 127.0.0.1 (built by
// install-seaweedfs.sh), with a writer, a read-only reader and anonymous read access, and one bucket.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join, resolve } from "node:path";

export interface S3Server {
  endpoint: string;
  bucket: string;
  writer: { AWS_ACCESS_KEY_ID: string; AWS_SECRET_ACCESS_KEY: string };
  reader: { AWS_ACCESS_KEY_ID: string; AWS_SECRET_ACCESS_KEY: string };
  stop(): Promise<void>;
}

// The weed binary: $NXFT_WEED, else built (or found in its cache) by install-seaweedfs.sh. Undefined when it cannot
// be had (no Go toolchain) — callers skip, except under CI, where .ci/run must have installed it.
export function weedBinary(): string | undefined {
  if (process.env.NXFT_WEED) return existsSync(process.env.NXFT_WEED) ? process.env.NXFT_WEED : undefined;
  const script = resolve(__dirname, "install-seaweedfs.sh");
  const r = spawnSync("bash", [script], { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"], timeout: 40 * 60_000 });
  const bin = r.stdout?.trim().split("\n").at(-1);
  return r.status === 0 && bin && existsSync(bin) ? bin : undefined;
}

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => { const p = (s.address() as { port: number }).port; s.close(() => res(p)); });
  });
}

// Ports: weed derives each gRPC port as http + 10000, so pick http ports below 55535 whose +10000 is free too.
async function portPair(): Promise<number> {
  for (;;) {
    const p = await freePort();
    if (p > 55000) continue;
    const ok = await new Promise<boolean>((res) => {
      const s = createServer();
      s.once("error", () => res(false));
      s.listen(p + 10000, "127.0.0.1", () => s.close(() => res(true)));
    });
    if (ok) return p;
  }
}

export async function startS3Server(weed: string, dir: string, bucket = "nxft"): Promise<S3Server> {
  mkdirSync(dir, { recursive: true });
  const writer = { AWS_ACCESS_KEY_ID: "nxft-writer", AWS_SECRET_ACCESS_KEY: "nxft-writer-secret-key" };
  const reader = { AWS_ACCESS_KEY_ID: "nxft-reader", AWS_SECRET_ACCESS_KEY: "nxft-reader-secret-key" };
  const config = join(dir, "s3.json");
  writeFileSync(config, JSON.stringify({
    identities: [
      { name: "writer", credentials: [{ accessKey: writer.AWS_ACCESS_KEY_ID, secretKey: writer.AWS_SECRET_ACCESS_KEY }], actions: ["Admin", "Read", "Write", "List", "Tagging"] },
      { name: "reader", credentials: [{ accessKey: reader.AWS_ACCESS_KEY_ID, secretKey: reader.AWS_SECRET_ACCESS_KEY }], actions: ["Read", "List"] },
      // Unsigned requests may read (a bucket with public reads, for CI runs of forks).
      { name: "anonymous", actions: ["Read", "List"] },
    ],
  }));
  const [master, volume, filer, s3] = [await portPair(), await portPair(), await portPair(), await portPair()];
  const log = openSync(join(dir, "weed.log"), "a");
  const child: ChildProcess = spawn(weed, [
    "mini", `-dir=${join(dir, "data")}`, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
    `-master.port=${master}`, `-volume.port=${volume}`, `-filer.port=${filer}`, `-s3.port=${s3}`,
    "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
    `-s3.config=${config}`, `-bucket=${bucket}`,
  ], { stdio: ["ignore", log, log], detached: false });
  mkdirSync(join(dir, "data"), { recursive: true });
  const endpoint = `http://127.0.0.1:${s3}`;
  const stop = async () => {
    if (child.exitCode !== null) return;
    child.kill("SIGTERM");
    await new Promise((r) => { const t = setTimeout(() => { child.kill("SIGKILL"); r(null); }, 10_000); child.once("exit", () => { clearTimeout(t); r(null); }); });
  };
  // Ready when the bucket answers a signed request.
  const { S3Client, HeadBucketCommand } = await import("@aws-sdk/client-s3");
  const client = new S3Client({ region: "us-east-1", endpoint, forcePathStyle: true,
                                credentials: { accessKeyId: writer.AWS_ACCESS_KEY_ID, secretAccessKey: writer.AWS_SECRET_ACCESS_KEY } });
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`weed mini exited (${child.exitCode}); see ${join(dir, "weed.log")}`);
    try { await client.send(new HeadBucketCommand({ Bucket: bucket })); break; } catch { /* not up yet */ }
    if (Date.now() - t0 > 120_000) { await stop(); throw new Error(`weed mini did not serve ${endpoint} within 120 s; see ${join(dir, "weed.log")}`); }
    await new Promise((r) => setTimeout(r, 500));
  }
  client.destroy();
  return { endpoint, bucket, writer, reader, stop };
}
