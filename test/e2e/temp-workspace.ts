// temp-workspace.ts — a throwaway copy of this repo's workspace (what a clone would hold: tracked and
// untracked-but-not-ignored files of the paths the pipeline needs) and a way to run the real nx in it.
// Used by the e2e tests and bench/cache.ts.
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

export const repoRoot = resolve(__dirname, "..", "..");
const COPY = ["package.json", "package-lock.json", "nx.json", "tsconfig.json", ".gitignore", "plugins/nx-finetune/", "recipes/demo/",
              "datasets/demo/", "native/CMakeLists.txt", "native/src/"];

export function makeWorkspace(dir: string): void {
  const files = execFileSync("git", ["ls-files", "-co", "--exclude-standard"], { cwd: repoRoot, encoding: "utf8" }).split("\n").filter(Boolean);
  for (const f of files) {
    if (!COPY.some((p) => (p.endsWith("/") ? f.startsWith(p) : f === p))) continue;
    if (!existsSync(join(repoRoot, f))) continue; // deleted in the working tree
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    cpSync(join(repoRoot, f), join(dir, f));
  }
  // node_modules: links to the repo's packages, except our plugin, which is this workspace's own copy.
  mkdirSync(join(dir, "node_modules", "@nx-finetune"), { recursive: true });
  for (const name of readdirSync(join(repoRoot, "node_modules"))) {
    if (name !== "@nx-finetune") symlinkSync(join(repoRoot, "node_modules", name), join(dir, "node_modules", name));
  }
  symlinkSync(join("..", "..", "plugins", "nx-finetune"), join(dir, "node_modules", "@nx-finetune", "plugin"));
}

export interface NxEnv { shared: string; engine: string; extra?: Record<string, string> }

export function nxBin(): string {
  const nxPackage = join(repoRoot, "node_modules", "nx", "package.json");
  return join(dirname(nxPackage), JSON.parse(readFileSync(nxPackage, "utf8")).bin.nx);
}

// The environment for nx in `dir`: no daemon or cloud, the Nx cache and the content store under `shared` (so
// several "clones" can share them), plain output.
export function nxEnvironment(dir: string, env: NxEnv): NodeJS.ProcessEnv {
  return {
    ...process.env, NX_DAEMON: "false", NX_NO_CLOUD: "true", NX_TUI: "false", CI: "true", NO_COLOR: "1", FORCE_COLOR: "0",
    NX_CACHE_DIRECTORY: join(env.shared, "nx-cache"), NX_WORKSPACE_DATA_DIRECTORY: join(dir, ".nx", "workspace-data"),
    NXFT_STORE: join(env.shared, "store"), NXFT_ENGINE: env.engine, ...env.extra,
  };
}

export function runNx(dir: string, env: NxEnv, ...args: string[]): { code: number; out: string; wall_s: number } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [nxBin(), ...args, "--outputStyle=stream"], {
    cwd: dir,
    encoding: "utf8",
    env: nxEnvironment(dir, env),
    timeout: 600_000,
  });
  const wall_s = Number(process.hrtime.bigint() - t0) / 1e9;
  return { code: r.status ?? -1, out: `${r.stdout}\n${r.stderr}`, wall_s };
}
