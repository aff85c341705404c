// recipe-generator.ts — the `recipe` generator: `nx g @nx-finetune/plugin:recipe my-tune` writes recipes/my-tune/recipe.json,
// a recipe that runs as generated. Without options it is the demo's shape: a tiny Llama the engine initializes
// (base/ holds its config.json and tokenizer), a sample alpaca dataset (data/train.jsonl), settings that train it
// on a CPU in a minute. --base (a local HF folder or a Hub id[@revision]) and --data (a file, or a Hub dataset id)
// point it at real ones.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, posix } from "node:path";
import { readNxJson, type Tree } from "@nx/devkit";
import { ignoreInGit, initGenerator, PLUGIN_NAME } from "../init/init";

export interface RecipeGeneratorOptions {
  name: string;
  directory?: string; // default recipes/<name>
  base?: string;      // "tiny" (default) | local HF folder (workspace-relative) | Hub id "org/name[@revision]"
  data?: string;      // "sample" (default) | local file (workspace-relative) | Hub dataset id "org/name"
  format?: "alpaca" | "sharegpt" | "messages" | "text";
  template?: "alpaca" | "chatml" | "llama3" | "base" | "text";
}

const FILES = join(__dirname, "files");
const HUB_ID = /^[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+(@[A-Za-z0-9._/-]+)?$/;

export async function recipeGenerator(tree: Tree, options: RecipeGeneratorOptions): Promise<void> {
  const name = options.name;
  if (!/^[a-z0-9][a-z0-9._-]*$/.test(name)) throw new Error(`name: "${name}" is not a valid project name (lowercase letters, digits, . _ -)`);
  const dir = (options.directory ?? `recipes/${name}`).replace(/\/+$/, "");
  if (tree.exists(join(dir, "recipe.json"))) throw new Error(`${dir}/recipe.json already exists`);
  const fromRecipe = (p: string) => posix.relative(dir, p) || ".";
  const format = options.format ?? "alpaca";

  // The base model.
  const baseOpt = options.base ?? "tiny";
  let base: unknown;
  let tiny = false;
  if (baseOpt === "tiny") {
    tiny = true;
    for (const f of readdirSync(join(FILES, "tiny-base"))) tree.write(`${dir}/base/${f}`, readFileSync(join(FILES, "tiny-base", f)));
    base = { init: "base/config.json", tokenizer: "base", seed: 0 };
  } else if (!tree.exists(baseOpt) && HUB_ID.test(baseOpt)) {
    const [hub, revision] = baseOpt.split("@");
    base = { hub, revision: revision ?? "main" };
  } else {
    if (!tree.exists(posix.join(baseOpt, "config.json"))) throw new Error(`base: ${baseOpt} is neither "tiny", a folder with config.json, nor a Hub id (org/name[@revision])`);
    base = fromRecipe(baseOpt);
  }

  // The dataset.
  const dataOpt = options.data ?? "sample";
  let data: Record<string, unknown>;
  if (dataOpt === "sample") {
    if (format !== "alpaca") throw new Error(`data: the sample dataset is in alpaca format; give --data with a ${format} file`);
    tree.write(`${dir}/data/train.jsonl`, readFileSync(join(FILES, "sample", "train.jsonl")));
    data = { path: "data/train.jsonl", format, eval_fraction: 0.1, split_seed: 0 };
  } else if (!tree.exists(dataOpt) && HUB_ID.test(dataOpt)) {
    const [hub, revision] = dataOpt.split("@");
    data = { hub, ...(revision ? { revision } : {}), split: "train", format, eval_fraction: 0.05 };
  } else {
    if (!tree.exists(dataOpt)) throw new Error(`data: ${dataOpt} is neither "sample", a file, nor a Hub dataset id (org/name)`);
    data = { path: fromRecipe(dataOpt), format, eval_fraction: 0.05 };
  }

  const template = options.template ?? (format === "text" ? "text" : "alpaca");
  // Tiny: the demo's settings (a frozen random base learns fixed answers fast with a high lr). Otherwise the usual
  // LoRA starting point for a 1–8B instruct model.
  const recipe = {
    ...(schemaRef(tree, dir) ? { $schema: schemaRef(tree, dir) } : {}),
    description: tiny ? "A tiny Llama initialized by the engine, trained on the sample dataset: runs on a CPU in a minute. Point base and data at your own to fine-tune for real." : `Fine-tune of ${baseOpt}.`,
    base,
    data,
    template: { name: template, max_seq_len: tiny ? 64 : 1024, packing: false, train_on: template === "text" ? "all" : "responses" },
    lora: { r: 16, alpha: 32, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
    train: tiny
      ? { lr: 0.003, schedule: "linear", warmup_steps: 10, steps: 300, batch_size: 8, seed: 0, eval_every: 100 }
      : { lr: 0.0002, schedule: "cosine", warmup_steps: 10, epochs: 1, batch_size: 4, grad_accum: 4, seed: 0, eval_every: 100 },
    quantize_base: null,
    export: { merged_dtype: tiny ? "f16" : "bf16", gguf: tiny ? ["q8_0"] : ["q4_k_m"], adapter_gguf: true, ollama: true },
    engine: { backend: "auto", threads: 0 },
    ...(tiny ? { chat: { prompt: "What is the capital of France?", max_new_tokens: 16 } } : {}),
  };
  tree.write(`${dir}/recipe.json`, JSON.stringify(recipe, null, 2) + "\n");

  // The plugin must be registered for the recipe to become a project; outputs outside recipes/ need their own ignore.
  const registered = (readNxJson(tree)?.plugins ?? []).some((p) => (typeof p === "string" ? p : p.plugin) === PLUGIN_NAME);
  if (!registered) await initGenerator(tree, {});
  if (!/^recipes\/[^/]+$/.test(dir)) ignoreInGit(tree, [`/${dir}/out/`], `nx-finetune: outputs of ${dir}`);
}

// "$schema" for editors: the installed package's schema, or this repository's copy.
function schemaRef(tree: Tree, dir: string): string | undefined {
  for (const p of ["node_modules/@nx-finetune/plugin/recipe.schema.json", "plugins/nx-finetune/recipe.schema.json"]) {
    if (tree.exists(p) || existsSync(join(tree.root, p))) return posix.relative(dir, p);
  }
  return undefined;
}

export default recipeGenerator;
