// The generators on an in-memory workspace: init (what `nx add` runs) and recipe (a recipe that parses and whose
// files exist; the pack-and-install e2e runs one to GGUF).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createTreeWithEmptyWorkspace } from "@nx/devkit/testing";
import { readNxJson, updateNxJson } from "@nx/devkit";
import { initGenerator } from "../../plugins/nx-finetune/src/generators/init/init";
import { recipeGenerator } from "../../plugins/nx-finetune/src/generators/recipe/recipe-generator";
import { parseRecipe } from "../../plugins/nx-finetune/src/recipe";

test("init registers the plugin once, turns analytics off only when unset, git-ignores the store and out/ once", async () => {
  const tree = createTreeWithEmptyWorkspace();
  tree.write(".gitignore", "node_modules\n/.nxft/");
  await initGenerator(tree);
  await initGenerator(tree);
  const nxJson = readNxJson(tree)!;
  assert.deepEqual(nxJson.plugins?.filter((p) => p === "@nx-finetune/plugin"), ["@nx-finetune/plugin"]);
  assert.equal((nxJson as any).analytics, false);
  assert.equal(tree.read(".gitignore", "utf-8"), "node_modules\n/.nxft/\n\n# nx-finetune: the content store and stage outputs (small manifests are in the Nx cache)\n/recipes/*/out/\n");

  const chosen = createTreeWithEmptyWorkspace();
  updateNxJson(chosen, { ...readNxJson(chosen)!, analytics: true } as any);
  await initGenerator(chosen);
  assert.equal((readNxJson(chosen) as any).analytics, true, "a workspace's own choice is kept");
});

test("recipe with defaults: a valid recipe with a tiny base and sample data, registered even without init", async () => {
  const tree = createTreeWithEmptyWorkspace();
  await recipeGenerator(tree, { name: "mytune" });
  const text = tree.read("recipes/mytune/recipe.json", "utf-8")!;
  const recipe = parseRecipe(text, "recipes/mytune/recipe.json");
  assert.deepEqual(recipe.base, { init: "base/config.json", tokenizer: "base", seed: 0, dtype: "f32" });
  for (const f of ["base/config.json", "base/tokenizer.json", "base/tokenizer_config.json", "data/train.jsonl"]) {
    assert.ok(tree.exists(`recipes/mytune/${f}`), f);
  }
  assert.equal(recipe.data.path, "data/train.jsonl");
  assert.ok(readNxJson(tree)!.plugins?.includes("@nx-finetune/plugin"));
  await assert.rejects(recipeGenerator(tree, { name: "mytune" }), /recipes\/mytune\/recipe\.json already exists/);
});

test("recipe with a Hub base, a local data file elsewhere and a chat template", async () => {
  const tree = createTreeWithEmptyWorkspace();
  tree.write("data/chats.jsonl", '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}\n');
  await recipeGenerator(tree, { name: "chatty", directory: "ml/chatty", base: "Qwen/Qwen2.5-0.5B-Instruct@main", data: "data/chats.jsonl", format: "messages", template: "chatml" });
  const recipe = parseRecipe(tree.read("ml/chatty/recipe.json", "utf-8")!, "ml/chatty/recipe.json");
  assert.deepEqual(recipe.base, { hub: "Qwen/Qwen2.5-0.5B-Instruct", revision: "main" });
  assert.equal(recipe.data.path, "../../data/chats.jsonl");
  assert.equal(recipe.template.name, "chatml");
  assert.match(tree.read(".gitignore", "utf-8")!, /^\/ml\/chatty\/out\/$/m);
  await assert.rejects(recipeGenerator(tree, { name: "x", base: "no/such/folder" }), /base: no\/such\/folder is neither "tiny"/);
  await assert.rejects(recipeGenerator(tree, { name: "Bad Name" }), /not a valid project name/);
});
