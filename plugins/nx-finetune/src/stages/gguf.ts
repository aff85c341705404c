// gguf.ts — the gguf stage: one `export-gguf` per export.gguf type from the merged model, the adapter as a GGUF
// LoRA (export.adapter_gguf) and an Ollama Modelfile (export.ollama). Tokenizer metadata and the Modelfile text
// come from src/gguf (the engine never parses tokenizer files).
//
// Each export is cached in the store by what decides its bytes (the merged model's files, the type, the tokenizer
// metadata, the model name, the engine's version): adding one type to export.gguf exports only that type; the
// others are linked from the store.
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../atomic";
import { ensureEngine } from "../engine";
import { ggufTokenizerMetadata, ollamaModelfile } from "../gguf";
import { baseModelDir, engine, stagePath, threads, type StageContext, type StageResult } from "../stage-context";
import { readManifest } from "../stage-dir";
import { linkFromStore, putFile } from "../store";

// The Modelfile points at the smallest good-quality file exported.
const OLLAMA_PREFERENCE = ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "f16", "bf16", "f32"];

export async function runGguf(ctx: StageContext): Promise<StageResult> {
  const r = ctx.recipe;
  const merged = stagePath(ctx, "merged");
  // The tokenizer as GGUF metadata, padded to the model's embedding rows, with the recipe's chat template.
  const vocabSize = JSON.parse(readFileSync(join(merged, "config.json"), "utf8")).vocab_size;
  const tokenizer = ggufTokenizerMetadata(merged, { template: r.template.name, system: r.template.system, vocabSize });
  const files: string[] = [];
  const exported: string[] = [], reused: string[] = [];
  const keyPrefix = {
    v: 1,
    merged: readManifest(ctx.projectDir, "merged").files.map((f) => [f.path, f.sha256]),
    tokenizer: createHash("sha256").update(JSON.stringify(tokenizer)).digest("hex"),
    name: ctx.projectName,
    engine: await engineVersion(ctx),
  };
  for (const type of r.export.gguf) {
    const file = `${ctx.projectName}.${type}.gguf`;
    const entry = join(ctx.store, "gguf-cache", `${createHash("sha256").update(JSON.stringify({ ...keyPrefix, type })).digest("hex")}.json`);
    if (await fromCache(ctx, entry, join(ctx.tmp, file))) {
      ctx.log(`gguf: ${file} (cached)`);
      reused.push(type);
    } else {
      await engine(ctx, "export-gguf", { model: merged, out: join(ctx.tmp, file), type, tokenizer, name: ctx.projectName, threads: threads(ctx) });
      writeJsonAtomic(entry, await putFile(ctx.store, join(ctx.tmp, file)));
      ctx.log(`gguf: ${file}`);
      exported.push(type);
    }
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
  return { info: { types: r.export.gguf }, run: { exported, reused } };
}

// Links a cached export into place; false when there is none (or its blob left the store).
async function fromCache(ctx: StageContext, entry: string, dest: string): Promise<boolean> {
  if (!existsSync(entry)) return false;
  try {
    const { sha256, size } = JSON.parse(readFileSync(entry, "utf8")) as { sha256: string; size: number };
    await linkFromStore(ctx.store, sha256, size, dest);
    return true;
  } catch {
    return false;
  }
}

// "0.1.0+<hash of the engine's sources>": a rebuilt engine with other sources never reuses an older export.
async function engineVersion(ctx: StageContext): Promise<string> {
  const { execa } = await import("execa");
  const r = await execa(await ensureEngine(ctx.workspaceRoot, ctx.log), ["version"], { reject: false });
  const version = /"version":"([^"]+)"/.exec(r.stdout ?? "")?.[1];
  if (!version) throw new Error(`finetune-engine version: unexpected output ${JSON.stringify(r.stdout)}`);
  return version;
}
