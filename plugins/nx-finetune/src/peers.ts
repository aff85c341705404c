// peers.ts — what this plugin calls from the data pipeline (src/data, data engineer) and the GGUF helper
// (src/gguf, GGUF engineer). Loaded lazily so createNodes never pays for tokenizers, and typed here so the
// contract between the pieces is written down in one place.
import type { Recipe } from "./recipe";

export type Log = (line: string) => void;

export interface DatasetStageOptions {
  spec: Recipe["data"];   // recipe.data (DataSpec)
  recipeDir: string;      // relative data paths resolve against it
  outDir: string;         // write rows.jsonl + manifest.json here (an empty temp folder, swapped in atomically)
  cacheDir: string;       // downloads (Hub datasets) go here, once
  log: Log;
}
export interface ShardsStageOptions {
  template: Recipe["template"]; // recipe.template (TemplateSpec)
  datasetDir: string;     // the dataset stage's folder
  tokenizerDir: string;   // the base model folder (tokenizer.json, tokenizer_config.json)
  outDir: string;         // write *.tokens.bin + manifest.json here (protocol §Token shards)
  previousDir?: string;   // the last shards folder, to reuse unchanged shards
  log: Log;
}
export interface DataModule {
  runDatasetStage(opts: DatasetStageOptions): Promise<{ rows: number; train_rows: number; eval_rows: number }>;
  runShardsStage(opts: ShardsStageOptions): Promise<{ shards: Array<{ file: string; split: "train" | "eval" }>; stop_ids: number[] }>;
}

export interface GgufModule {
  // The export-gguf job's `tokenizer` object, from a folder with tokenizer.json + tokenizer_config.json.
  ggufTokenizerMetadata(tokenizerDir: string, opts: { template: Recipe["template"]["name"] }): Record<string, unknown>;
  // The text of an Ollama Modelfile for `ggufFile` (a name relative to the Modelfile), with the recipe's template.
  ollamaModelfile(opts: { ggufFile: string; tokenizerDir: string; template: Recipe["template"]["name"]; adapterFile?: string }): string;
}

function load<T>(what: string, path: string): T {
  try {
    return require(path) as T;
  } catch (e: any) {
    if (e.code === "MODULE_NOT_FOUND" && String(e.message).includes(path.replace("./", ""))) {
      throw new Error(`nx-finetune: ${what} (${path}) is not available in this build`);
    }
    throw e;
  }
}

export const dataModule = (): DataModule => load<DataModule>("the data pipeline", "./data/index");
export const ggufModule = (): GgufModule => load<GgufModule>("the GGUF helper", "./gguf/index");
