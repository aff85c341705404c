// chat.ts — the `chat` executor: try the trained model. Renders the prompt with the recipe's template (the same
// code the shards stage uses), runs `finetune-engine generate` with base + adapter, and streams decoded text as
// the engine streams token ids.   nx run demo:chat --prompt="What is the capital of France?"
import { dirname, join, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { loadRecipe, RecipeError } from "../recipe";
import { ensureStage } from "../stage-run";
import { baseModelDir, engine, stagePath, tokenizerDir, type StageContext } from "../stage-context";
import { storeRoot } from "../store";
import { pluginOptions } from "./stage";
import { renderChat, tokenizerFor, StreamDecoder } from "../data";

export interface ChatExecutorOptions {
  recipe: string;
  prompt?: string;
  maxNewTokens?: number;
  temperature?: number;
  seed?: number;
  skipBuild?: boolean;
}

// Brings the adapter (and what it needs) up to date with a nested `nx run <project>:adapter`, instead of a
// dependsOn on the chat target: Nx replays the whole cached log of every dependency in the same project, ~75
// lines before a one-line answer. Here a cached stage prints nothing, a stage that runs shows its own output (on
// stderr, so stdout holds only the reply), and a failure shows everything Nx printed.
async function buildAdapter(workspaceRoot: string, project: string): Promise<void> {
  const { execa } = await import("execa");
  const nxPackage = require.resolve("nx/package.json", { paths: [workspaceRoot] });
  const nxBin = join(dirname(nxPackage), require(nxPackage).bin.nx);
  const child = execa(process.execPath, [nxBin, "run", `${project}:adapter`, "--outputStyle=static"],
                      { cwd: workspaceRoot, env: { NX_TUI: "false" }, all: true, reject: false, buffer: false });
  const lines: string[] = [];
  let showing = false, pending = "";
  child.all!.setEncoding("utf8");
  child.all!.on("data", (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      lines.push(line);
      const plain = line.replace(/\x1b\[[0-9;]*m/g, "");
      // "> nx run demo:base  [local cache]" starts a replay; "> nx run demo:adapter" a task that runs now.
      const header = /^> nx run \S+(.*)$/.exec(plain);
      if (header) showing = !/cache/.test(header[1]);
      else if (/^\s*(NX\s|Run duration)/.test(plain)) showing = false;
      if (showing) process.stderr.write(line + "\n");
    }
  });
  const r = await child;
  if (r.exitCode !== 0) {
    if (!showing) process.stderr.write(lines.join("\n") + pending + "\n");
    throw new Error(`nx run ${project}:adapter failed (exit code ${r.exitCode})`);
  }
}

export default async function chatExecutor(options: ChatExecutorOptions, context: ExecutorContext): Promise<{ success: boolean }> {
  const workspaceRoot = context.root;
  const recipeFile = resolve(workspaceRoot, options.recipe);
  const projectDir = dirname(recipeFile);
  try {
    const recipe = loadRecipe(recipeFile, workspaceRoot);
    if (context.projectName && !options.skipBuild) await buildAdapter(context.root, context.projectName);
    const store = storeRoot(workspaceRoot, pluginOptions(context).storeDir);
    const env = { workspaceRoot, recipeFile, projectName: context.projectName ?? "recipe", store, log: (line: string) => console.error(line) };
    for (const stage of ["base", "shards", "adapter"] as const) await ensureStage(env, stage);   // shards: the tokenizer
    const ctx: StageContext = {
      workspaceRoot, projectName: context.projectName ?? "recipe", projectDir, recipeFile, recipe, store, tmp: "",
      log: (line) => console.error(line),
    };
    const prompt = options.prompt ?? recipe.chat.prompt;
    if (!prompt) throw new Error(`no prompt: pass --prompt="…" or set chat.prompt in ${options.recipe}`);
    const baseDir = baseModelDir(ctx);
    const tokDir = tokenizerDir(ctx);   // the base's, or the one template.add_special_tokens grew
    const chat = renderChat([{ role: "user", content: prompt }], recipe.template, tokDir);
    const promptIds = chat.ids;
    const tok = tokenizerFor(tokDir);
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

