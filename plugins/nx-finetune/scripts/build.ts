// build.ts — the publishable package in plugins/nx-finetune/dist/: compiled JavaScript (tsc, CommonJS with real
// dynamic import() for the ESM-only execa and hyparquet), schemas, the recipe generator's files, and the engine's
// C++ sources (native/: CMakeLists.txt, cmake/, src/ — no tests, fuzzers or build folders), which the plugin builds
// once into a cache folder on first use (src/engine.ts). Its package.json lists only what the plugin needs at run
// time: test tools (node-llama-cpp, @lenml/*, tsx) never reach a user's install.
//   node --import tsx plugins/nx-finetune/scripts/build.ts [--pack <folder>]   (--pack: also `npm pack` into it)
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const PLUGIN = resolve(__dirname, "..");
const REPO = resolve(PLUGIN, "..", "..");
const DIST = join(PLUGIN, "dist");

// Packages the plugin imports at run time (versions as the repository pins them).
const RUNTIME_DEPENDENCIES = ["@huggingface/hub", "@huggingface/jinja", "@huggingface/tokenizers", "@nx/devkit", "chokidar", "dotenv", "execa", "hyparquet", "jsonc-parser"];

// tsc errors the build accepts: TS1479 for the two dual packages whose type definitions are ESM-only while their
// "require" export condition (what the CommonJS output loads) is a real CommonJS build.
const ACCEPTED = /^src\/data\/(templates|tokenizer)\.ts\(\d+,\d+\): error TS1479: .*\n(  .*\n)*/gm;

function main(): void {
  rmSync(DIST, { recursive: true, force: true });
  const tsc = require.resolve("typescript/bin/tsc", { paths: [REPO] });
  const r = spawnSync(process.execPath, [tsc, "-p", join(PLUGIN, "tsconfig.build.json")], { cwd: PLUGIN, encoding: "utf8" });
  const errors = (r.stdout + r.stderr).replace(ACCEPTED, "").trim();
  if (errors) throw new Error(`tsc failed:\n${errors}`);
  if (!existsSync(join(DIST, "src", "index.js"))) throw new Error(`tsc wrote no ${join(DIST, "src", "index.js")}`);

  // Non-TypeScript files of src/: JSON schemas, the generator's files.
  for (const f of walk(join(PLUGIN, "src"))) {
    if (/\.(ts|cts|cjs)$/.test(f)) continue;
    copy(join(PLUGIN, "src", f), join(DIST, "src", f));
  }
  for (const f of ["recipe.schema.json", "README.md"]) copy(join(PLUGIN, f), join(DIST, f));
  for (const f of ["executors.json", "generators.json"]) {
    const text = readFileSync(join(PLUGIN, f), "utf8").replace(/"(\.\/src\/[^"]+)\.ts"/g, '"$1.js"');
    writeFileSync(join(DIST, f), text);
  }

  // The engine's sources, and a hash of them that names the folder the engine is built into.
  const native = join(REPO, "native");
  const hash = createHash("sha256");
  for (const part of ["CMakeLists.txt", "cmake", "src"]) {
    const from = join(native, part);
    for (const f of statSync(from).isDirectory() ? walk(from).map((x) => join(part, x)) : [part]) {
      copy(join(native, f), join(DIST, "native", f));
      hash.update(`${f}\0`).update(readFileSync(join(native, f))).update("\0");
    }
  }
  writeFileSync(join(DIST, "native", "SOURCE_SHA256"), hash.digest("hex") + "\n");

  const own = JSON.parse(readFileSync(join(PLUGIN, "package.json"), "utf8"));
  const root = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8"));
  const pkg = {
    name: own.name,
    version: own.version,
    description: own.description,
    license: root.license,
    keywords: ["nx", "nx-plugin", "llm", "fine-tuning", "lora", "gguf"],
    main: "./src/index.js",
    exports: {
      ".": "./src/index.js",
      "./package.json": "./package.json",
      "./executors.json": "./executors.json",
      "./generators.json": "./generators.json",
      "./recipe.schema.json": "./recipe.schema.json",
    },
    executors: "./executors.json",
    generators: "./generators.json",
    engines: root.engines,
    dependencies: Object.fromEntries(RUNTIME_DEPENDENCIES.map((d) => {
      const v = root.dependencies[d];
      if (!v) throw new Error(`package.json: ${d} is not a dependency of the repository`);
      return [d, v];
    })),
    peerDependencies: { nx: `>=${root.dependencies.nx.replace(/^\D*/, "").split(".")[0]}.0.0` },
  };
  writeFileSync(join(DIST, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
  console.log(`built ${relative(REPO, DIST)} (${walk(DIST).length} files)`);

  const at = process.argv.indexOf("--pack");
  if (at > 0) {
    const out = resolve(process.argv[at + 1] ?? ".");
    mkdirSync(out, { recursive: true });
    const tgz = execFileSync("npm", ["pack", "--silent", "--pack-destination", out], { cwd: DIST, encoding: "utf8" }).trim().split("\n").pop()!;
    console.log(join(out, tgz));
  }
}

function walk(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, prefix), { withFileTypes: true })) {
    const rel = join(prefix, e.name);
    if (e.isDirectory()) out.push(...walk(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

function copy(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true });
  cpSync(from, to);
}

main();
