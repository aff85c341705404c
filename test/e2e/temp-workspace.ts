// temp-workspace.ts — a throwaway copy of this repo's workspace (what a clone would hold: tracked and
// untracked-but-not-ignored files of the paths the pipeline needs) and a way to run the real nx in it.
// Used by the e2e tests and bench/cache.ts.
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createHash } from "node:crypto";

export const repoRoot = resolve(__dirname, "..", "..");
const COPY = ["package.json", "package-lock.json", "nx.json", "tsconfig.json", ".gitignore", "plugins/nx-finetune/", "recipes/demo/",
              "datasets/demo/", "native/"];

// `edit` may change files before the first commit (e.g. fewer training steps for a test).
export function makeWorkspace(dir: string, edit?: (dir: string) => void): void {
  const pathspecs = COPY.map((p) => p.replace(/\/$/, ""));
  const files = execFileSync("git", ["ls-files", "-co", "--exclude-standard", "--", ...pathspecs], { cwd: repoRoot, encoding: "utf8", maxBuffer: 64 << 20 })
    .split("\n").filter(Boolean);
  for (const f of files) {
    if (!COPY.some((p) => (p.endsWith("/") ? f.startsWith(p) : f === p))) continue;
    if (!existsSync(join(repoRoot, f))) continue; // deleted in the working tree
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    cpSync(join(repoRoot, f), join(dir, f));
  }
  edit?.(dir);
  // A git repository with a remote: Nx derives the workspace identity from it, and every clone of the same remote
  // shares one Nx cache (and its index) under ~/.nx — which is how a fresh clone gets cache hits.
  git(dir, "init", "-q");
  git(dir, "add", "-A");
  git(dir, "-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "commit", "-q", "-m", "workspace");
  git(dir, "remote", "add", "origin", `https://example.invalid/nx-finetune-e2e/${dir.split("/").at(-2)}.git`);
  linkNodeModules(dir);
}

// A fresh clone of `src` (same remote, so the same Nx workspace identity), without any output folders.
export function cloneWorkspace(src: string, dest: string): void {
  execFileSync("git", ["clone", "-q", src, dest]);
  const url = git(src, "remote", "get-url", "origin").trim();
  git(dest, "remote", "set-url", "origin", url);
  linkNodeModules(dest);
}

function git(dir: string, ...args: string[]): string {
  return execFileSync("git", args, { cwd: dir, encoding: "utf8" });
}

function linkNodeModules(dir: string): void {
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

// Nx keeps the cache that all clones of a workspace share in ~/.nx/<workspace id>/, but only when HOME is not under
// /tmp (it falls back to a per-checkout .nx/cache there). So the test HOME lives in the repo's ignored tmp/ folder, or,
// when the repo itself is checked out under /tmp (as a CI clone may be), under the real home's ~/.cache.
function homeFor(shared: string): string {
  const id = createHash("sha256").update(shared).digest("hex").slice(0, 12);
  const underTmp = (p: string) => p === "/tmp" || p.startsWith("/tmp/");
  const base = underTmp(realpathSync(repoRoot)) ? join(homedir(), ".cache", "nx-finetune-e2e-homes") : join(repoRoot, "tmp", "e2e-homes");
  return join(base, id);
}

// The environment for nx in `dir`: no daemon or cloud, plain output, HOME (where Nx keeps the cache that all
// clones of a workspace share, ~/.nx/<workspace id>/) and the content store under `shared`.
export function nxEnvironment(dir: string, env: NxEnv): NodeJS.ProcessEnv {
  const vars: NodeJS.ProcessEnv = {
    ...process.env, NX_DAEMON: "false", NX_NO_CLOUD: "true", NX_TUI: "false", CI: "true", NO_COLOR: "1", FORCE_COLOR: "0",
    HOME: homeFor(env.shared), NXFT_STORE: join(env.shared, "store"), NXFT_ENGINE: env.engine, ...env.extra,
  };
  for (const v of ["NX_CACHE_DIRECTORY", "NX_WORKSPACE_DATA_DIRECTORY", "NX_PROJECT_GRAPH_CACHE_DIRECTORY"]) delete vars[v];
  mkdirSync(vars.HOME!, { recursive: true });
  return vars;
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

// Removes a test's temp root (the parent of `shared`) and its HOME.
export function removeTestDirs(shared: string): void {
  rmSync(dirname(shared), { recursive: true, force: true });
  rmSync(homeFor(shared), { recursive: true, force: true });
}
