// store-remote.ts — the remote content store against a local S3-compatible server (SeaweedFS `weed mini` on
// 127.0.0.1, test/support/install-seaweedfs.sh). Prints a table:
//   1. upload and restore throughput of one multi-GB blob of random bytes (restore = parallel ranged GETs into the
//      store + sha256 check);
//   2. a fully cached `nx run demo:gguf` on a fresh "runner" (an empty clone, the first runner's ~/.nx restored, an
//      empty local store, the bucket read-only) whose merged model carries a <model-gib> GiB file of random bytes,
//      then the same runner again (the store now local).
//
//   npx tsx bench/store-remote.ts [--blob-gib 2] [--model-gib 4]
// Needs about 3·blob-gib + 4·model-gib GiB of free disk in the temp folder (stores, the server's volumes).
import { randomFillSync } from "node:crypto";
import { chmodSync, closeSync, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../plugins/nx-finetune/src/engine";
import { putFile } from "../plugins/nx-finetune/src/store";
import { fetchBlobs, remoteStore, uploadBlobs } from "../plugins/nx-finetune/src/remote-store";
import { startS3Server, weedBinary } from "../test/support/s3-server";
import { cloneWorkspace, makeWorkspace, nxEnvironment, removeTestDirs, repoRoot, runNx, type NxEnv } from "../test/e2e/temp-workspace";
import { flag } from "./args";

const blobGiB = Number(flag("blob-gib", "2"));
const modelGiB = Number(flag("model-gib", "4"));

function randomFile(path: string, bytes: number): void {
  const fd = openSync(path, "w");
  const buf = Buffer.alloc(64 << 20);
  for (let done = 0; done < bytes; done += buf.length) {
    randomFillSync(buf);
    writeSync(fd, buf, 0, Math.min(buf.length, bytes - done));
  }
  closeSync(fd);
}

// Runs the real engine; after `merge`, adds <modelGiB> GiB of random bytes to the merged folder (bench only).
function bigEngineWrapper(dir: string, engine: string): string {
  const path = join(dir, "engine-with-big-merge.sh");
  writeFileSync(path, `#!/usr/bin/env bash
set -e
"${engine}" "$@"
if [ "$1" = merge ]; then
  out=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).out)' "$3")
  head -c ${modelGiB}G /dev/urandom > "$out/bench-padding.bin"
fi
`);
  chmodSync(path, 0o755);
  return path;
}

async function main() {
  const weed = weedBinary();
  if (!weed) throw new Error("no SeaweedFS binary: run test/support/install-seaweedfs.sh (needs Go)");
  const engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.error(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-bench-remote-"));
  const server = await startS3Server(weed, join(root, "s3"));
  const rows: Array<[string, string, string]> = [];
  const gbps = (bytes: number, s: number) => `${(bytes / 1e6 / s).toFixed(0)} MB/s`;
  try {
    // 1. One big blob.
    Object.assign(process.env, server.writer, { NXFT_STORE_REMOTE: `s3://${server.bucket}/bench`, NXFT_STORE_REMOTE_ENDPOINT: server.endpoint });
    const remote = remoteStore()!;
    const file = join(root, "blob.bin"), storeA = join(root, "store-a"), storeB = join(root, "store-b");
    console.error(`writing ${blobGiB} GiB of random bytes`);
    randomFile(file, Math.round(blobGiB * 2 ** 30));
    const blob = await putFile(storeA, file);
    const files = [{ path: "blob.bin", ...blob }];
    let t = performance.now();
    await uploadBlobs(remote, storeA, files, (l) => console.error(l));
    const up = (performance.now() - t) / 1000;
    rows.push([`upload one ${blobGiB} GiB blob (multipart, 16 MiB × 8)`, `${up.toFixed(1)} s`, gbps(blob.size, up)]);
    t = performance.now();
    const absent = await fetchBlobs(remote, storeB, files, (l) => console.error(l));
    const down = (performance.now() - t) / 1000;
    if (absent.length) throw new Error("restore failed");
    rows.push([`restore it into an empty store (ranged GETs × 8 + sha256)`, `${down.toFixed(1)} s`, gbps(blob.size, down)]);
    rmSync(storeA, { recursive: true, force: true });
    rmSync(storeB, { recursive: true, force: true });
    rmSync(file, { force: true });

    // 2. A fresh runner.
    const sharedA = join(root, "runner-a", "shared"), sharedB = join(root, "runner-b", "shared");
    const ws = join(root, "runner-a", "ws"), clone = join(root, "runner-b", "ws");
    mkdirSync(ws, { recursive: true });
    makeWorkspace(ws, () => {
      const f = join(ws, "recipes", "demo", "recipe.json");
      const r = JSON.parse(readFileSync(f, "utf8"));
      r.train = { ...r.train, steps: 30, warmup_steps: 3, eval_every: 15 };
      writeFileSync(f, JSON.stringify(r, null, 2) + "\n");
    });
    const wrapper = bigEngineWrapper(root, engine);
    const remoteVars = { NXFT_STORE_REMOTE: `s3://${server.bucket}/runners`, NXFT_STORE_REMOTE_ENDPOINT: server.endpoint };
    const a: NxEnv = { shared: sharedA, engine: wrapper, extra: { ...server.writer, ...remoteVars } };
    const cold = runNx(ws, a, "run", "demo:gguf");
    if (cold.code !== 0) throw new Error(cold.out.slice(-3000));
    rows.push([`runner A: cold demo:gguf (30 steps) + upload, ${modelGiB} GiB merged file`, `${cold.wall_s.toFixed(1)} s`, "every stage runs"]);

    cloneWorkspace(ws, clone);
    const b: NxEnv = { shared: sharedB, engine: wrapper, extra: { ...server.reader, ...remoteVars, NXFT_STORE_REMOTE_READONLY: "1" } };
    cpSync(join(nxEnvironment(ws, a).HOME!, ".nx"), join(nxEnvironment(clone, b).HOME!, ".nx"), { recursive: true });
    const fresh = runNx(clone, b, "run", "demo:gguf");
    if (fresh.code !== 0) throw new Error(fresh.out.slice(-3000));
    const padding = join(clone, "recipes", "demo", "out", "merged", "bench-padding.bin");
    const ok = /for 6 out of 6 tasks/.test(fresh.out) && !existsSync(join(clone, "recipes", "demo", "out", "runs.log")) && statSync(padding).size === modelGiB * 2 ** 30;
    const fetches = [...fresh.out.matchAll(/remote store: fetched (\d+) blob\(s\), ([\d.]+) MB in ([\d.]+) s/g)];
    const fetched = fetches.length ? fetches.reduce((t, m) => [t[0] + Number(m[1]), t[1] + Number(m[2]), t[2] + Number(m[3])], [0, 0, 0]) : undefined;
    rows.push([`runner B (empty clone + restored ~/.nx + empty store): fully cached demo:gguf`, `${fresh.wall_s.toFixed(1)} s`,
               `${ok ? "6/6 cached, no stage ran, GGUFs + merged present" : "NOT fully cached"}` +
               (fetched ? `; fetched ${fetched[0]} blobs, ${(fetched[1] / 1000).toFixed(2)} GB in ${fetched[2].toFixed(1)} s (${(fetched[1] / fetched[2]).toFixed(0)} MB/s)` : "")]);
    const again = runNx(clone, b, "run", "demo:gguf");
    rows.push([`runner B again (store now local)`, `${again.wall_s.toFixed(2)} s`, /for 6 out of 6 tasks/.test(again.out) ? "6/6 cached" : "NOT cached"]);
    removeTestDirs(sharedA);
    removeTestDirs(sharedB);
  } finally {
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
  const w = [Math.max(...rows.map((r) => r[0].length)), Math.max(...rows.map((r) => r[1].length))];
  console.log(`\nbench/store-remote.ts — SeaweedFS on 127.0.0.1 (same disk), ${cpus().length} cores, no Nx daemon`);
  console.log(`${"case".padEnd(w[0])} | ${"wall".padStart(w[1])} | note`);
  console.log(`${"-".repeat(w[0])}-|-${"-".repeat(w[1])}-|-----`);
  for (const r of rows) console.log(`${r[0].padEnd(w[0])} | ${r[1].padStart(w[1])} | ${r[2]}`);
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack : e);
  process.exit(1);
});
