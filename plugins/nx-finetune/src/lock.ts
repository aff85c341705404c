// lock.ts — recipes/<name>/nxft.lock.json: the content digests of a recipe's data and base, written after every
// `nx run` that built (or restored) its dataset or base stage, and committed with the recipe, as DVC's .dvc files are.
//
// Why: Nx's change detection (`nx affected`, `nx show projects --affected`) maps changed git files to projects.
// A dataset under datasets/, outside the workspace, git-ignored or over 64 MiB (fingerprinted, index.ts) belongs to
// no project, so editing it affects nothing. The lock file sits in the recipe's folder: a data or base change
// rewrites it, git shows the change, and Nx marks the recipe affected. It is no input of any stage (writing it
// never changes a hash), and it is rewritten only when a digest changed (no churn).
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { writeFileAtomic } from "./atomic";
import { fingerprint } from "./fingerprint.cjs";
import { baseSpec, dataPaths, loadRecipe } from "./recipe";
import { fingerprintCachePath } from "./store";

export const LOCK_FILE = "nxft.lock.json";

interface Digest { sha256: string; size: number; files: number }

export interface RecipeLock {
  $comment: string;
  base: ({ path: string } | { init: string; tokenizer: string } | { hub: string; revision: string; commit?: string }) & Partial<Digest>;
  data: Array<{ path: string } & Digest> | { hub: string; revision?: string; split?: string; config?: string; commit?: string };
}

function digest(path: string, store: string): Digest {
  const fp = fingerprint(path, fingerprintCachePath(store));
  return { sha256: fp.sha256, size: fp.size, files: fp.files };
}

// The lock a recipe has now (data and base as they are on disk). Hub entries are pinned by revision, and by the
// commit a branch or tag resolved to (from the base and dataset stage manifests, when present); a Hub base's
// digest (its downloaded files) comes from the base stage's manifest too.
export function computeLock(workspaceRoot: string, recipeFile: string, store: string): RecipeLock {
  const recipe = loadRecipe(recipeFile, workspaceRoot);
  const dir = dirname(recipeFile);
  const at = (p: string) => resolve(dir, p);
  const spec = baseSpec(recipe);
  let base: RecipeLock["base"];
  if (spec.kind === "local") base = { path: spec.path, ...digest(at(spec.path), store) };
  else if (spec.kind === "init") {
    const config = digest(at(spec.init), store), tokenizer = digest(at(spec.tokenizer), store);
    base = { init: spec.init, tokenizer: spec.tokenizer, sha256: createHash("sha256").update(config.sha256 + tokenizer.sha256).digest("hex"),
             size: config.size + tokenizer.size, files: config.files + tokenizer.files };
  } else {
    base = { hub: spec.hub, revision: spec.revision };
    const manifest = join(dir, "out", "base", "stage-manifest.json");
    if (existsSync(manifest)) {
      const info = JSON.parse(readFileSync(manifest, "utf8")).info;
      // a branch or tag: the commit the base stage pinned it to (a move rewrites the lock, so `nx affected` sees it)
      if (info.hub === spec.hub && (info.revision === spec.revision || info.ref === spec.revision)) {
        if (info.revision !== spec.revision) (base as { commit?: string }).commit = info.revision;
        if (info.sha256) base.sha256 = info.sha256;
      }
    }
  }
  const d = recipe.data;
  let data: RecipeLock["data"];
  if (d.hub) {
    const hubData: { hub: string; revision?: string; split?: string; config?: string; commit?: string } =
      { hub: d.hub, ...(d.revision ? { revision: d.revision } : {}), ...(d.split ? { split: d.split } : {}), ...(d.config ? { config: d.config } : {}) };
    const manifest = join(dir, "out", "dataset", "stage-manifest.json");
    if (existsSync(manifest)) {
      const info = JSON.parse(readFileSync(manifest, "utf8")).info;
      if (info.hub === d.hub && info.revision && info.revision !== d.revision && (info.ref ?? info.revision) === (d.revision ?? "main")) hubData.commit = info.revision;
    }
    data = hubData;
  } else {
    data = dataPaths(recipe).map((p) => ({ path: p, ...digest(at(p), store) }));
  }
  return {
    $comment: "Written by nx-finetune (content digests of this recipe's data and base). Commit it with recipe.json: " +
              "a data or base change then shows in git and in `nx affected`.",
    base, data,
  };
}

// Writes recipes/<name>/nxft.lock.json when its content changed; returns true when it did.
export function updateLock(workspaceRoot: string, recipeFile: string, store: string): boolean {
  const file = join(dirname(recipeFile), LOCK_FILE);
  const text = JSON.stringify(computeLock(workspaceRoot, recipeFile, store), null, 2) + "\n";
  if (existsSync(file) && readFileSync(file, "utf8") === text) return false;
  writeFileAtomic(file, text);
  return true;
}
