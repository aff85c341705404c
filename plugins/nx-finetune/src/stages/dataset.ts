// dataset.ts — the dataset stage (runDataset, the executor's entry, first; runDatasetStage works on plain folders):
// reads the recipe's data files, validates and normalizes every row, decides
// the train/eval split per row, and writes rows.jsonl + manifest.json (atomically, byte-deterministic).
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { existsSync } from "node:fs";
import { manifestJson, sha256File, sha256Hex, writeFileAtomic } from "../data/fsutil";
import { DataError, readRecords } from "../data/readers";
import { FORMATS, normalizeRecord } from "../data/formats";
import { fetchHubDataset } from "../data/hub-dataset";
import type { DataSpec, DatasetManifest, NormalizedRow, SkippedRow } from "../data/types";
import type { StageContext, StageResult } from "../stage-context";

export async function runDataset(ctx: StageContext): Promise<StageResult> {
  const m = await runDatasetStage({
    recipePath: ctx.recipeFile,
    data: ctx.recipe.data,
    outDir: ctx.tmp,
    workspaceRoot: ctx.workspaceRoot,
    log: ctx.log,
  });
  ctx.log(`dataset: ${m.rows} rows (${m.train_rows} train, ${m.eval_rows} eval${m.skipped ? `, ${m.skipped} skipped` : ""})`);
  // A Hub dataset's revision pinned to its commit (as the base stage pins a Hub base's).
  const { hub, revision } = ctx.recipe.data;
  return { info: m.hub_commit ? { hub, revision: m.hub_commit, ...(m.hub_commit !== (revision ?? "main") ? { ref: revision ?? "main" } : {}) } : {} };
}

export interface DatasetStageOptions {
  recipePath: string; // the recipe file; data.path is relative to its folder
  data: DataSpec;
  outDir: string;
  workspaceRoot: string;
  hubCacheDir?: string; // the Hugging Face hub cache for data.hub; default the shared one (hub-client.ts hubCacheDir)
  log?: (line: string) => void; // progress and notes (downloads, a moved branch)
}

// A row's canonical JSON may be at most this long. Every row is cut at template.max_seq_len tokens anyway, and
// tokenizing one long word (no spaces for the pre-tokenizer to split at) is superlinear: a 1 M-character word
// takes 40 s with the Llama 2 tokenizer, 4 M three minutes. 1 M characters is about 250 K tokens of ordinary text,
// twice a 128 K context.
export const MAX_ROW_CHARS = 1 << 20;

// The row id: first 16 hex digits of the sha256 of the row's canonical JSON line.
export function rowId(line: string): string {
  return sha256Hex(line).slice(0, 16);
}

// Whether a row goes to eval: a seeded hash of the row id, uniform in [0, 1), below the eval fraction. It depends on
// nothing but the row's content and the seed, so editing one row never moves another between splits.
export function isEvalRow(id: string, seed: number, fraction: number): boolean {
  if (fraction <= 0) return false;
  const h = sha256Hex(`nxft-split:${seed}:${id}`);
  return parseInt(h.slice(0, 13), 16) / 2 ** 52 < fraction;
}

function checkSpec(data: DataSpec): void {
  if (!data || typeof data !== "object") throw new Error(`data: expected an object`);
  if (!FORMATS.includes(data.format as any)) throw new Error(`data: field "format": expected one of ${FORMATS.join(", ")}, found ${JSON.stringify(data.format)}`);
  if ((data.path === undefined) === (data.hub === undefined)) throw new Error(`data: exactly one of "path" and "hub" is required`);
  if (data.eval_fraction !== undefined && data.eval_rows !== undefined) throw new Error(`data: use either "eval_fraction" or "eval_rows", not both`);
  if (data.eval_fraction !== undefined && !(data.eval_fraction >= 0 && data.eval_fraction < 1)) throw new Error(`data: field "eval_fraction": expected 0 <= f < 1, found ${data.eval_fraction}`);
  if (data.eval_rows !== undefined && !(Number.isInteger(data.eval_rows) && data.eval_rows >= 0)) throw new Error(`data: field "eval_rows": expected a non-negative integer, found ${data.eval_rows}`);
  if (data.columns !== undefined) {
    for (const [k, v] of Object.entries(data.columns)) if (typeof v !== "string") throw new Error(`data: field "columns.${k}": expected a string (the canonical field name)`);
  }
}

export async function runDatasetStage(opts: DatasetStageOptions): Promise<DatasetManifest> {
  const { data } = opts;
  checkSpec(data);
  const recipeDir = dirname(resolve(opts.recipePath));

  // Source files: local paths (relative to the recipe) or a hub dataset fetched into the cache.
  let files: Array<{ path: string; label: string }>;
  let hubCommit: string | undefined;
  if (data.path !== undefined) {
    const paths = Array.isArray(data.path) ? data.path : [data.path];
    files = paths.map((p) => {
      const abs = isAbsolute(p) ? p : resolve(recipeDir, p);
      if (!existsSync(abs)) throw new Error(`${opts.recipePath}: field "data.path": file not found: ${abs}`);
      return { path: abs, label: relative(opts.workspaceRoot, abs).split("\\").join("/") };
    });
  } else {
    const hub = await fetchHubDataset({ hub: data.hub!, split: data.split, revision: data.revision, config: data.config },
                                      { workspaceRoot: opts.workspaceRoot, log: opts.log ?? (() => {}), cacheDir: opts.hubCacheDir });
    files = hub.files.map((p, i) => ({ path: p, label: hub.label[i] }));
    hubCommit = hub.commit;
  }

  const lines: string[] = [];
  const sources: DatasetManifest["sources"] = [];
  const skippedExamples: SkippedRow[] = [];
  let skipped = 0;
  for (const f of files) {
    const records = await readRecords(f.path, f.label);
    let kept = 0;
    for (const rec of records) {
      if (data.max_rows !== undefined && lines.length >= data.max_rows) break;
      let row: NormalizedRow;
      try {
        row = normalizeRecord(rec, data);
      } catch (err) {
        if (!(err instanceof DataError) || !data.skip_bad_rows) throw err;
        skipped++;
        if (skippedExamples.length < 20) skippedExamples.push({ file: err.file, line: err.line ?? 0, field: err.field ?? "", message: err.message });
        continue;
      }
      const line = JSON.stringify(row); // canonical: normalizeRecord always builds keys in the same order
      if (line.length > MAX_ROW_CHARS) {
        const tooLong = new DataError(rec.file, rec.line, null, `row is ${(line.length / (1 << 20)).toFixed(1)} M characters long; ` +
          `rows are limited to ${MAX_ROW_CHARS >> 20} M (split the document, or set data.skip_bad_rows to skip such rows)`);
        if (!data.skip_bad_rows) throw tooLong;
        skipped++;
        if (skippedExamples.length < 20) skippedExamples.push({ file: rec.file, line: rec.line, field: "", message: tooLong.message });
        continue;
      }
      lines.push(line);
      kept++;
    }
    sources.push({ file: f.label, sha256: sha256File(f.path), rows: kept });
  }
  if (lines.length === 0) {
    const where = files.map((f) => f.label).join(", ");
    throw new Error(`${where}: the dataset has no valid rows${skipped ? ` (${skipped} skipped as bad)` : " (the file holds no rows)"} (${data.path !== undefined ? "data.path" : "data.hub"} in ${opts.recipePath})`);
  }

  const seed = data.split_seed ?? 0;
  const fraction = data.eval_rows !== undefined ? Math.min(data.eval_rows / lines.length, 1) : data.eval_fraction ?? 0;
  const rowIds = lines.map(rowId);
  const splits = rowIds.map((id) => (isEvalRow(id, seed, fraction) ? "e" : "t")).join("");
  const rowsText = lines.join("\n") + "\n";
  const nEval = splits.split("").filter((c) => c === "e").length;

  writeFileAtomic(join(opts.outDir, "rows.jsonl"), rowsText);
  const manifest: DatasetManifest = {
    version: 1,
    kind: data.format === "text" ? "text" : "messages",
    format: data.format,
    sources,
    rows: lines.length,
    train_rows: lines.length - nEval,
    eval_rows: nEval,
    skipped,
    skipped_examples: skippedExamples,
    rows_file: "rows.jsonl",
    rows_sha256: sha256Hex(rowsText),
    split_seed: seed,
    eval_fraction: fraction,
    row_ids: rowIds,
    row_splits: splits,
    ...(hubCommit ? { hub_commit: hubCommit } : {}),
  };
  writeFileAtomic(join(opts.outDir, "manifest.json"), manifestJson(manifest));
  return manifest;
}
