// base-quantization.ts — what a base folder's config.json says about pre-quantized weights.
// The engine reads bitsandbytes 4-bit checkpoints ("-bnb-4bit" bases: quantization_config with quant_method
// "bitsandbytes", load_in_4bit, nf4 or fp4, with or without double quantization) and trains QLoRA on them; any
// other quantization_config is refused here, before a stage runs, with the field that is wrong.
import { existsSync, readFileSync } from "node:fs";

export interface BaseQuantization {
  method: "bitsandbytes";
  quant_type: "nf4" | "fp4";
  double_quant: boolean;
}

// null: a plain 16/32-bit base (or no readable config.json: the base checks report that themselves).
// Throws Error("<config.json>: field \"quantization_config.<key>\": …") for quantization the engine cannot read.
export function baseQuantization(configPath: string): BaseQuantization | null {
  if (!existsSync(configPath)) return null;
  let cfg: any;
  try {
    cfg = JSON.parse(readFileSync(configPath, "utf8"));
  } catch {
    return null;
  }
  const qc = cfg?.quantization_config;
  if (qc === undefined || qc === null) return null;
  const bad = (key: string, why: string) => new Error(`${configPath}: field "quantization_config${key ? "." + key : ""}": ${why}`);
  if (typeof qc !== "object" || Array.isArray(qc)) throw bad("", "must be an object");
  if (qc.quant_method !== "bitsandbytes")
    throw bad("quant_method", `${JSON.stringify(qc.quant_method)} is not supported (only bitsandbytes 4-bit checkpoints are)`);
  if (qc.load_in_8bit === true) throw bad("load_in_8bit", "8-bit bitsandbytes checkpoints are not supported (4-bit only)");
  if (qc.load_in_4bit !== true) throw bad("load_in_4bit", "must be true (only 4-bit bitsandbytes checkpoints are supported)");
  const qt = qc.bnb_4bit_quant_type ?? "fp4";   // transformers' BitsAndBytesConfig default
  if (qt !== "nf4" && qt !== "fp4") throw bad("bnb_4bit_quant_type", `must be "nf4" or "fp4", not ${JSON.stringify(qt)}`);
  return { method: "bitsandbytes", quant_type: qt, double_quant: qc.bnb_4bit_use_double_quant === true };
}
