// One broken recipe beside the demo, with the real nx: every other project still builds (`nx run demo:dataset`),
// and the broken one's targets fail with its own errors, naming its recipe.json, line and field.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { makeWorkspace, removeTestDirs, runNx } from "./temp-workspace";

let ws = "";
let shared = "";
const nx = (...args: string[]) => runNx(ws, { shared, engine: process.env.NXFT_ENGINE ?? "" }, ...args);

before(() => {
  const root = mkdtempSync(join(tmpdir(), "nxft-bad-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, (dir) => {
    mkdirSync(join(dir, "recipes", "typo"), { recursive: true });
    writeFileSync(join(dir, "recipes", "typo", "recipe.json"), JSON.stringify({
      base: "../demo/base", data: { path: "../../datasets/demo/train.jsonl", format: "alpaka" },
      template: { name: "alpaca" }, lora: { r: 8 }, train: { steps: 10 }, export: { gguf: ["q8_0"] },
    }, null, 2) + "\n");
  });
});

after(() => removeTestDirs(shared));

test("a recipe with a typo fails only its own targets; the demo still builds", () => {
  const projects = nx("show", "projects");
  assert.equal(projects.code, 0, projects.out);
  assert.deepEqual(projects.out.trim().split("\n").filter((l) => /^\w+$/.test(l)).sort(), ["demo", "typo"]);
  const demo = nx("run", "demo:dataset");
  assert.equal(demo.code, 0, demo.out);
  const typo = nx("run", "typo:dataset");
  assert.notEqual(typo.code, 0, typo.out);
  assert.match(typo.out, /recipes\/typo\/recipe\.json:5:\d+ data\.format: must be one of "alpaca", "sharegpt", "messages", "text" \(got "alpaka"\)/);
  assert.doesNotMatch(typo.out, /Failed to process project graph/);
});
