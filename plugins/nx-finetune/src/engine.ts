// engine.ts — build (once, under a lock) and run the native engine `finetune-engine` (docs/engine-protocol.md):
// write the job file, run `<engine> <command> --job <file>`, parse its JSON-lines events, fail with the engine's
// own error message.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { join, resolve } from "node:path";
import { availableParallelism, homedir } from "node:os";
import { writeJsonAtomic } from "./atomic";

export interface EngineEvent { event: string; [key: string]: any }

// `field` is the error event's field: "dist.peer" marks a data-parallel rank that stopped because another failed.
export class EngineFailure extends Error {
  constructor(message: string, readonly field?: string) { super(message); }
}

// Where the engine's sources are and where it is built:
//   - a workspace that holds the engine (this repository: native/CMakeLists.txt of project finetune_engine):
//     native/ → native/build, rebuilt incrementally so the binary matches the sources (which are part of every
//     engine stage's hash);
//   - an installed package: the package ships native/ (sources only; see plugins/nx-finetune/README.md for why not
//     prebuilt binaries) and builds it once into a cache folder keyed by the package version and a hash of those
//     sources ($NXFT_ENGINE_CACHE, else $XDG_CACHE_HOME or ~/.cache /nx-finetune/), shared by every workspace;
//   - a plugin linked from a checkout of this repository into another workspace: the checkout's native/.
// $NXFT_ENGINE (a prebuilt binary) wins over all.
const PLUGIN_DIR = resolve(__dirname, "..");

export interface EngineBuild { source: string; build: string; incremental: boolean }

// CMake options from the environment: where cuDNN, the cudnn-frontend headers and NCCL are (the CUDA backend's fast
// attention and its multi-GPU collective are optional, and CMake also looks in the usual places), whether to build
// the CUDA backend at all, and for which GPUs. A shipped engine's cache folder is named after them too, so setting
// one (say after installing cuDNN) builds an engine that uses it instead of reusing one built without it.
export function engineCmakeOptions(env: NodeJS.ProcessEnv = process.env): string[] {
  const options: [string, string | undefined][] = [
    ["NXFT_CUDA", env.NXFT_CUDA],
    ["NXFT_CUDA_ARCHS", env.NXFT_CUDA_ARCHS],
    ["NXFT_CUDNN_DIR", env.NXFT_CUDNN_DIR || env.CUDNN_PATH],
    ["NXFT_CUDNN_FRONTEND_DIR", env.NXFT_CUDNN_FRONTEND_DIR || env.CUDNN_FRONTEND_PATH],
    ["NXFT_NCCL_DIR", env.NXFT_NCCL_DIR || env.NCCL_HOME],
  ];
  return options.filter(([, v]) => v).map(([k, v]) => `-D${k}=${v}`);
}

// A shipped engine's build folder: package version, source hash and (when any are set) a hash of the CMake options.
export function shippedEngineDir(cacheRoot: string, version: string, sourceHash: string, options: string[]): string {
  const suffix = options.length ? "-" + createHash("sha256").update(options.join("\n")).digest("hex").slice(0, 8) : "";
  return join(cacheRoot, `engine-${version}-${sourceHash}${suffix}`);
}

// Whether `dir` is the engine's source folder (not some other project's native/).
export function isEngineSource(dir: string): boolean {
  const cmake = join(dir, "CMakeLists.txt");
  return existsSync(cmake) && /project\(finetune_engine\b/.test(readFileSync(cmake, "utf8"));
}

export function engineBuild(workspaceRoot: string): EngineBuild {
  const inWorkspace = join(workspaceRoot, "native");
  if (isEngineSource(inWorkspace)) return { source: inWorkspace, build: join(inWorkspace, "build"), incremental: true };
  const shipped = join(PLUGIN_DIR, "native");
  if (isEngineSource(shipped)) {
    const version = JSON.parse(readFileSync(join(PLUGIN_DIR, "package.json"), "utf8")).version as string;
    const hashFile = join(shipped, "SOURCE_SHA256");
    const sourceHash = existsSync(hashFile) ? readFileSync(hashFile, "utf8").trim().slice(0, 12) : "dev";
    const cacheRoot = process.env.NXFT_ENGINE_CACHE || join(process.env.XDG_CACHE_HOME || join(homedir(), ".cache"), "nx-finetune");
    return { source: shipped, build: shippedEngineDir(cacheRoot, version, sourceHash, engineCmakeOptions()), incremental: false };
  }
  const checkout = resolve(PLUGIN_DIR, "..", "..", "native");
  if (isEngineSource(checkout)) return { source: checkout, build: join(checkout, "build"), incremental: true };
  throw new EngineFailure(`no engine sources: none of ${[inWorkspace, shipped, checkout].join(", ")} holds the engine's CMakeLists.txt; ` +
    `set NXFT_ENGINE to a finetune-engine binary`);
}

export function enginePath(workspaceRoot: string): string {
  return process.env.NXFT_ENGINE || join(engineBuild(workspaceRoot).build, "finetune-engine");
}

// Builds the engine with CMake (configure once, then a build). A lock file serializes concurrent builds (parallel
// stages, several workspaces sharing the cache folder). A shipped engine is built once: its sources never change.
export async function ensureEngine(workspaceRoot: string, log: (line: string) => void): Promise<string> {
  const binary = enginePath(workspaceRoot);
  if (process.env.NXFT_ENGINE) {
    if (!existsSync(binary)) throw new EngineFailure(`NXFT_ENGINE=${binary}: no such file`);
    return binary;
  }
  const { source, build: buildDir, incremental } = engineBuild(workspaceRoot);
  if (!incremental && existsSync(binary)) return binary;
  mkdirSync(buildDir, { recursive: true });
  const release = await acquireLock(join(buildDir, ".nxft-build.lock"));
  try {
    if (!incremental && existsSync(binary)) return binary; // built while we waited for the lock
    const { execa } = await import("execa");
    const run = async (args: string[]) => {
      const r = await execa("cmake", args, { cwd: workspaceRoot, all: true, reject: false });
      if (r.exitCode !== 0) throw new EngineFailure(`engine build failed: cmake ${args.join(" ")}\n${(r.all ?? "").split("\n").slice(-30).join("\n")}`);
    };
    // Configure on the first build, and again when the CMake options from the environment changed (a checkout's
    // build folder is reused; CMake keeps earlier values and retries what it did not find).
    const options = engineCmakeOptions();
    const stamp = join(buildDir, ".nxft-cmake-options");
    const configured = existsSync(join(buildDir, "CMakeCache.txt"));
    if (!configured || (existsSync(stamp) ? readFileSync(stamp, "utf8") : "") !== options.join("\n")) {
      const args = ["-S", source, "-B", buildDir, "-DCMAKE_BUILD_TYPE=Release", ...options];
      log(configured ? `reconfiguring the engine: cmake ${args.join(" ")}`
                     : `building the engine (first run, about a minute): cmake ${args.join(" ")}`);
      await run(args);
      writeFileSync(stamp, options.join("\n"));
    }
    await run(["--build", buildDir, "-j", String(Math.max(1, availableParallelism())), "--target", "finetune-engine"]);
  } finally {
    release();
  }
  return binary;
}

// An exclusive lock file (O_EXCL); a lock whose owner pid is gone is taken over.
async function acquireLock(file: string): Promise<() => void> {
  for (let waited = 0; ; waited += 200) {
    try {
      const fd = openSync(file, "wx");
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => { try { unlinkSync(file); } catch { /* already gone */ } };
    } catch (e: any) {
      if (e.code !== "EEXIST") throw e;
      const owner = Number(readFileSync(file, "utf8") || "0");
      let alive = true;
      try { process.kill(owner, 0); } catch { alive = false; }
      if (!alive || Date.now() - statSync(file).mtimeMs > 30 * 60_000) { try { unlinkSync(file); } catch { /* raced */ } continue; }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

// Runs one engine command. `job` is written to `jobFile`; every stdout event goes to `onEvent`; stderr (human
// logging) is passed through. Resolves with the `done` summary; rejects with the engine's `error` message.
// opts.env adds environment variables (a data-parallel rank's NXFT_RANK); opts.cancel kills the engine (SIGTERM).
export async function runEngine(binary: string, command: string, job: Record<string, unknown>, jobFile: string,
                                onEvent: (e: EngineEvent) => void,
                                opts: { env?: Record<string, string>; cancel?: AbortSignal } = {}): Promise<Record<string, any>> {
  writeJsonAtomic(jobFile, { command, ...job });
  const { execa } = await import("execa");
  const child = execa(binary, [command, "--job", jobFile], { stdout: "pipe", stderr: "pipe", reject: false, buffer: false,
    ...(opts.env ? { env: opts.env } : {}), ...(opts.cancel ? { cancelSignal: opts.cancel } : {}) });
  let summary: Record<string, any> | undefined;
  let error: EngineEvent | undefined;
  const stderrTail: string[] = [];
  let pending = "";
  child.stdout!.setEncoding("utf8");
  child.stdout!.on("data", (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      if (!line) continue;
      let ev: EngineEvent;
      try { ev = JSON.parse(line); } catch { stderrTail.push(`(stdout) ${line}`); continue; }
      if (ev.event === "error") error = ev;
      if (ev.event === "done") summary = ev.summary ?? {};
      onEvent(ev);
    }
  });
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    for (const line of chunk.split("\n")) if (line.trim()) { stderrTail.push(line); if (stderrTail.length > 40) stderrTail.shift(); }
    if (process.env.NXFT_ENGINE_LOG) process.stderr.write(chunk);
  });
  const result = await child;
  if (error) {
    const where = [error.file, error.field].filter(Boolean).join(" ");
    throw new EngineFailure(`finetune-engine ${command}: ${error.message}${where ? ` (${where})` : ""}${error.step ? ` at step ${error.step}` : ""}`, error.field);
  }
  if (result.exitCode !== 0 || !summary) {
    const why = result.signal ? `killed by ${result.signal}` : `exit code ${result.exitCode}`;
    throw new EngineFailure(`finetune-engine ${command} failed (${why}) without an error event\n${stderrTail.slice(-15).join("\n")}`);
  }
  return summary;
}
