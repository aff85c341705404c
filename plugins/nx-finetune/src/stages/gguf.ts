// gguf.ts — the gguf stage: one `export-gguf` per export.gguf type from the merged model, the adapter as a GGUF
// LoRA (export.adapter_gguf) and an Ollama Modelfile (export.ollama). Tokenizer metadata and the Modelfile text
// come from src/gguf (the engine never parses tokenizer files).
import { join } from "node:path";
import { writeFileAtomic } from "../atomic";
import { readFileSync } from "node:fs";
import { ggufTokenizerMetadata, ollamaModelfile } from "../gguf";
import { baseModelDir, engine, stagePath, threads, type StageContext, type StageResult } from "../stage-context";

// The Modelfile points at the smallest good-quality file exported.
const OLLAMA_PREFERENCE = ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "f16", "bf16", "f32"];

export async function runGguf(ctx: StageContext): Promise<StageResult> {
  const r = ctx.recipe;
  const merged = stagePath(ctx, "merged");
  // The tokenizer as GGUF metadata, padded to the model's embedding rows, with the recipe's chat template.
  const vocabSize = JSON.parse(readFileSync(join(merged, "config.json"), "utf8")).vocab_size;
  const tokenizer = ggufTokenizerMetadata(merged, { template: r.template.name, system: r.template.system, vocabSize });
  const files: string[] = [];
  for (const type of r.export.gguf) {
    const file = `${ctx.projectName}.${type}.gguf`;
    await engine(ctx, "export-gguf", { model: merged, out: join(ctx.tmp, file), type, tokenizer, name: ctx.projectName, threads: threads(ctx) });
    ctx.log(`gguf: ${file}`);
    files.push(file);
  }
  let adapterFile: string | undefined;
  if (r.export.adapter_gguf) {
    adapterFile = `${ctx.projectName}.adapter.gguf`;
    await engine(ctx, "export-gguf", {
      adapter: stagePath(ctx, "adapter"), base_config: join(baseModelDir(ctx), "config.json"), out: join(ctx.tmp, adapterFile), type: "f32",
    });
    ctx.log(`gguf: ${adapterFile}`);
  }
  if (r.export.ollama) {
    const model = OLLAMA_PREFERENCE.map((t) => `${ctx.projectName}.${t}.gguf`).find((f) => files.includes(f))!;
    writeFileAtomic(join(ctx.tmp, "Modelfile"), ollamaModelfile({ ggufFile: `./${model}`, tokenizerDir: merged, template: r.template.name, system: r.template.system }));
    ctx.log(`gguf: Modelfile (FROM ./${model})`);
  }
  return { info: { types: r.export.gguf } };
}
