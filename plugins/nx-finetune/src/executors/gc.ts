// gc.ts — the `gc` executor: prune the content store (src/store-gc.ts).   nx run demo:gc --dry-run
// The store is shared by every recipe of the workspace, so any recipe's gc target collects for all of them.
import { join } from "node:path";
import { cacheDir, type ExecutorContext } from "@nx/devkit";
import { collectGarbage } from "../store-gc";
import { storeRoot } from "../store";
import { pluginOptions } from "./stage";

export interface GcExecutorOptions { dryRun?: boolean; graceHours?: number; checkpoints?: boolean }

export default async function gcExecutor(options: GcExecutorOptions, context: ExecutorContext): Promise<{ success: boolean }> {
  try {
    const store = storeRoot(context.root, pluginOptions(context).storeDir);
    const projects = Object.values(context.projectsConfigurations?.projects ?? {})
      .filter((p) => Object.values(p.targets ?? {}).some((t) => t.executor === "@nx-finetune/plugin:stage"));
    const roots = [...projects.map((p) => join(context.root, p.root, "out")), cacheDir];
    console.log(`gc: store ${store}; references from ${projects.length} recipe(s)' out/ folders and the Nx cache ${cacheDir}`);
    await collectGarbage({
      store, roots, dryRun: Boolean(options.dryRun), graceMs: (options.graceHours ?? 1) * 3600_000,
      checkpoints: Boolean(options.checkpoints), log: (l) => console.log(l),
    });
    return { success: true };
  } catch (e) {
    console.error(`gc failed: ${(e as Error).message}`);
    return { success: false };
  }
}
