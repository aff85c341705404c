// The plugin's module graph stays a tree a newcomer can read top-down: no import cycles (type-only imports count
// too: a reader follows them all the same), and no two modules with the same file name (index.ts aside).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, relative, resolve } from "node:path";

const SRC = resolve(__dirname, "..", "..", "plugins", "nx-finetune", "src");

function modules(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? (e.name === "files" ? [] : modules(join(dir, e.name))) : /\.(ts|cjs)$/.test(e.name) && !e.name.endsWith(".d.cts") ? [join(dir, e.name)] : []);
}

function resolveImport(from: string, spec: string): string | undefined {
  const base = resolve(dirname(from), spec);
  return [`${base}.ts`, base.endsWith(".cjs") ? base : "", join(base, "index.ts")].find((c) => c && existsSync(c));
}

test("no import cycles among the plugin's modules", () => {
  const graph = new Map<string, string[]>();
  for (const file of modules(SRC)) {
    const text = readFileSync(file, "utf8");
    const deps: string[] = [];
    // Static imports and re-exports of relative paths.
    for (const m of text.matchAll(/^(?:import|export)\s+(?:[^"';]*?\sfrom\s+)?["'](\.[^"']+)["']/gm)) {
      const target = resolveImport(file, m[1]);
      if (target) deps.push(target);
    }
    graph.set(file, deps);
  }
  const state = new Map<string, "visiting" | "done">();
  const stack: string[] = [];
  const visit = (f: string) => {
    if (state.get(f) === "done") return;
    if (state.get(f) === "visiting") assert.fail(`import cycle: ${[...stack.slice(stack.indexOf(f)), f].map((x) => relative(SRC, x)).join(" → ")}`);
    state.set(f, "visiting");
    stack.push(f);
    for (const d of graph.get(f) ?? []) visit(d);
    stack.pop();
    state.set(f, "done");
  };
  for (const f of graph.keys()) visit(f);
  assert.ok(graph.size > 30);
});

test("no two modules share a file name", () => {
  const seen = new Map<string, string>();
  for (const file of modules(SRC)) {
    const name = basename(file);
    if (name === "index.ts") continue;
    assert.ok(!seen.has(name), `${relative(SRC, file)} and ${seen.get(name)}`);
    seen.set(name, relative(SRC, file));
  }
});
