// index.ts — the Nx plugin: one project per recipe.json, with the inferred pipeline
//
//   base ─┐
//   dataset → shards → adapter → merged → gguf → pipeline        (+ chat, watch)
//                                                  └→ eval (reads every stage: losses, generations, report, gate)
//
// Each stage target is cached by exactly what it reads (nx.md §2.1):
//   - its own recipe fields through a `json` input (editing export.gguf doesn't touch `adapter`'s hash),
//   - upstream stages through `dependentTasksOutputFiles` on their small stage-manifest.json (early cutoff: a recipe
//     edit that leaves the shards byte-identical doesn't retrain),
//   - files outside Nx's view (datasets, base models) through a fast `runtime` fingerprint,
//   - the engine's sources, the plugin code that runs the stage, and `externalDependencies` (never "all of npm").
// Target options are the same for every stage shape ({recipe, stage}), so the project-config part of the hash,
// which covers every target of the project, never changes when a recipe does.
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { listFiles } from "./fingerprint.cjs";
import {
  createNodesFromFiles,
  type CreateNodes, type CreateNodesContext, type CreateNodesResult, type PostTasksExecution, type TargetConfiguration,
} from "@nx/devkit";
import { baseSpec, dataPaths, parseRecipe, RecipeError, type Recipe } from "./recipe";
import type { StageName } from "./stage-dir";
import { ensureStage } from "./stage-run";
import { updateLock } from "./lock";
import { storeRoot } from "./store";
import { isEngineSource } from "./engine";

export interface NxFinetunePluginOptions {
  // Content store for big artifacts; relative to the workspace root. $NXFT_STORE wins. Default .nxft/store.
  storeDir?: string;
}

export const STAGES = ["base", "dataset", "shards", "adapter", "merged", "gguf", "eval"] as const;
const EXECUTOR = "@nx-finetune/plugin:stage";
const PLUGIN_DIR = resolve(__dirname, "..");

const stageDescriptions: Record<StageName, string> = {
  base: "Resolve the base model: local folder (fingerprinted), Hub download (once, into the store) or engine init.",
  dataset: "Read and normalize the dataset rows (jsonl/json/parquet), split train/eval.",
  shards: "Render the prompt template, tokenize, write fixed-length token shards for the engine.",
  adapter: "Train the LoRA/QLoRA adapter with the native engine (metrics.jsonl + loss.svg).",
  merged: "Merge the adapter into the base weights (W + scale·B·A) and save in export.merged_dtype.",
  gguf: "Export GGUF files (one per export.gguf type), adapter GGUF and Ollama Modelfile.",
  eval: "Did it help? Base vs tuned eval loss/perplexity, sample generations, exact-match/contains, GGUF perplexity, " +
        "warnings, eval.gate; writes out/eval/report.html.",
};

// The recipe fields each stage reads — the only part of the recipe in its hash.
const stageFields: Record<StageName, string[]> = {
  base: ["base"],
  dataset: ["data"],
  shards: ["template"],
  adapter: ["lora", "train", "quantize_base", "engine.backend"],
  merged: ["export.merged_dtype"],
  gguf: ["export.gguf", "export.adapter_gguf", "export.ollama", "template.name", "name"],
  eval: ["eval", "template", "engine.backend", "name"],
};

// Fields hashed only when a recipe sets them to something other than their default, so recipes that do not use
// them keep their cache keys: engine.gpus (several GPUs sum gradients in another order: the same adapter to
// float rounding, not the same bytes).
function extraFields(stage: StageName, recipe: Recipe): string[] {
  return stage === "adapter" && recipe.engine.gpus !== undefined && recipe.engine.gpus !== 1 ? ["engine.gpus"] : [];
}

const stageDependsOn: Record<StageName, StageName[]> = {
  base: [],
  dataset: [],
  shards: ["dataset", "base"],
  adapter: ["shards", "base"],
  merged: ["adapter", "base", "shards"],   // shards: the tokenizer template.add_special_tokens grew
  gguf: ["merged", "adapter"],
  eval: ["gguf"],
};

// Small files Nx caches for each stage (big files are in the store, listed by stage-manifest.json).
export const stageOutputs: Record<StageName, string[]> = {
  base: ["stage-manifest.json", "run.json"],
  dataset: ["stage-manifest.json", "run.json"],
  shards: ["stage-manifest.json", "run.json", "manifest.json"],
  adapter: ["stage-manifest.json", "run.json", "metrics.jsonl", "loss.svg"],
  merged: ["stage-manifest.json", "run.json"],
  gguf: ["stage-manifest.json", "run.json"],
  eval: ["stage-manifest.json", "run.json", "metrics.json", "report.html"],
};

export const createNodes: CreateNodes<NxFinetunePluginOptions> = [
  "**/recipe.json",
  async (recipeFiles, options, context) => {
    // createNodesFromFiles collects per-file errors (AggregateCreateNodesError): one bad recipe doesn't hide others.
    return createNodesFromFiles(createRecipeProject, recipeFiles, options ?? {}, context);
  },
];

function createRecipeProject(recipeFile: string, options: NxFinetunePluginOptions | undefined, context: CreateNodesContext): CreateNodesResult {
  const projectRoot = dirname(recipeFile);
  // A recipe.json is ours only when it declares our schema or sits under recipes/ (other tools use the name too).
  const text = readFileSync(join(context.workspaceRoot, recipeFile), "utf8");
  if (!text.includes("recipe.schema.json") && !`/${recipeFile}`.includes("/recipes/")) return {};
  // Structure only at graph time; missing files are reported when a stage runs (the data may not exist yet).
  let recipe: Recipe;
  try {
    recipe = parseRecipe(text, recipeFile);
  } catch (e) {
    if (!(e instanceof RecipeError)) throw e;
    return brokenRecipeProject(projectRoot, e);
  }
  const name = recipe.name ?? basename(projectRoot);
  const targets: Record<string, TargetConfiguration> = {};
  for (const stage of STAGES) targets[stage] = stageTarget(stage, recipe, recipeFile, options ?? {}, context.workspaceRoot);

  targets.pipeline = {
    executor: "nx:noop",
    dependsOn: ["gguf"],
    cache: false,
    metadata: { technologies: ["nx-finetune"], description: "Everything: dataset → shards → adapter → merged → gguf." },
  };
  targets.chat = {
    executor: "@nx-finetune/plugin:chat",
    // No dependsOn: the executor brings the adapter up to date itself, quietly (src/executors/chat.ts).
    options: { recipe: "{projectRoot}/recipe.json" },
    cache: false,
    metadata: {
      technologies: ["nx-finetune"],
      description: "Chat with the trained model: renders the prompt with the recipe's template and streams the reply.",
      help: { command: `nx run ${name}:chat --prompt="…"`, example: { options: { prompt: recipe.chat.prompt ?? "Hello" } } },
    },
  };
  targets.publish = {
    executor: "@nx-finetune/plugin:publish",
    options: { recipe: "{projectRoot}/recipe.json" },
    // After eval: a failing quality gate stops the push.
    dependsOn: ["eval"],
    cache: false,
    metadata: {
      technologies: ["nx-finetune"],
      description: "Push the adapter, merged model and/or GGUF files to the Hugging Face Hub with a generated model card (HF_TOKEN from .env).",
      help: { command: `nx run ${name}:publish --repo=<user>/<name>`, example: { options: { repo: recipe.publish.repo ?? "me/" + name, dryRun: true } } },
    },
  };
  targets.watch = {
    executor: "@nx-finetune/plugin:watch",
    options: { recipe: "{projectRoot}/recipe.json" },
    continuous: true,
    cache: false,
    metadata: { technologies: ["nx-finetune"], description: "Rerun the pipeline (up to gguf) whenever the recipe or its data change." },
  };
  targets.gc = {
    executor: "@nx-finetune/plugin:gc",
    cache: false,
    metadata: {
      technologies: ["nx-finetune"],
      description: "Prune content-store blobs no out/ folder or Nx cache entry references (the store is shared: covers every recipe).",
      help: { command: `nx run ${name}:gc --dry-run`, example: { options: { dryRun: true } } },
    },
  };
  return {
    projects: {
      [projectRoot]: {
        name,
        root: projectRoot,
        projectType: "application",
        tags: ["nx-finetune"],
        targets,
        metadata: {
          description: recipe.description ?? `Fine-tune recipe ${recipeFile}`,
          technologies: ["nx-finetune"],
          targetGroups: { "fine-tune": [...STAGES, "pipeline"], try: ["chat", "watch"], share: ["publish"], store: ["gc"] },
        },
      },
    },
  };
}

// A recipe with mistakes still becomes a project, so that one typo fails only its own targets (each reports the
// recipe's errors, file:line field, when it runs) and every other project of the workspace still builds. Throwing
// here would fail every Nx command in the workspace ("Failed to process project graph").
function brokenRecipeProject(projectRoot: string, error: RecipeError): CreateNodesResult {
  const name = basename(projectRoot);
  const description = `recipe.json has errors (run any target to see them):\n${error.message}`;
  const targets: Record<string, TargetConfiguration> = {};
  for (const stage of STAGES) {
    targets[stage] = {
      executor: EXECUTOR,
      options: { recipe: "{projectRoot}/recipe.json", stage },
      dependsOn: [...stageDependsOn[stage]],
      cache: false,
      metadata: { technologies: ["nx-finetune"], description },
    };
  }
  targets.pipeline = { executor: "nx:noop", dependsOn: ["gguf"], cache: false, metadata: { technologies: ["nx-finetune"], description } };
  return {
    projects: {
      [projectRoot]: { name, root: projectRoot, projectType: "application", tags: ["nx-finetune"], targets, metadata: { description, technologies: ["nx-finetune"] } },
    },
  };
}

function stageTarget(stage: StageName, recipe: Recipe, recipeFile: string, options: NxFinetunePluginOptions, workspaceRoot: string): TargetConfiguration {
  const inputs: TargetConfiguration["inputs"] = [{ json: "{projectRoot}/recipe.json", fields: [...stageFields[stage], ...extraFields(stage, recipe)] }];
  // eval reads every upstream stage (eval shards, dataset rows), not only gguf: an eval-split edit that leaves the
  // adapter byte-identical must still rerun it, so its manifest input is transitive.
  if (stageDependsOn[stage].length > 0) inputs.push({ dependentTasksOutputFiles: "**/stage-manifest.json", ...(stage === "eval" ? { transitive: true } : {}) });
  // Recipe paths are relative to the recipe's folder. Small files inside the workspace are hashed by Nx itself
  // (includeIgnored: also when git-ignored); big or outside ones by a fingerprint command (runtime input).
  const paths = externalPaths(stage, recipe).map((p) => relativeOrAbsolute(workspaceRoot, resolve(workspaceRoot, dirname(recipeFile), p)));
  const fingerprinted: string[] = [];
  for (const p of paths) {
    const fileset = smallWorkspaceFileset(workspaceRoot, p);
    if (fileset) inputs.push({ fileset, includeIgnored: true });
    else fingerprinted.push(p);
  }
  if (fingerprinted.length > 0) inputs.push({ runtime: fingerprintCommand(fingerprinted, options, workspaceRoot) });
  inputs.push(...codeInputs(stage, workspaceRoot));
  // A prebuilt engine ($NXFT_ENGINE) is identified by its path; the in-repo one by its sources (codeInputs).
  if (usesEngine(stage, recipe)) inputs.push({ env: "NXFT_ENGINE" });
  return {
    executor: EXECUTOR,
    options: { recipe: "{projectRoot}/recipe.json", stage },
    dependsOn: [...stageDependsOn[stage]],
    cache: true,
    inputs,
    outputs: stageOutputs[stage].map((f) => `{projectRoot}/out/${stage}/${f}`),
    // One accelerator: training and merging run alone.
    parallelism: !(stage === "adapter" || stage === "merged" || stage === "eval"),
    metadata: {
      technologies: ["nx-finetune"],
      description: stageDescriptions[stage],
      help: { command: `nx run ${recipe.name ?? basename(dirname(recipeFile))}:${stage}`, example: {} },
    },
  };
}

function usesEngine(stage: StageName, recipe: Recipe): boolean {
  if (stage === "base") return baseSpec(recipe).kind === "init";
  return stage === "adapter" || stage === "merged" || stage === "gguf" || stage === "eval";
}

// Paths read by a stage that Nx can't hash cheaply (outside the workspace, ignored, or huge): fingerprinted.
function externalPaths(stage: StageName, recipe: Recipe): string[] {
  if (stage === "dataset") return dataPaths(recipe);
  if (stage !== "base") return [];
  const base = baseSpec(recipe);
  if (base.kind === "local") return [base.path];
  if (base.kind === "init") return [base.init, base.tokenizer];
  return [];
}

// Nx reads a fileset input in full whenever its mtime changes (and on every run without the daemon), so only
// small inputs go that way.
const NX_HASHED_MAX_BYTES = 64 << 20;

function smallWorkspaceFileset(workspaceRoot: string, p: string): string | undefined {
  if (isAbsolute(p) || p.startsWith("..")) return undefined;
  const abs = join(workspaceRoot, p);
  if (!existsSync(abs)) return `{workspaceRoot}/${p}`; // a missing exact path still takes part in the hash
  const stat = statSync(abs);
  if (!stat.isDirectory()) return stat.size <= NX_HASHED_MAX_BYTES ? `{workspaceRoot}/${p}` : undefined;
  let total = 0;
  for (const f of listFiles(abs)) if ((total += statSync(join(abs, f)).size) > NX_HASHED_MAX_BYTES) return undefined;
  return `{workspaceRoot}/${p}/**/*`;
}

function fingerprintCommand(paths: string[], options: NxFinetunePluginOptions, workspaceRoot: string): string {
  const script = relativeOrAbsolute(workspaceRoot, join(PLUGIN_DIR, "src", "fingerprint.cjs"));
  // The cache location is resolved by the script (so $NXFT_STORE on one machine doesn't change hashes elsewhere).
  const store = options.storeDir ? ` --store ${shellQuote(options.storeDir)}` : "";
  return `node ${shellQuote(script)}${store} ${paths.map(shellQuote).join(" ")}`;
}

// Code that decides a stage's output: the engine sources and the plugin's stage code.
function codeInputs(stage: StageName, workspaceRoot: string): TargetConfiguration["inputs"] & object {
  const plugin = relative(workspaceRoot, PLUGIN_DIR);
  const inWorkspace = !plugin.startsWith("..") && !plugin.startsWith(sep) && existsSync(join(workspaceRoot, plugin));
  const p = plugin.split(sep).join("/");
  const inputs: Array<string | { externalDependencies: string[] }> = [];
  if (inWorkspace) {
    inputs.push(`{workspaceRoot}/${p}/src/*.ts`, `{workspaceRoot}/${p}/src/*.cjs`, `{workspaceRoot}/${p}/src/stages/${stage}.ts`);
    if (stage === "dataset" || stage === "shards") inputs.push(`{workspaceRoot}/${p}/src/data/**/*`);
    if (stage === "gguf") inputs.push(`{workspaceRoot}/${p}/src/gguf/**/*`);
    if (stage === "eval") inputs.push(`{workspaceRoot}/${p}/src/eval/**/*`, `{workspaceRoot}/${p}/src/data/**/*`);
  }
  // The engine's sources are hashed where the workspace holds them (this repository); an installed plugin's
  // engine is identified by the package version (externalDependencies below).
  if (isEngineSource(join(workspaceRoot, "native")) && (stage === "base" || stage === "adapter" || stage === "merged" || stage === "gguf" || stage === "eval")) {
    inputs.push("{workspaceRoot}/native/src/**/*", "{workspaceRoot}/native/cmake/**/*", "{workspaceRoot}/native/CMakeLists.txt");
  }
  const npm: Record<StageName, string[]> = {
    base: ["execa", "dotenv"],
    dataset: ["hyparquet"],
    shards: ["@huggingface/tokenizers", "@huggingface/jinja"],
    adapter: ["execa"],
    merged: ["execa"],
    gguf: ["execa"],
    // node-llama-cpp measures GGUF perplexity when installed (optional): hashed only when it is there.
    eval: ["execa", "@huggingface/tokenizers", ...(hasPackage(workspaceRoot, "node-llama-cpp") ? ["node-llama-cpp"] : [])],
  };
  // Installed from npm, the plugin is an external node whose version Nx can hash; a linked checkout elsewhere
  // (development) has no stable identity to hash.
  const installed = !inWorkspace && PLUGIN_DIR.split(sep).includes("node_modules");
  inputs.push({ externalDependencies: installed ? [...npm[stage], "@nx-finetune/plugin"] : npm[stage] });
  return inputs;
}

// Whether the workspace has an npm package (Nx hashes externalDependencies from the workspace's lock file).
function hasPackage(workspaceRoot: string, pkg: string): boolean {
  return existsSync(join(workspaceRoot, "node_modules", pkg, "package.json"));
}

function relativeOrAbsolute(from: string, to: string): string {
  const rel = relative(from, to);
  return rel.startsWith("..") ? to : rel.split(sep).join("/");
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./@:=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

// After every `nx run`, relink the big files of each of our stages that succeeded — including those Nx restored
// from its cache, whose executor never ran (Nx restored only stage-manifest.json). Cheap: a stat per file. Blobs the
// store lacks come from the remote store, or the stage reruns (stage-run.ts ensureStage). Pipeline order, so a
// rerun finds its upstream in place.
export const postTasksExecution: PostTasksExecution<NxFinetunePluginOptions> = async (options, context) => {
  const store = storeRoot(context.workspaceRoot, options?.storeDir);
  const ok = new Set(["success", "local-cache", "local-cache-kept-existing", "remote-cache"]);
  const results = Object.values(context.taskResults)
    .filter((r) => ok.has(r.status) && (STAGES as readonly string[]).includes(r.task.target.target) && r.task.projectRoot)
    .sort((a, b) => STAGES.indexOf(a.task.target.target as StageName) - STAGES.indexOf(b.task.target.target as StageName));
  const locks = new Set<string>();
  for (const result of results) {
    const stage = result.task.target.target as StageName;
    const recipeFile = join(context.workspaceRoot, result.task.projectRoot!, "recipe.json");
    if (!existsSync(join(dirname(recipeFile), "out", stage, "stage-manifest.json")) || !existsSync(recipeFile)) continue;
    await ensureStage({ workspaceRoot: context.workspaceRoot, recipeFile, projectName: result.task.target.project, store,
                        log: (line) => console.log(line) }, stage);
    if (stage === "base" || stage === "dataset") locks.add(recipeFile);
  }
  // nxft.lock.json (lock.ts): the data and base digests that make `nx affected` see data and base changes.
  for (const recipeFile of locks) {
    if (updateLock(context.workspaceRoot, recipeFile, store)) console.log(`nx-finetune: updated ${relative(context.workspaceRoot, join(dirname(recipeFile), "nxft.lock.json"))} (commit it)`);
  }
};
