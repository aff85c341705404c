// chat.ts — the `chat` executor: try the trained model. Renders the prompt with the recipe's template (the same
// code the shards stage uses), runs `finetune-engine generate` with base + adapter, and streams decoded text as
// the engine streams token ids.   nx run demo:chat --prompt="What is the capital of France?"
import { dirname, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { loadRecipe, RecipeError } from "../recipe";
import { ensureStage } from "../stage-run";
import { baseModelDir, engine, stagePath, type StageContext } from "../stage-context";
import { storeRoot } from "../store";
import { pluginOptions } from "./stage";
import { renderChat, tokenizerFor, StreamDecoder } from "../data";

export interface ChatExecutorOptions {
  recipe: string;
  prompt?: string;
  maxNewTokens?: number;
  temperature?: number;
  seed?: number;
}

export default async function chatExecutor(options: ChatExecutorOptions, context: ExecutorContext): Promise<{ success: boolean }> {
  const workspaceRoot = context.root;
  const recipeFile = resolve(workspaceRoot, options.recipe);
  const projectDir = dirname(recipeFile);
  try {
    const recipe = loadRecipe(recipeFile, workspaceRoot);
    const store = storeRoot(workspaceRoot, pluginOptions(context).storeDir);
    const env = { workspaceRoot, recipeFile, projectName: context.projectName ?? "recipe", store, log: (line: string) => console.error(line) };
    for (const stage of ["base", "adapter"] as const) await ensureStage(env, stage);
    const ctx: StageContext = {
      workspaceRoot, projectName: context.projectName ?? "recipe", projectDir, recipeFile, recipe, store, tmp: "",
      log: (line) => console.error(line),
    };
    const prompt = options.prompt ?? recipe.chat.prompt;
    if (!prompt) throw new Error(`no prompt: pass --prompt="…" or set chat.prompt in ${options.recipe}`);
    const baseDir = baseModelDir(ctx);
    const chat = renderChat([{ role: "user", content: prompt }], recipe.template, baseDir);
    const promptIds = chat.ids;
    const tok = tokenizerFor(baseDir);
    const decoder = new StreamDecoder(tok, promptIds, true);
    // On a terminal, text appears token by token; in a log (Nx prefixes every chunk it captures), line by line.
    const tty = Boolean(process.stdout.isTTY);
    let pending = "";
    const emit = (text: string, end = false) => {
      if (tty) { process.stdout.write(text); return; }
      pending += text;
      const cut = end ? pending.length : pending.lastIndexOf("\n") + 1;
      if (cut > 0) { process.stdout.write(pending.slice(0, cut)); pending = pending.slice(cut); }
    };
    process.stdout.write(`> ${prompt}\n`);
    const summary = await engine(ctx, "generate", {
      model: baseDir, adapter: stagePath(ctx, "adapter"), prompt_ids: promptIds,
      max_new_tokens: options.maxNewTokens ?? recipe.chat.max_new_tokens, temperature: options.temperature ?? recipe.chat.temperature,
      top_k: 0, top_p: 1.0, seed: options.seed ?? 0, stop_ids: chat.stopIds,
      backend: recipe.engine.backend, threads: recipe.engine.threads,
    }, (e) => { if (e.event === "token") emit(decoder.push(e.id)); }, { quiet: true });
    emit(decoder.flush() + "\n", true);
    if (process.env.NXFT_DEBUG) console.error(`ids: ${JSON.stringify(summary.ids)}`);
    return { success: true };
  } catch (e) {
    console.error(e instanceof RecipeError ? e.message : `chat failed: ${(e as Error).message}`);
    return { success: false };
  }
}

