// shards.ts — the shards stage: renders every dataset row with the prompt template, tokenizes it, and writes
// fixed-length token shards (data/shard-format.ts) plus manifest.json. runShards (the executor's entry) first, then
// runShardsStage, which does the work on plain folders (tests call it directly).
//
// Content-defined sharding: within each split, rows are cut into chunks after every row whose id (a content hash)
// satisfies id mod N == 0 (N = rowsPerShard, so chunks average N rows; a chunk is also cut at 8N rows). A chunk's
// boundaries and its cache key (row ids + template + tokenizer + seq_len) depend only on its own rows, so editing one
// row changes one chunk, and every other shard is reused byte-for-byte from the previous output (outDir) or the
// cache dir without tokenizing again. (An edit re-tokenizes two shards only when the edited row starts or stops
// being a cut point — probability 1/N — or moves between train and eval.) A shard's file name is the sha256 of its
// bytes. Output is byte-deterministic.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { manifestJson, sha256Hex, writeFileAtomic } from "../data/fsutil";
import { missingSpecialTokens, TOKENIZER_FILES, writeTokenizerWithAddedTokens, type AddedToken } from "../data/added-tokens";
import { encodeShard, IGNORE_INDEX } from "../data/shard-format";
import { checkTemplate, renderRow, stopIds, tokenizeRow } from "../data/templates";
import { tokenizerFor, type LoadedTokenizer } from "../data/tokenizer";
import type { DatasetManifest, NormalizedRow, ShardEntry, ShardsManifest, TemplateSpec } from "../data/types";
import { baseModelDir, stagePath, type StageContext, type StageResult } from "../stage-context";

// A shard cache in the store (files named by a key over their rows, template, tokenizer and seq_len) lets an edit of
// one dataset row retokenize only the shard holding it.
export async function runShards(ctx: StageContext): Promise<StageResult> {
  const { rows_per_shard, allow_beyond_max_positions, add_special_tokens, ...template } = ctx.recipe.template;
  const baseDir = baseModelDir(ctx);
  if (!allow_beyond_max_positions) checkPositions(ctx, baseDir, template.max_seq_len);
  const m = await runShardsStage({
    template,
    rowsPerShard: rows_per_shard,
    addSpecialTokens: add_special_tokens,
    datasetDir: stagePath(ctx, "dataset"),
    tokenizerDir: baseDir,
    outDir: ctx.tmp,
    cacheDir: join(ctx.store, "shard-cache"),
  });
  if (m.added_tokens) {
    ctx.log(`shards: added ${m.added_tokens.map((t) => `${t.content} (id ${t.id})`).join(", ")} to the tokenizer (template.add_special_tokens); ` +
            `the adapter trains their embedding and output rows`);
  }
  const train = m.shards.filter((s) => s.split === "train").length;
  ctx.log(`shards: ${train} train + ${m.shards.length - train} eval shard(s) of ${m.seq_len} tokens; ` +
          `${m.examples.train} + ${m.examples.eval} examples, ${m.truncated} truncated; ${m.retokenized} tokenized, ${m.reused} reused`);
  return { info: {}, run: { retokenized: m.retokenized, reused: m.reused } };
}

// The longest sequence the base model was built for: max_position_embeddings, extended by a rope_scaling that
// stretches positions (linear/dynamic: × factor; yarn: original × factor; llama3 configs already state the
// extended length). Defaults as the engine's config reader (native/src/model/config.cpp).
export function maxPositions(config: Record<string, any>): number {
  const type = config.model_type;
  const maxPos = typeof config.max_position_embeddings === "number" ? config.max_position_embeddings
    : type === "llama" ? 2048 : type === "gemma" ? 8192 : 32768;
  const rs = config.rope_scaling;
  if (!rs || typeof rs !== "object") return maxPos;
  const kind = rs.rope_type ?? rs.type;
  const factor = typeof rs.factor === "number" ? rs.factor : 1;
  if (kind === "linear" || kind === "dynamic") return Math.floor(maxPos * factor);
  if (kind === "yarn") return Math.max(maxPos, Math.floor((rs.original_max_position_embeddings ?? maxPos) * factor));
  return maxPos;
}

function checkPositions(ctx: StageContext, baseDir: string, maxSeqLen: number): void {
  const configPath = join(baseDir, "config.json");
  if (!existsSync(configPath)) return; // the engine reports a missing config.json at the adapter stage
  let config: Record<string, any>;
  try { config = JSON.parse(readFileSync(configPath, "utf8")); } catch { return; } // likewise a broken one
  const limit = maxPositions(config);
  if (maxSeqLen <= limit) return;
  throw new Error(`${relative(ctx.workspaceRoot, ctx.recipeFile)}: template.max_seq_len: ${maxSeqLen} exceeds the ${limit} positions of the base ` +
    `model (${configPath}: max_position_embeddings${config.rope_scaling ? " with its rope_scaling" : ""}); lower it, or set ` +
    `template.allow_beyond_max_positions: true to train beyond them anyway`);
}

// Bump when the shard bytes for the same inputs would change (invalidates every cached shard).
const SHARDER_VERSION = 2;   // 2: packed rows filled first-fit decreasing (1: next-fit in chunk order)

export interface ShardsStageOptions {
  datasetDir: string; // output of runDatasetStage (rows.jsonl + manifest.json)
  tokenizerDir: string; // HF folder with tokenizer.json + tokenizer_config.json
  template: TemplateSpec;
  outDir: string;
  cacheDir?: string; // optional shard cache shared across output dirs (files named <key>.tokens.bin)
  rowsPerShard?: number; // N, the average dataset rows per shard (default 2048)
  // Add the template's special tokens that the tokenizer lacks (data/added-tokens.ts): the grown tokenizer is
  // written into outDir and tokenizes the rows; the manifest lists the new tokens (added_tokens).
  addSpecialTokens?: boolean;
  onProgress?: (done: number, total: number) => void; // dataset rows rendered so far
}

export function normalizeTemplateSpec(t: TemplateSpec): Required<Omit<TemplateSpec, "system">> & { system?: string } {
  if (!t || typeof t !== "object") throw new Error(`template: expected an object`);
  if (!Number.isInteger(t.max_seq_len) || t.max_seq_len < 2) throw new Error(`template: field "max_seq_len": expected an integer >= 2, found ${JSON.stringify(t.max_seq_len)}`);
  const trainOn = t.train_on ?? (t.name === "text" ? "all" : "responses");
  if (trainOn !== "responses" && trainOn !== "all") throw new Error(`template: field "train_on": expected "responses" or "all", found ${JSON.stringify(t.train_on)}`);
  if (t.packing !== undefined && typeof t.packing !== "boolean") throw new Error(`template: field "packing": expected true or false`);
  if (t.system !== undefined && typeof t.system !== "string") throw new Error(`template: field "system": expected a string`);
  const out: any = { name: t.name, max_seq_len: t.max_seq_len, packing: t.packing ?? false, train_on: trainOn };
  if (t.system !== undefined) out.system = t.system;
  return out;
}

// Whether a row ends a chunk: its content hash mod N == 0.
export function isCutRow(id: string, rowsPerShard: number): boolean {
  return parseInt(id.slice(8, 16), 16) % rowsPerShard === 0;
}

export function chunkRows(indices: number[], ids: string[], rowsPerShard: number): number[][] {
  const chunks: number[][] = [];
  let cur: number[] = [];
  for (const i of indices) {
    cur.push(i);
    if (isCutRow(ids[i], rowsPerShard) || cur.length >= 8 * rowsPerShard) { chunks.push(cur); cur = []; }
  }
  if (cur.length > 0) chunks.push(cur);
  return chunks;
}

interface Example { ids: number[]; train: Uint8Array }

// Packs (or pads) examples into rows of T. Returns the shard arrays and stats.
// Without packing each example has its own row. With packing, rows are filled first-fit decreasing: the examples,
// longest first (ties in chunk order), each go to the first row with room for them, else to a new row. Next-fit in
// chunk order left a part of each row empty (Alpaca at 2048: 97.1% of row tokens real); first-fit decreasing fills
// them to within a few tokens (the bench/real-path.ts table). Rows come out in the order they were opened, so the
// first rows hold the longest examples: the engine shuffles rows by default (train.shuffle).
export function buildRows(examples: Example[], T: number, padId: number, packing: boolean) {
  const rows: Array<{ tokens: number[]; targets: number[]; positions: number[] }> = [];
  let tokens = 0, targetTokens = 0;
  const append = (row: { tokens: number[]; targets: number[]; positions: number[] }, ex: Example) => {
    // Targets are already shifted: position t predicts token t+1 of the same example; the last has no target, so
    // targets never cross into the next packed example.
    const L = ex.ids.length;
    for (let t = 0; t < L; t++) {
      const target = t + 1 < L && ex.train[t + 1] ? ex.ids[t + 1] : IGNORE_INDEX;
      row.tokens.push(ex.ids[t]);
      row.targets.push(target);
      row.positions.push(t);
      if (target !== IGNORE_INDEX) targetTokens++;
    }
    tokens += L;
  };
  const nonEmpty = examples.filter((ex) => ex.ids.length > 0);
  const order = packing
    ? nonEmpty.map((ex, i) => ({ ex, i })).sort((a, b) => b.ex.ids.length - a.ex.ids.length || a.i - b.i).map((x) => x.ex)
    : nonEmpty;
  // room[k] = the free tokens of row k; a max segment tree over it finds the first row with room ≥ L in O(log rows).
  let size = 1;
  while (size < Math.max(1, order.length)) size *= 2;
  const tree = new Int32Array(2 * size).fill(-1);
  const setRoom = (k: number, room: number) => {
    let n = size + k;
    tree[n] = room;
    for (n >>= 1; n >= 1; n >>= 1) tree[n] = Math.max(tree[2 * n], tree[2 * n + 1]);
  };
  const firstWithRoom = (L: number) => {
    if (tree[1] < L) return -1;
    let n = 1;
    while (n < size) n = tree[2 * n] >= L ? 2 * n : 2 * n + 1;
    return n - size;
  };
  for (const ex of order) {
    const L = ex.ids.length;
    let k = packing ? firstWithRoom(L) : -1;
    if (k < 0) {
      k = rows.length;
      rows.push({ tokens: [], targets: [], positions: [] });
    }
    append(rows[k], ex);
    if (packing) setRoom(k, T - rows[k].tokens.length);
  }
  // Padding is a document of its own: positions restart at 0, no loss.
  for (const row of rows)
    for (let p = 0; row.tokens.length < T; p++) { row.tokens.push(padId); row.targets.push(IGNORE_INDEX); row.positions.push(p); }
  const R = rows.length;
  const flat = (k: "tokens" | "targets" | "positions") => {
    const a = new Int32Array(R * T);
    rows.forEach((r, i) => a.set(r[k], i * T));
    return a;
  };
  return { seqLen: T, nRows: R, tokens: flat("tokens"), targets: flat("targets"), positions: flat("positions"), tokenCount: tokens, targetTokens };
}

// Renders and tokenizes one dataset row; truncates to T.
export function exampleFor(row: NormalizedRow, spec: ReturnType<typeof normalizeTemplateSpec>, tok: LoadedTokenizer): Example & { truncated: boolean } {
  const r = tokenizeRow(renderRow(row, spec, tok), tok, spec.train_on === "all");
  const T = spec.max_seq_len;
  if (r.ids.length > T) return { ids: r.ids.slice(0, T), train: r.train.slice(0, T), truncated: true };
  return { ...r, truncated: false };
}

function readDataset(dir: string): { manifest: DatasetManifest; rows: NormalizedRow[] } {
  const mPath = join(dir, "manifest.json");
  if (!existsSync(mPath)) throw new Error(`${mPath}: not found (run the dataset stage first)`);
  const manifest = JSON.parse(readFileSync(mPath, "utf8")) as DatasetManifest;
  const text = readFileSync(join(dir, manifest.rows_file ?? "rows.jsonl"), "utf8");
  if (sha256Hex(text) !== manifest.rows_sha256) throw new Error(`${join(dir, "rows.jsonl")}: sha256 does not match manifest.json (rerun the dataset stage)`);
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  if (lines.length !== manifest.rows || manifest.row_ids.length !== manifest.rows || manifest.row_splits.length !== manifest.rows) {
    throw new Error(`${mPath}: row count does not match rows.jsonl`);
  }
  return { manifest, rows: lines.map((l) => JSON.parse(l) as NormalizedRow) };
}

export async function runShardsStage(opts: ShardsStageOptions): Promise<ShardsManifest> {
  const spec = normalizeTemplateSpec(opts.template);
  mkdirSync(opts.outDir, { recursive: true });
  let tok = tokenizerFor(opts.tokenizerDir);
  let added: AddedToken[] = [];
  const missing = opts.addSpecialTokens ? missingSpecialTokens(spec.name, tok) : [];
  if (missing.length > 0) {
    added = writeTokenizerWithAddedTokens(tok, missing, opts.outDir, spec);
    tok = tokenizerFor(opts.outDir);
  } else if (resolve(opts.outDir) !== tok.dir) {
    for (const f of TOKENIZER_FILES) rmSync(join(opts.outDir, f), { force: true });   // from an earlier run that added tokens
  }
  checkTemplate(spec, tok);
  const { manifest: ds, rows } = readDataset(opts.datasetDir);
  if ((ds.kind === "text") !== (spec.name === "text")) {
    throw new Error(`template: field "name": template "${spec.name}" cannot render ${ds.kind === "text" ? "plain text" : "conversation"} rows ` +
      `(dataset format "${ds.format}"); use ${ds.kind === "text" ? 'template "text"' : "alpaca, chatml, llama3 or base"}`);
  }
  const N = opts.rowsPerShard ?? 2048;
  if (!Number.isInteger(N) || N < 1) throw new Error(`rowsPerShard: expected a positive integer`);
  const T = spec.max_seq_len;

  // Shards available for reuse: the previous manifest in outDir, and the cache dir.
  const previous = new Map<string, { path: string; entry: ShardEntry }>();
  const prevPath = join(opts.outDir, "manifest.json");
  if (existsSync(prevPath)) {
    try {
      const prev = JSON.parse(readFileSync(prevPath, "utf8")) as ShardsManifest;
      for (const e of prev.shards ?? []) previous.set(e.key, { path: join(opts.outDir, e.file), entry: e });
    } catch { /* an unreadable previous manifest just means nothing is reused */ }
  }
  const keyPrefix = JSON.stringify({ v: SHARDER_VERSION, tokenizer: tok.sha256, template: spec, pad: tok.padId });

  const shards: ShardEntry[] = [];
  let retokenized = 0, reused = 0, truncated = 0, untrained = 0, done = 0;
  const examples = { train: 0, eval: 0 };
  for (const split of ["train", "eval"] as const) {
    const flag = split === "train" ? "t" : "e";
    const indices: number[] = [];
    for (let i = 0; i < rows.length; i++) if (ds.row_splits[i] === flag) indices.push(i);
    examples[split] = indices.length;
    for (const chunk of chunkRows(indices, ds.row_ids, N)) {
      const key = sha256Hex(keyPrefix + "\n" + chunk.map((i) => ds.row_ids[i]).join(","));
      const hit = previous.get(key) ?? cachedEntry(opts.cacheDir, key);
      if (hit && existsSync(hit.path)) {
        const bytes = readFileSync(hit.path);
        if (sha256Hex(bytes) === hit.entry.sha256) {
          const dest = join(opts.outDir, hit.entry.file);
          if (hit.path !== dest) writeFileAtomic(dest, bytes);
          shards.push({ ...hit.entry, split, key });
          truncated += hit.entry.truncated ?? 0;
          untrained += hit.entry.untrained ?? 0;
          reused++;
          done += chunk.length;
          opts.onProgress?.(done, rows.length);
          continue;
        }
      }
      const exs: Example[] = [];
      let chunkTruncated = 0, chunkUntrained = 0;
      for (const i of chunk) {
        let ex;
        try {
          ex = exampleFor(rows[i], spec, tok);
        } catch (err) {
          throw new Error(`${join(opts.datasetDir, "rows.jsonl")}:${i + 1}: ${(err as Error).message}`);
        }
        if (ex.truncated) chunkTruncated++;
        if (!ex.train.some((x, t) => t > 0 && x === 1)) chunkUntrained++;
        exs.push(ex);
      }
      const built = buildRows(exs, T, tok.padId, spec.packing);
      const bytes = encodeShard(built);
      const sha = sha256Hex(bytes);
      const entry: ShardEntry = {
        file: `${sha}.tokens.bin`, split, rows: built.nRows, examples: chunk.length, tokens: built.tokenCount,
        target_tokens: built.targetTokens, truncated: chunkTruncated, untrained: chunkUntrained, sha256: sha, key,
      };
      writeFileAtomic(join(opts.outDir, entry.file), bytes);
      if (opts.cacheDir) {
        writeFileAtomic(join(opts.cacheDir, `${key}.tokens.bin`), bytes);
        writeFileAtomic(join(opts.cacheDir, `${key}.json`), JSON.stringify(entry) + "\n");
      }
      shards.push(entry);
      truncated += chunkTruncated;
      untrained += chunkUntrained;
      retokenized++;
      done += chunk.length;
      opts.onProgress?.(done, rows.length);
    }
  }

  // outDir holds exactly the manifest's shards.
  const keep = new Set(shards.map((s) => s.file));
  for (const f of readdirSync(opts.outDir)) if (f.endsWith(".tokens.bin") && !keep.has(f)) rmSync(join(opts.outDir, f), { force: true });

  const manifest: ShardsManifest = {
    version: 1,
    seq_len: T,
    vocab_size: tok.vocabSize,
    pad_id: tok.padId,
    bos_id: tok.bosId,
    eos_id: tok.eosId,
    stop_ids: stopIds(spec, tok),
    tokenizer_sha256: tok.sha256,
    template: spec,
    dataset_rows_sha256: ds.rows_sha256,
    shards,
    examples,
    truncated,
    untrained,
    retokenized,
    reused,
  };
  if (added.length > 0) manifest.added_tokens = added;
  writeFileAtomic(prevPath, manifestJson(manifest));
  return manifest;
}

function cachedEntry(cacheDir: string | undefined, key: string): { path: string; entry: ShardEntry } | undefined {
  if (!cacheDir) return undefined;
  const meta = join(cacheDir, `${key}.json`);
  if (!existsSync(meta)) return undefined;
  try {
    return { path: join(cacheDir, `${key}.tokens.bin`), entry: JSON.parse(readFileSync(meta, "utf8")) };
  } catch {
    return undefined;
  }
}
