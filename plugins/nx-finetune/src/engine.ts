// engine.ts — build (once, under a lock) and run the native engine `finetune-engine` (docs/engine-protocol.md):
// write the job file, run `<engine> <command> --job <file>`, parse its JSON-lines events, fail with the engine's
// own error message.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { availableParallelism } from "node:os";
import { writeJsonAtomic } from "./atomic";

export interface EngineEvent { event: string; [key: string]: any }

export class EngineFailure extends Error {}

// $NXFT_ENGINE points to a prebuilt binary; otherwise <workspace>/native/build/finetune-engine, built on demand.
export function enginePath(workspaceRoot: string): string {
  return process.env.NXFT_ENGINE || join(workspaceRoot, "native", "build", "finetune-engine");
}

// Builds the engine with CMake (configure once, then an incremental build so the binary matches native/ sources,
// which are part of every engine stage's hash). A lock file serializes concurrent builds (parallel stages).
export async function ensureEngine(workspaceRoot: string, log: (line: string) => void): Promise<string> {
  const binary = enginePath(workspaceRoot);
  if (process.env.NXFT_ENGINE) {
    if (!existsSync(binary)) throw new EngineFailure(`NXFT_ENGINE=${binary}: no such file`);
    return binary;
  }
  const buildDir = join(workspaceRoot, "native", "build");
  mkdirSync(buildDir, { recursive: true });
  const release = await acquireLock(join(buildDir, ".nxft-build.lock"));
  try {
    const { execa } = await import("execa");
    const run = async (args: string[]) => {
      const r = await execa("cmake", args, { cwd: workspaceRoot, all: true, reject: false });
      if (r.exitCode !== 0) throw new EngineFailure(`engine build failed: cmake ${args.join(" ")}\n${(r.all ?? "").split("\n").slice(-30).join("\n")}`);
    };
    if (!existsSync(join(buildDir, "CMakeCache.txt"))) {
      log("building the engine (first run): cmake -S native -B native/build -DCMAKE_BUILD_TYPE=Release");
      await run(["-S", "native", "-B", "native/build", "-DCMAKE_BUILD_TYPE=Release"]);
    }
    await run(["--build", "native/build", "-j", String(Math.max(1, availableParallelism())), "--target", "finetune-engine"]);
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
export async function runEngine(binary: string, command: string, job: Record<string, unknown>, jobFile: string,
                                onEvent: (e: EngineEvent) => void): Promise<Record<string, any>> {
  writeJsonAtomic(jobFile, { command, ...job });
  const { execa } = await import("execa");
  const child = execa(binary, [command, "--job", jobFile], { stdout: "pipe", stderr: "pipe", reject: false, buffer: false });
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
    throw new EngineFailure(`finetune-engine ${command}: ${error.message}${where ? ` (${where})` : ""}${error.step ? ` at step ${error.step}` : ""}`);
  }
  if (result.exitCode !== 0 || !summary) {
    const why = result.signal ? `killed by ${result.signal}` : `exit code ${result.exitCode}`;
    throw new EngineFailure(`finetune-engine ${command} failed (${why}) without an error event\n${stderrTail.slice(-15).join("\n")}`);
  }
  return summary;
}
