// createNodes: one project per recipe, the pipeline targets with per-stage inputs, outputs, dependsOn, metadata.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CreateNodesContext, CreateNodesResult, TargetConfiguration } from "@nx/devkit";
import { createNodes } from "../../plugins/nx-finetune/src/index";

process.env.NX_CACHE_PROJECT_GRAPH = "false";
delete process.env.NXFT_ENGINE;

const recipe = {
  $schema: "../../plugins/nx-finetune/recipe.schema.json",
  base: { init: "base/config.json", tokenizer: "base" },
  data: { path: "../../datasets/tiny.jsonl", format: "alpaca" },
  template: { name: "chatml", max_seq_len: 128 },
  lora: { r: 8 },
  train: { steps: 10 },
  export: { gguf: ["q8_0", "f16"] },
};

function workspace(files: Record<string, unknown>): string {
  const root = mkdtempSync(join(tmpdir(), "nxft-nodes-"));
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, ".."), { recursive: true });
    writeFileSync(join(root, path), typeof content === "string" ? content : JSON.stringify(content, null, 2));
  }
  return root;
}

async function run(root: string, files: string[], options = {}) {
  const context: CreateNodesContext = { nxJsonConfiguration: {}, workspaceRoot: root };
  return (await createNodes[1](files, options, context)) as Array<readonly [string, CreateNodesResult]>;
}

test("glob matches recipe.json files", () => {
  assert.equal(createNodes[0], "**/recipe.json");
});

test("one project per recipe with the pipeline targets", async () => {
  const root = workspace({ "recipes/chat-a/recipe.json": recipe });
  const [[file, result]] = await run(root, ["recipes/chat-a/recipe.json"]);
  assert.equal(file, "recipes/chat-a/recipe.json");
  const project = result.projects!["recipes/chat-a"];
  assert.equal(project.name, "chat-a");
  const targets = project.targets!;
  assert.deepEqual(Object.keys(targets), ["base", "dataset", "shards", "adapter", "merged", "gguf", "eval", "pipeline", "chat", "publish", "watch", "gc"]);
  const deps = (t: string) => targets[t].dependsOn;
  assert.deepEqual(deps("dataset"), []);
  assert.deepEqual(deps("shards"), ["dataset", "base"]);
  assert.deepEqual(deps("adapter"), ["shards", "base"]);
  assert.deepEqual(deps("merged"), ["adapter", "base", "shards"]);
  assert.deepEqual(deps("gguf"), ["merged", "adapter"]);
  assert.deepEqual(deps("pipeline"), ["gguf"]);
  assert.deepEqual(deps("eval"), ["gguf"]);
  // Publishing waits for eval, so a failing quality gate stops it; a push is never cached.
  assert.deepEqual(deps("publish"), ["eval"]);
  assert.equal(targets.publish.cache, false);
  assert.equal(targets.pipeline.executor, "nx:noop");
  assert.equal(targets.chat.cache, false);
  assert.equal(targets.watch.continuous, true);
  assert.deepEqual(project.metadata!.targetGroups, { "fine-tune": ["base", "dataset", "shards", "adapter", "merged", "gguf", "eval", "pipeline"], try: ["chat", "watch"], share: ["publish"], store: ["gc"] });
});

test("stage targets: stable options, cache, small outputs, per-stage inputs", async () => {
  // A workspace that holds the engine's sources (as this repository does).
  const root = workspace({ "recipes/r/recipe.json": recipe, "native/CMakeLists.txt": "project(finetune_engine VERSION 0.1.0 LANGUAGES CXX)\n" });
  const [[, result]] = await run(root, ["recipes/r/recipe.json"]);
  const targets = result.projects!["recipes/r"].targets!;
  for (const stage of ["base", "dataset", "shards", "adapter", "merged", "gguf", "eval"]) {
    const t = targets[stage] as TargetConfiguration;
    assert.equal(t.executor, "@nx-finetune/plugin:stage");
    // Options are identical in shape for every recipe and every edit: they go into every task's hash.
    assert.deepEqual(t.options, { recipe: "{projectRoot}/recipe.json", stage });
    assert.equal(t.cache, true);
    assert.ok(t.outputs!.every((o) => o.startsWith(`{projectRoot}/out/${stage}/`)), JSON.stringify(t.outputs));
    assert.ok(t.outputs!.includes(`{projectRoot}/out/${stage}/stage-manifest.json`));
    assert.ok(!t.outputs!.some((o) => o.includes("*")), "outputs list small files, never globs over big ones");
    const inputs = t.inputs as any[];
    assert.ok(inputs.some((i) => i.externalDependencies), `${stage} declares externalDependencies`);
    assert.ok((t.metadata as any).description.length > 10);
  }
  const fields = (stage: string) => (targets[stage].inputs as any[]).find((i) => i.json)!;
  assert.deepEqual(fields("dataset"), { json: "{projectRoot}/recipe.json", fields: ["data"] });
  assert.deepEqual(fields("shards").fields, ["template"]);
  assert.deepEqual(fields("adapter").fields, ["lora", "train", "quantize_base", "engine.backend"]);
  assert.deepEqual(fields("merged").fields, ["export.merged_dtype"]);
  assert.deepEqual(fields("gguf").fields, ["export.gguf", "export.adapter_gguf", "export.ollama", "template.name", "name"]);
  assert.deepEqual(fields("eval").fields, ["eval", "template", "engine.backend", "name"]);
  // eval reads the eval shards and dataset rows too, which can change while gguf's manifest does not.
  assert.ok((targets.eval.inputs as any[]).some((i) => i.dependentTasksOutputFiles === "**/stage-manifest.json" && i.transitive === true));
  // Upstream manifests (early cutoff) for every stage with dependencies, and nothing else of the upstream outputs.
  for (const stage of ["shards", "adapter", "merged", "gguf"]) {
    assert.ok((targets[stage].inputs as any[]).some((i) => i.dependentTasksOutputFiles === "**/stage-manifest.json"), stage);
  }
  assert.ok(!(targets.dataset.inputs as any[]).some((i) => i.dependentTasksOutputFiles));
  // Small data and base files inside the workspace are hashed by Nx (also when git-ignored), with
  // workspace-relative paths; a missing path still takes part in the hash.
  const filesets = (stage: string) => (targets[stage].inputs as any[]).filter((i) => i.includeIgnored);
  assert.deepEqual(filesets("dataset"), [{ fileset: "{workspaceRoot}/datasets/tiny.jsonl", includeIgnored: true }]);
  assert.deepEqual(filesets("base"), [
    { fileset: "{workspaceRoot}/recipes/r/base/config.json", includeIgnored: true },
    { fileset: "{workspaceRoot}/recipes/r/base", includeIgnored: true },
  ]);
  assert.ok(!(targets.adapter.inputs as any[]).some((i) => i.runtime || i.includeIgnored));
  // Engine sources matter to the engine stages only.
  assert.ok((targets.adapter.inputs as any[]).includes("{workspaceRoot}/native/src/**/*"));
  assert.ok(!(targets.dataset.inputs as any[]).includes("{workspaceRoot}/native/src/**/*"));
  // A workspace without them (the plugin installed from npm) hashes no native/ of its own.
  const [[, other]] = await run(workspace({ "recipes/r/recipe.json": recipe }), ["recipes/r/recipe.json"]);
  assert.ok(!(other.projects!["recipes/r"].targets!.adapter.inputs as any[]).some((i) => typeof i === "string" && i.includes("native")));
  assert.equal(targets.adapter.parallelism, false);
  assert.equal(targets.dataset.parallelism, true);
});

test("data outside the workspace or too big for Nx to read is fingerprinted by a runtime command", async () => {
  const outside = mkdtempSync(join(tmpdir(), "nxft-outside-"));
  writeFileSync(join(outside, "big.jsonl"), "");
  truncateSync(join(outside, "big.jsonl"), 65 << 20); // sparse: 65 MiB without writing them
  const root = workspace({
    "recipes/h/recipe.json": { ...recipe, name: "hubby", base: { hub: "org/model", revision: "abc123" }, data: { path: [join(outside, "big.jsonl"), "big.jsonl"], format: "alpaca" } },
  });
  writeFileSync(join(root, "recipes", "h", "big.jsonl"), "");
  truncateSync(join(root, "recipes", "h", "big.jsonl"), 65 << 20);
  const [[, result]] = await run(root, ["recipes/h/recipe.json"], { storeDir: "/data/cas" });
  const project = result.projects!["recipes/h"];
  assert.equal(project.name, "hubby");
  assert.ok(!(project.targets!.base.inputs as any[]).some((i) => i.runtime || i.includeIgnored), "a hub base is pinned by its revision");
  const runtime = (project.targets!.dataset.inputs as any[]).find((i) => i.runtime).runtime as string;
  assert.match(runtime, new RegExp(`^node \\S*fingerprint\\.cjs --store /data/cas ${join(outside, "big.jsonl")} recipes/h/big.jsonl$`));
  assert.ok(!(project.targets!.dataset.inputs as any[]).some((i) => i.includeIgnored));
});

test("recipe.json files of other tools are ignored; a bad recipe becomes a project whose targets fail with file:line", async () => {
  const root = workspace({
    "tools/other/recipe.json": { cake: true },
    "recipes/bad/recipe.json": { ...recipe, lora: { r: -1 } },
    "recipes/broken/recipe.json": '{ "base": "x", ',
    "recipes/good/recipe.json": recipe,
  });
  const [[, other]] = await run(root, ["tools/other/recipe.json"]);
  assert.deepEqual(other, {});
  // No error escapes createNodes: one typo must not fail every Nx command of the workspace.
  const results = new Map(await run(root, ["recipes/bad/recipe.json", "recipes/broken/recipe.json", "recipes/good/recipe.json"]));
  assert.ok(results.get("recipes/good/recipe.json")!.projects!["recipes/good"].targets!.gguf.cache);
  for (const [name, error] of [["bad", /recipes\/bad\/recipe\.json:\d+:\d+ lora\.r: must be > 0 \(got -1\)/], ["broken", /recipes\/broken\/recipe\.json:1:\d+ \(recipe\): invalid JSON/]] as const) {
    const project = results.get(`recipes/${name}/recipe.json`)!.projects![`recipes/${name}`];
    assert.equal(project.name, name);
    assert.deepEqual(Object.keys(project.targets!).sort(), ["adapter", "base", "dataset", "eval", "gguf", "merged", "pipeline", "shards"]);
    // The stage executor reloads the recipe and fails with its errors; nothing of a broken recipe is cached.
    assert.deepEqual(project.targets!.dataset.options, { recipe: "{projectRoot}/recipe.json", stage: "dataset" });
    assert.equal(project.targets!.dataset.executor, "@nx-finetune/plugin:stage");
    assert.equal(project.targets!.dataset.cache, false);
    assert.match(project.metadata!.description!, error);
  }
});
