// watch.ts — the `watch` executor (continuous): reruns `nx run <project>:<target>` (default gguf) whenever the
// recipe, its dataset files or its base/tokenizer files change. chokidar rather than `nx watch`: datasets and models
// are often git-ignored or outside the workspace, where Nx's watcher sends no events (nx.md §4.1).
import { dirname, join, resolve } from "node:path";
import type { ExecutorContext } from "@nx/devkit";
import { baseSpec, dataPaths, loadRecipe, parseRecipe } from "../recipe";
import { readFileSync } from "node:fs";

export interface WatchExecutorOptions { recipe: string; target?: string; debounceMs?: number }

// Every path whose change should rerun the pipeline (absolute).
export function watchedPaths(recipeFile: string): string[] {
  const recipe = parseRecipe(readFileSync(recipeFile, "utf8"), recipeFile);
  const dir = dirname(recipeFile);
  const paths = [recipeFile, ...dataPaths(recipe).map((p) => resolve(dir, p))];
  const base = baseSpec(recipe);
  if (base.kind === "init") paths.push(resolve(dir, base.init), resolve(dir, base.tokenizer));
  if (base.kind === "local") paths.push(resolve(dir, base.path));
  return [...new Set(paths)];
}

export default async function* watchExecutor(options: WatchExecutorOptions, context: ExecutorContext): AsyncGenerator<{ success: boolean }> {
  const recipeFile = resolve(context.root, options.recipe);
  loadRecipe(recipeFile, context.root);
  const target = `${context.projectName}:${options.target ?? "gguf"}`;
  const { watch } = await import("chokidar");
  const { execa } = await import("execa");
  const nxPackage = require.resolve("nx/package.json", { paths: [context.root] });
  const nxBin = join(dirname(nxPackage), require(nxPackage).bin.nx);

  let running = false, again = false;
  const rerun = async () => {
    if (running) { again = true; return; }
    running = true;
    do {
      again = false;
      console.log(`\n[watch] nx run ${target}`);
      const r = await execa(process.execPath, [nxBin, "run", target], { cwd: context.root, stdio: "inherit", reject: false });
      console.log(`[watch] ${target} ${r.exitCode === 0 ? "succeeded" : `failed (exit ${r.exitCode})`}; watching…`);
      watcher.add(safeWatched(recipeFile)); // the recipe may now name other data files
    } while (again);
    running = false;
  };
  let timer: NodeJS.Timeout | undefined;
  const schedule = (path: string) => {
    console.log(`[watch] changed: ${path}`);
    clearTimeout(timer);
    timer = setTimeout(rerun, options.debounceMs ?? 300);
  };
  const watcher = watch(safeWatched(recipeFile), { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
  watcher.on("add", schedule).on("change", schedule).on("unlink", schedule);
  console.log(`[watch] watching ${safeWatched(recipeFile).length} path(s) for ${target}; Ctrl-C to stop`);
  await rerun();
  yield { success: true };
  await new Promise<void>((done) => process.once("SIGINT", done).once("SIGTERM", done));
  await watcher.close();
}

function safeWatched(recipeFile: string): string[] {
  try { return watchedPaths(recipeFile); } catch { return [recipeFile]; }
}
