// init.ts — the `init` generator, what `nx add @nx-finetune/plugin` runs: registers the plugin in nx.json, turns
// Nx's analytics prompt off when the workspace has not chosen (a first run on a terminal would stop at it), and
// git-ignores the content store and the recipes' output folders (big files, rebuilt from the cache).
import { readNxJson, updateNxJson, type Tree } from "@nx/devkit";

export const PLUGIN_NAME = "@nx-finetune/plugin";
export const IGNORED = ["/.nxft/", "/recipes/*/out/"];

export interface InitGeneratorOptions {
  skipFormat?: boolean;
  keepExistingVersions?: boolean; // passed by `nx add`; the plugin adds no other packages
  updatePackageScripts?: boolean; // likewise
}

export async function initGenerator(tree: Tree, _options: InitGeneratorOptions = {}): Promise<void> {
  const nxJson = readNxJson(tree) ?? {};
  const plugins = nxJson.plugins ?? [];
  if (!plugins.some((p) => (typeof p === "string" ? p : p.plugin) === PLUGIN_NAME)) plugins.push(PLUGIN_NAME);
  nxJson.plugins = plugins;
  if (nxJson.analytics === undefined) (nxJson as { analytics?: boolean }).analytics = false;
  updateNxJson(tree, nxJson);
  ignoreInGit(tree, IGNORED, "nx-finetune: the content store and stage outputs (small manifests are in the Nx cache)");
}

// Appends the patterns .gitignore lacks (under one comment), creating the file when there is none.
export function ignoreInGit(tree: Tree, patterns: string[], comment: string): void {
  const text = tree.exists(".gitignore") ? tree.read(".gitignore", "utf-8")! : "";
  const present = new Set(text.split("\n").map((l) => l.trim()));
  const missing = patterns.filter((p) => !present.has(p) && !present.has(p.replace(/^\//, "")));
  if (missing.length === 0) return;
  const sep = text.length === 0 || text.endsWith("\n") ? "" : "\n";
  tree.write(".gitignore", `${text}${sep}${text.length ? "\n" : ""}# ${comment}\n${missing.join("\n")}\n`);
}

export default initGenerator;
