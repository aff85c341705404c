// publish.ts — the `publish` executor: pushes the adapter, the merged model and/or the GGUF files to a Hugging Face
// Hub model repo with a generated model card (src/publish/model-card.ts). It runs after `eval` (dependsOn), so a
// failing quality gate stops it. Never cached: pushing is a side effect.
//   nx run demo:publish --repo=me/demo-lora          (or publish.repo in the recipe)
//   nx run demo:publish --dryRun                     (writes out/publish/README.md and lists the files, no network)
// HF_TOKEN comes from the environment or .env (src/hub.ts) and is never logged.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { writeFileAtomic, writeJsonAtomic } from "../atomic";
import type { DatasetManifest } from "../data/types";
import { TOKENIZER_FILES } from "../data/added-tokens";
import { hubToken } from "../hub-client";
import { modelCard } from "../publish/model-card";
import { pushToHub, PublishError, type PublishFile } from "../publish/hub-publish";
import { loadRecipe, RecipeError } from "../recipe";
import { materializeStage, readManifest, stageDir, type StageName } from "../stage-dir";
import { storeRoot } from "../store";
import { pluginOptions } from "./stage";

export interface PublishExecutorOptions { recipe: string; repo?: string; dryRun?: boolean }

const REPO_ID = /^[A-Za-z0-9._-]+\/[A-Za-z0-9._-]+$/;

export default async function publishExecutor(options: PublishExecutorOptions, context: ExecutorContext): Promise<{ success: boolean }> {
  const workspaceRoot = context.root;
  const recipeFile = resolve(workspaceRoot, options.recipe);
  const projectDir = dirname(recipeFile);
  const project = context.projectName ?? "recipe";
  const log = (line: string) => console.log(line);
  try {
    const recipe = loadRecipe(recipeFile, workspaceRoot);
    const repo = options.repo ?? recipe.publish.repo;
    if (!repo) throw new PublishError(`no repo to publish to: pass --repo=<user or org>/<name> or set publish.repo in ${options.recipe}`);
    if (!REPO_ID.test(repo)) throw new PublishError(`--repo ${JSON.stringify(repo)}: expected <user or org>/<name>`);
    const store = storeRoot(workspaceRoot, pluginOptions(context).storeDir);
    const artifacts = recipe.publish.artifacts;
    const stages: StageName[] = ["base", "dataset", "shards", "adapter", "eval", ...(artifacts.includes("merged") ? ["merged" as const] : []),
                                ...(artifacts.includes("gguf") ? ["gguf" as const] : [])];
    for (const s of stages) {
      if (s === "eval" && !existsSync(join(stageDir(projectDir, "eval"), "stage-manifest.json"))) {
        throw new PublishError(`${join(stageDir(projectDir, "eval"), "stage-manifest.json")} is missing: the eval target must pass first`);
      }
      await materializeStage(store, projectDir, s);
    }

    // Repo layout: a merged model sits at the root (transformers loads the repo); the adapter at the root too when
    // it is the only model, else under adapter/; GGUF files and the Modelfile at the root (llama.cpp's --hf-file,
    // Ollama's hf.co/<repo>:<QUANT> look there).
    const adapterDir = artifacts.includes("merged") ? "adapter/" : "";
    const files: PublishFile[] = [];
    const add = (stage: StageName, prefix: string, keep: (p: string) => boolean) => {
      for (const f of readManifest(projectDir, stage).files) if (keep(f.path)) files.push({ path: prefix + f.path, local: join(stageDir(projectDir, stage), f.path), size: f.size });
    };
    if (artifacts.includes("merged")) add("merged", "", () => true);
    if (artifacts.includes("adapter")) add("adapter", adapterDir, (p) => /^adapter_(config\.json|model\.safetensors)$/.test(p));
    // template.add_special_tokens: the adapter's vocabulary is the grown tokenizer's (out/shards), published beside it
    if (artifacts.includes("adapter") && JSON.parse(readFileSync(join(stageDir(projectDir, "shards"), "manifest.json"), "utf8")).added_tokens) {
      add("shards", adapterDir, (p) => TOKENIZER_FILES.includes(p));
    }
    if (artifacts.includes("gguf")) add("gguf", "", (p) => p.endsWith(".gguf") || p === "Modelfile");

    const base = readManifest(projectDir, "base").info as { kind: string; hub?: string; revision?: string; path?: string };
    const dataset = JSON.parse(readFileSync(join(stageDir(projectDir, "dataset"), "manifest.json"), "utf8")) as DatasetManifest;
    const adapterRun = readJson(join(stageDir(projectDir, "adapter"), "run.json"));
    const card = modelCard({
      repo, project, recipe, base, artifacts, adapterDir, files,
      data: { rows: dataset.rows, train_rows: dataset.train_rows, eval_rows: dataset.eval_rows, format: dataset.format,
              sources: recipe.data.hub ? [recipe.data.hub] : dataset.sources.map((s) => s.file) },
      training: adapterRun?.summary ?? null,
      metrics: (readManifest(projectDir, "eval").info as { metrics: Record<string, number | null> }).metrics,
    });
    const outDir = join(projectDir, "out", "publish");
    const cardFile = join(outDir, "README.md");
    writeFileAtomic(cardFile, card);
    files.push({ path: "README.md", local: cardFile, size: Buffer.byteLength(card) });
    log(`publish: model card ${cardFile}`);
    for (const f of files) log(`publish:   ${f.path} (${f.size} bytes)`);
    if (options.dryRun) { log(`publish: dry run, nothing pushed to ${repo}`); return { success: true }; }

    if (process.env.HF_HUB_OFFLINE === "1") throw new PublishError("HF_HUB_OFFLINE=1: publishing needs the network");
    const token = hubToken(workspaceRoot);
    if (!token) throw new PublishError("HF_TOKEN is not set (environment or .env): publishing needs a Hugging Face token with write access");
    const endpoint = (process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/$/, "");
    const result = await pushToHub(files, {
      repo, branch: recipe.publish.branch, private: recipe.publish.private, token, endpoint, log,
      title: `nx-finetune: ${project} (${artifacts.join(", ")})`,
    });
    writeJsonAtomic(join(outDir, "published.json"), { repo, endpoint, branch: recipe.publish.branch, commit: result.commitOid ?? null,
                                                      url: result.commitUrl ?? null, files: files.map((f) => f.path) });
    log(`publish: ${endpoint}/${repo} ${result.commitUrl ? `(${result.commitUrl})` : ""}`);
    return { success: true };
  } catch (e) {
    console.error(e instanceof RecipeError ? e.message : `${project}:publish failed: ${(e as Error).message}`);
    if (process.env.NXFT_DEBUG && !(e instanceof RecipeError) && !(e instanceof PublishError)) console.error((e as Error).stack);
    return { success: false };
  }
}

function readJson(file: string): any {
  try { return JSON.parse(readFileSync(file, "utf8")); } catch { return undefined; }
}
