// recipe.ts — load and validate a recipe.json. Every mistake becomes an issue naming the file, line:column and
// the field (dot path), e.g.  recipes/demo/recipe.json:14:10 lora.r: must be > 0 (got 0)
//
// The published recipe.schema.json is the single source of truth for structure (types, enums, ranges, unknown
// keys, defaults); this file walks it with a small validator (the subset of JSON Schema the schema uses) and adds
// the checks a schema can't express: steps xor epochs, warmup ≤ steps, files that must exist.
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, isAbsolute, join, relative, resolve } from "node:path";
import { findNodeAtLocation, parseTree, printParseErrorCode, type Node as JsonNode, type ParseError } from "jsonc-parser";
import { baseQuantization } from "./base-quantization";
import { isKnownMetric, METRICS } from "./eval/metrics";

// The schema file ships next to package.json (editors resolve "$schema" to it).
export const recipeSchemaPath = join(__dirname, "..", "recipe.schema.json");
const recipeSchema: Schema = JSON.parse(readFileSync(recipeSchemaPath, "utf8"));

export type GgufType = "f32" | "f16" | "bf16" | "q8_0" | "q4_0" | "q4_k_m" | "q5_k_m" | "q6_k";
export type BaseSpec =
  | { kind: "local"; path: string }
  | { kind: "hub"; hub: string; revision: string }
  | { kind: "init"; init: string; tokenizer: string; seed: number; dtype: "f32" | "f16" | "bf16" };

export interface Recipe {
  name?: string;
  description?: string;
  base: string | { hub: string; revision: string } | { init: string; tokenizer: string; seed: number; dtype: "f32" | "f16" | "bf16" };
  // data and template are the data pipeline's DataSpec / TemplateSpec (src/data/types.ts).
  data: { path?: string | string[]; hub?: string; split?: string; revision?: string; config?: string;
          format: "alpaca" | "sharegpt" | "messages" | "text"; columns?: Record<string, string>; skip_bad_rows?: boolean;
          eval_fraction?: number; eval_rows?: number; split_seed?: number; max_rows?: number };
  template: { name: "alpaca" | "chatml" | "llama3" | "base" | "text"; max_seq_len: number; packing: boolean;
              train_on: "responses" | "all"; system?: string; rows_per_shard: number; allow_beyond_max_positions?: boolean;
              add_special_tokens?: boolean };
  lora: { r: number; alpha: number; dropout: number; targets: string[]; rslora: boolean };
  train: {
    lr: number; schedule: string; warmup_steps: number; steps?: number; epochs?: number; batch_size: number;
    grad_accum: number; seed: number; optimizer: string; weight_decay: number; max_grad_norm: number;
    gradient_checkpointing: boolean | "offload"; save_every: number; resume: boolean; eval_every: number;
  };
  quantize_base: null | "nf4";
  export: { merged_dtype: "f32" | "f16" | "bf16"; gguf: GgufType[]; adapter_gguf: boolean; ollama: boolean };
  engine: { backend: "auto" | "cpu" | "cuda"; threads: number; gpus?: number | "all" };
  chat: { prompt?: string; max_new_tokens: number; temperature: number };
  eval: { prompts?: string[]; samples: number; score_rows: number; max_new_tokens: number; gguf_perplexity: boolean;
          gate: Record<string, { min?: number; max?: number }> };
  publish: { repo?: string; artifacts: Array<"adapter" | "merged" | "gguf">; private: boolean; branch: string };
}

export interface RecipeIssue { file: string; line: number; column: number; field: string; message: string }

export class RecipeError extends Error {
  readonly issues: RecipeIssue[];
  constructor(issues: RecipeIssue[]) {
    super(issues.map(formatIssue).join("\n"));
    this.issues = issues;
    this.name = "RecipeError";
  }
}

export function formatIssue(issue: RecipeIssue): string {
  return `${issue.file}:${issue.line}:${issue.column} ${issue.field || "(recipe)"}: ${issue.message}`;
}

type Schema = Record<string, any>;
type Path = Array<string | number>;

// Parse `text` (the content of `file`, shown as given in messages), validate it against the schema, fill defaults.
// With `recipeDir` (absolute), also check that referenced files exist (relative paths resolve against it).
export function parseRecipe(text: string, file: string, recipeDir?: string): Recipe {
  const parseErrors: ParseError[] = [];
  const tree = parseTree(text, parseErrors, { disallowComments: true, allowTrailingComma: false });
  const lineStarts = computeLineStarts(text);
  const at = (offset: number) => offsetToLineColumn(lineStarts, offset);
  if (parseErrors.length > 0 || !tree) {
    const first = parseErrors[0];
    const { line, column } = at(first ? first.offset : 0);
    throw new RecipeError([{ file, line, column, field: "", message: `invalid JSON: ${first ? printParseErrorCode(first.error) : "empty file"}` }]);
  }
  const value = JSON.parse(text);
  const issues: RecipeIssue[] = [];
  // Position of a field: the property name when it exists, else the nearest existing parent.
  const issueAt = (path: Path, message: string) => {
    let node: JsonNode | undefined;
    for (let n = path.length; n >= 0 && !node; n--) node = findNodeAtLocation(tree, path.slice(0, n));
    const anchor = node?.parent?.type === "property" ? node.parent : node;
    const { line, column } = at(anchor ? anchor.offset : 0);
    issues.push({ file, line, column, field: path.join(".").replace(/\.(\d+)/g, "[$1]"), message });
  };

  validate(value, recipeSchema, [], issueAt);
  if (issues.length === 0) checkSemantics(value, issueAt, recipeDir);
  if (issues.length > 0) throw new RecipeError(issues);
  return value as Recipe;
}

export function loadRecipe(recipePath: string, workspaceRoot?: string): Recipe {
  const display = workspaceRoot && isAbsolute(recipePath) ? relative(workspaceRoot, recipePath) : recipePath;
  const absolute = workspaceRoot ? resolve(workspaceRoot, recipePath) : recipePath;
  let text: string;
  try {
    text = readFileSync(absolute, "utf8");
  } catch (e) {
    throw new RecipeError([{ file: display, line: 1, column: 1, field: "", message: `cannot read: ${(e as Error).message}` }]);
  }
  return parseRecipe(text, display, dirname(absolute));
}

export function baseSpec(recipe: Recipe): BaseSpec {
  const base = recipe.base;
  if (typeof base === "string") return { kind: "local", path: base };
  if ("hub" in base) return { kind: "hub", hub: base.hub, revision: base.revision };
  return { kind: "init", init: base.init, tokenizer: base.tokenizer, seed: base.seed ?? 0, dtype: base.dtype ?? "f32" };
}

// Paths in a recipe are relative to the recipe's folder (or absolute).
export function dataPaths(recipe: Recipe): string[] {
  const p = recipe.data.path;
  return p === undefined ? [] : Array.isArray(p) ? p : [p];
}

// ---- schema walk ---------------------------------------------------------------------------------------------

function jsonType(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  if (typeof v === "number") return Number.isInteger(v) ? "integer" : "number";
  return typeof v;
}

function typeMatches(v: unknown, type: string): boolean {
  const t = jsonType(v);
  return t === type || (type === "number" && t === "integer");
}

// Validates `value` in place and fills `default`s of missing object properties (so later code sees full recipes).
function validate(value: any, schema: Schema, path: Path, issueAt: (path: Path, message: string) => void): void {
  if (schema.oneOf) {
    const branch = pickBranch(value, schema.oneOf);
    if (!branch) {
      const kinds = schema.oneOf.map((b: Schema) => (b.type === "object" ? `{${(b.required ?? []).join(", ")}}` : b.type)).join(" | ");
      issueAt(path, `must be one of: ${kinds} (got ${jsonType(value)})`);
      return;
    }
    validate(value, branch, path, issueAt);
    return;
  }
  if (schema.enum) {
    if (!schema.enum.some((e: unknown) => e === value)) {
      issueAt(path, `must be one of ${schema.enum.map((e: unknown) => JSON.stringify(e)).join(", ")} (got ${JSON.stringify(value)})`);
    }
    return;
  }
  if (schema.type && !typeMatches(value, schema.type)) {
    issueAt(path, `must be ${schema.type === "integer" ? "an integer" : `a ${schema.type}`} (got ${jsonType(value)} ${JSON.stringify(value)})`);
    return;
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) issueAt(path, `must be ≥ ${schema.minimum} (got ${value})`);
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) issueAt(path, `must be > ${schema.exclusiveMinimum} (got ${value})`);
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) issueAt(path, `must be < ${schema.exclusiveMaximum} (got ${value})`);
  }
  if (typeof value === "string") {
    if (schema.minLength !== undefined && value.length < schema.minLength) issueAt(path, "must not be empty");
    if (schema.pattern && !new RegExp(schema.pattern).test(value)) issueAt(path, `must match ${schema.pattern} (got ${JSON.stringify(value)})`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) issueAt(path, `must have at least ${schema.minItems} item(s)`);
    if (schema.uniqueItems && new Set(value.map((v) => JSON.stringify(v))).size !== value.length) issueAt(path, "must not repeat items");
    if (schema.items) value.forEach((item, i) => validate(item, schema.items, [...path, i], issueAt));
  }
  if (jsonType(value) === "object" && schema.properties) {
    for (const key of Object.keys(value)) {
      if (!(key in schema.properties) && schema.additionalProperties === false) {
        const known = Object.keys(schema.properties).filter((k) => k !== "$schema");
        issueAt([...path, key], `unknown key (expected one of: ${known.join(", ")})`);
      }
    }
    for (const key of schema.required ?? []) {
      if (!(key in value)) issueAt([...path, key], "is required");
    }
    if (typeof schema.additionalProperties === "object") {
      for (const key of Object.keys(value)) if (!(key in schema.properties)) validate(value[key], schema.additionalProperties, [...path, key], issueAt);
    }
    for (const [key, sub] of Object.entries<Schema>(schema.properties)) {
      if (key in value) validate(value[key], sub, [...path, key], issueAt);
      else if (sub.default !== undefined) value[key] = structuredClone(sub.default);
      else if (sub.type === "object" && !sub.required) {
        value[key] = {};
        validate(value[key], sub, [...path, key], issueAt);
      }
    }
  }
}

// oneOf: choose the branch meant by the value's shape (JSON type, then which distinguishing key is present), so
// the error talks about the branch the user was writing.
function pickBranch(value: unknown, branches: Schema[]): Schema | undefined {
  const candidates = branches.filter((b) => typeMatches(value, b.type));
  if (candidates.length <= 1 || jsonType(value) !== "object") return candidates[0];
  const keys = Object.keys(value as object);
  return candidates.find((b) => (b.required ?? []).some((k: string) => keys.includes(k))) ?? candidates[0];
}

// ---- checks beyond the schema ---------------------------------------------------------------------------------

function checkSemantics(r: any, issueAt: (path: Path, message: string) => void, recipeDir?: string): void {
  if ((r.data.path === undefined) === (r.data.hub === undefined)) issueAt(["data", r.data.hub === undefined ? "path" : "hub"], "exactly one of data.path / data.hub must be given");
  if (r.data.eval_fraction !== undefined && r.data.eval_rows !== undefined) issueAt(["data", "eval_rows"], "give data.eval_fraction or data.eval_rows, not both");
  for (const k of ["split", "revision", "config"]) if (r.data[k] !== undefined && r.data.hub === undefined) issueAt(["data", k], "only applies to a Hub dataset (data.hub)");
  const hasSteps = r.train.steps !== undefined, hasEpochs = r.train.epochs !== undefined;
  if (hasSteps === hasEpochs) issueAt(["train", hasEpochs ? "epochs" : "steps"], "exactly one of train.steps / train.epochs must be given");
  if (hasSteps && r.train.warmup_steps > r.train.steps) issueAt(["train", "warmup_steps"], `must be ≤ train.steps (${r.train.steps})`);
  // Each rank takes batch_size / gpus rows of every micro-batch ("all" is checked when the GPUs are counted).
  if (typeof r.engine.gpus === "number" && r.train.batch_size % r.engine.gpus !== 0) {
    issueAt(["engine", "gpus"], `train.batch_size (${r.train.batch_size}) must be a multiple of engine.gpus (${r.engine.gpus}): each GPU takes an equal share of every batch`);
  }
  if (r.export.adapter_gguf === false && r.export.gguf.length === 0 && !r.export.ollama) {
    issueAt(["export", "gguf"], "nothing to export: list at least one GGUF type");
  }
  if (r.template.add_special_tokens && r.export.adapter_gguf) {
    issueAt(["export", "adapter_gguf"], "a GGUF LoRA adapter cannot carry the token rows template.add_special_tokens trains; export the merged model (export.gguf) instead");
  }
  if (r.export.ollama && r.export.gguf.length === 0) issueAt(["export", "ollama"], "an Ollama Modelfile needs at least one export.gguf type");
  for (const [metric, bound] of Object.entries<{ min?: number; max?: number }>(r.eval.gate)) {
    if (!isKnownMetric(metric)) issueAt(["eval", "gate", metric], `unknown metric (expected one of: ${Object.keys(METRICS).join(", ")}, gguf_<type>_perplexity, gguf_<type>_perplexity_delta)`);
    else if (bound.min === undefined && bound.max === undefined) issueAt(["eval", "gate", metric], "give min, max or both");
    else if (bound.min !== undefined && bound.max !== undefined && bound.min > bound.max) issueAt(["eval", "gate", metric, "min"], `must be ≤ max (${bound.max})`);
  }
  if (!recipeDir) return;

  const mustExist = (path: Path, p: string, kind: "file" | "dir", inside?: string) => {
    const abs = resolve(recipeDir, p);
    if (!existsSync(abs)) return issueAt(path, `${kind === "dir" ? "folder" : "file"} not found: ${abs}`);
    const isDir = statSync(abs).isDirectory();
    if (kind === "dir" && !isDir) return issueAt(path, `must be a folder: ${abs}`);
    if (kind === "file" && isDir) return issueAt(path, `must be a file: ${abs}`);
    if (inside && !existsSync(join(abs, inside))) issueAt(path, `${inside} not found in ${abs}`);
  };
  const base = r.base;
  if (typeof base === "string") {
    mustExist(["base"], base, "dir", "config.json");
    try {
      baseQuantization(join(resolve(recipeDir, base), "config.json"));   // a pre-quantized base must be bitsandbytes 4-bit
    } catch (e) {
      issueAt(["base"], (e as Error).message);
    }
  } else if ("init" in base) {
    mustExist(["base", "init"], base.init, "file");
    mustExist(["base", "tokenizer"], base.tokenizer, "dir", "tokenizer.json");
  }
  const paths: string[] = r.data.path === undefined ? [] : Array.isArray(r.data.path) ? r.data.path : [r.data.path];
  paths.forEach((p, i) => {
    const abs = resolve(recipeDir, p);
    if (!existsSync(abs)) issueAt(Array.isArray(r.data.path) ? ["data", "path", i] : ["data", "path"], `not found: ${abs}`);
  });
}

// ---- positions ------------------------------------------------------------------------------------------------

function computeLineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) starts.push(i + 1);
  return starts;
}

function offsetToLineColumn(lineStarts: number[], offset: number): { line: number; column: number } {
  let lo = 0, hi = lineStarts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (lineStarts[mid] <= offset) lo = mid; else hi = mid - 1;
  }
  return { line: lo + 1, column: offset - lineStarts[lo] + 1 };
}
