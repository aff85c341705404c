// The watch target's file set: the recipe, its dataset files and its base files (absolute paths).
import { test } from "node:test";
import assert from "node:assert/strict";
import { join, resolve } from "node:path";
import { watchedPaths } from "../../plugins/nx-finetune/src/executors/watch";

test("watch covers the recipe, its data and its base files", () => {
  const root = resolve(__dirname, "..", "..");
  const recipe = join(root, "recipes", "demo", "recipe.json");
  assert.deepEqual(watchedPaths(recipe), [
    recipe,
    join(root, "datasets", "demo", "train.jsonl"),
    join(root, "recipes", "demo", "base", "config.json"),
    join(root, "recipes", "demo", "base"),
  ]);
});
