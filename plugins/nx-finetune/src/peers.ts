// peers.ts — what this plugin calls from the GGUF helper (src/gguf, GGUF engineer), typed here so the contract is
// written down in one place, and loaded lazily (with a clear error while that piece is missing).
// The data pipeline (src/data) is imported directly by the stages.
import type { Recipe } from "./recipe";

export type Log = (line: string) => void;

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

export const ggufModule = (): GgufModule => load<GgufModule>("the GGUF helper", "./gguf/index");
