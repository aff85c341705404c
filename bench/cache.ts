// cache.ts — how long `nx run demo:gguf` takes cold, fully cached, and fully cached with a multi-GB artifact in the
// store, in temp copies of this workspace (real nx, real engine). Prints a table.
//
//   npx tsx bench/cache.ts [--big-gib 4] [--runs 3]
//
// The multi-GB case: NXFT_ENGINE points at a wrapper that runs the real engine and, after `merge`, adds a
// <big-gib> GiB file to the merged model folder — as if the merged model were that large. The stage puts it in the
// store like any output; a cached rerun must neither copy nor re-hash it (the issue asks for ≤ 2 s).
// Rows are measured without the Nx daemon (as in CI) and with plugins in-process (NX_ISOLATE_PLUGINS=false) too,
// since Nx's per-plugin worker processes dominate a fully cached run on 2 cores.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../plugins/nx-finetune/src/engine";
import { cloneWorkspace, makeWorkspace, removeTestDirs, repoRoot, runNx } from "../test/e2e/temp-workspace";
import { flag } from "./args";

const bigGiB = Number(flag("big-gib", "4"));
const runs = Number(flag("runs", "3"));

function bigEngineWrapper(dir: string, engine: string): string {
  const path = join(dir, "engine-with-big-merge.sh");
  writeFileSync(path, `#!/usr/bin/env bash
# Runs the real engine; after a successful merge, adds a ${bigGiB} GiB file to the merged folder (bench only).
set -e
"${engine}" "$@"
if [ "$1" = merge ]; then
  out=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).out)' "$3")
  head -c ${bigGiB}G /dev/zero > "$out/bench-padding.bin"
fi
`);
  chmodSync(path, 0o755);
  return path;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main() {
  const engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.error(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-bench-"));
  const rows: Array<[string, string, string]> = [];
  const run = (dir: string, shared: string, eng: string, extra: Record<string, string> = {}) => {
    const r = runNx(dir, { shared, engine: eng, extra }, "run", "demo:gguf");
    if (r.code !== 0) throw new Error(`nx run demo:gguf failed in ${dir}\n${r.out.slice(-3000)}`);
    return r;
  };
  const cachedAll = (r: { out: string }) => /for 6 out of 6 tasks/.test(r.out);

  // 1. The plain demo.
  const ws = join(root, "demo"), shared = join(root, "demo-shared");
  mkdirSync(ws);
  makeWorkspace(ws);
  const cold = run(ws, shared, engine);
  rows.push(["demo, cold (every stage runs)", `${cold.wall_s.toFixed(1)} s`, "engine already built"]);
  for (const isolate of ["true", "false"]) {
    const times: number[] = [];
    for (let i = 0; i < runs; i++) {
      const r = run(ws, shared, engine, { NX_ISOLATE_PLUGINS: isolate });
      if (!cachedAll(r)) throw new Error(`expected 6/6 cache hits:\n${r.out.slice(-2000)}`);
      times.push(r.wall_s);
    }
    rows.push([`demo, fully cached (NX_ISOLATE_PLUGINS=${isolate})`, `${median(times).toFixed(2)} s`, `median of ${runs}`]);
  }

  // 2. The same with a multi-GB artifact in the merged stage (and so in the store).
  const big = join(root, "big"), bigShared = join(root, "big-shared");
  mkdirSync(big);
  makeWorkspace(big);
  const wrapper = bigEngineWrapper(root, engine);
  const bigCold = run(big, bigShared, wrapper);
  const padding = join(big, "recipes", "demo", "out", "merged", "bench-padding.bin");
  const size = statSync(padding).size;
  rows.push([`demo + ${bigGiB} GiB merged artifact, cold`, `${bigCold.wall_s.toFixed(1)} s`, `writes and hashes ${(size / 2 ** 30).toFixed(1)} GiB once`]);
  const modes: Array<[string, Record<string, string>]> = [
    ["NX_ISOLATE_PLUGINS=true (Nx default)", { NX_ISOLATE_PLUGINS: "true" }],
    ["NX_ISOLATE_PLUGINS=false", { NX_ISOLATE_PLUGINS: "false" }],
    ["Nx daemon (local default)", { NX_DAEMON: "true" }],
  ];
  for (const [label, extra] of modes) {
    const times: number[] = [];
    if (extra.NX_DAEMON) run(big, bigShared, wrapper, extra); // starts the daemon; not timed
    for (let i = 0; i < runs; i++) {
      const r = run(big, bigShared, wrapper, extra);
      if (!cachedAll(r)) throw new Error(`expected 6/6 cache hits:\n${r.out.slice(-2000)}`);
      times.push(r.wall_s);
    }
    if (extra.NX_DAEMON) runNx(big, { shared: bigShared, engine: wrapper, extra }, "daemon", "--stop");
    const t = median(times);
    rows.push([`demo + ${bigGiB} GiB artifact, fully cached, ${label}`, `${t.toFixed(2)} s`, t <= 2 ? "≤ 2 s: ok" : "> 2 s"]);
  }
  // A fresh clone sharing the store and the Nx cache: the big file is relinked, not copied.
  const clone = join(root, "big-clone");
  cloneWorkspace(big, clone);
  const c = run(clone, bigShared, wrapper, { NX_ISOLATE_PLUGINS: "false" });
  const linked = statSync(join(clone, "recipes", "demo", "out", "merged", "bench-padding.bin")).ino === statSync(padding).ino;
  rows.push([`demo + ${bigGiB} GiB artifact, fresh clone sharing store + cache`, `${c.wall_s.toFixed(2)} s`,
             `${cachedAll(c) ? "6/6 cached" : "NOT all cached"}, artifact ${linked ? "hard-linked" : "NOT linked"}`]);

  const w = [Math.max(...rows.map((r) => r[0].length)), Math.max(...rows.map((r) => r[1].length))];
  console.log(`\nbench/cache.ts — nx run demo:gguf, ${cpus().length} cores, no Nx daemon unless stated, engine ${engine === process.env.NXFT_ENGINE ? "$NXFT_ENGINE" : "native/build"}`);
  console.log(`${"case".padEnd(w[0])} | ${"wall".padStart(w[1])} | note`);
  console.log(`${"-".repeat(w[0])}-|-${"-".repeat(w[1])}-|-----`);
  for (const r of rows) console.log(`${r[0].padEnd(w[0])} | ${r[1].padStart(w[1])} | ${r[2]}`);
  removeTestDirs(shared);
  removeTestDirs(bigShared);
  rmSync(root, { recursive: true, force: true });
}

main().catch((e) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
