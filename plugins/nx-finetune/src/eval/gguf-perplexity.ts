// gguf-perplexity.ts — perplexity of a GGUF file on token shards through llama.cpp (node-llama-cpp), which is what
// GGUF users run: the same target tokens the engine's `eval` scores, so q4_k_m vs q8_0 vs f16 is the quality cost
// of each quantization. node-llama-cpp is optional: without it the eval stage notes the skip (see loadLlama).
//
// Each document of a shard row (positions restart at 0; padding has no targets) is evaluated from a cleared
// sequence; llama.cpp's next-token distribution is requested only where the row has a target.
import { readFileSync } from "node:fs";
import { IGNORE_INDEX, parseShard } from "../data/shard-format";

export interface GgufPerplexity { loss: number; perplexity: number; tokens: number }

// node-llama-cpp is an ES module; the plugin runs as CommonJS (Nx transpiles it), where a plain import() would
// become require() and fail. A real dynamic import, then.
const importEsm = new Function("specifier", "return import(specifier)") as (specifier: string) => Promise<any>;

// null when node-llama-cpp is not installed (or has no binary for this machine); the reason goes to `why`.
export async function loadLlama(why: (reason: string) => void, importer = importEsm): Promise<any | null> {
  let mod: any;
  try {
    mod = await importer("node-llama-cpp");
  } catch (e: any) {
    why(e?.code === "ERR_MODULE_NOT_FOUND" || e?.code === "MODULE_NOT_FOUND"
      ? "node-llama-cpp is not installed (npm i -D node-llama-cpp@3.21.1 to measure GGUF perplexity)"
      : `node-llama-cpp could not be loaded: ${String(e?.message ?? e).split("\n")[0]}`);
    return null;
  }
  try {
    // CPU, prebuilt binary only: an eval must not start compiling llama.cpp or pick a GPU the training didn't use.
    return await mod.getLlama({ gpu: false, build: "never", logLevel: mod.LlamaLogLevel.error });
  } catch (e) {
    why(`node-llama-cpp could not load llama.cpp: ${(e as Error).message.split("\n")[0]}`);
    return null;
  }
}

// llama.cpp hands back the whole next-token distribution (a Map of vocab size) for every scored position, so the
// GGUF perplexity is taken over the first documents holding up to this many target tokens (every type scores the
// same ones, so the comparison between types holds; the demo's eval split has 41).
export const GGUF_MAX_TARGET_TOKENS = 4096;

// Documents with at least one target: token ids from the document start, and target[t] for each position; whole
// documents, in shard order, until `maxTargetTokens` targets are reached.
export function shardDocuments(shardFiles: string[], maxTargetTokens = Infinity): Array<{ ids: number[]; targets: number[] }> {
  const docs: Array<{ ids: number[]; targets: number[] }> = [];
  let targets = 0;
  for (const file of shardFiles) {
    const s = parseShard(readFileSync(file), file);
    const T = s.seqLen;
    for (let r = 0; r < s.nRows; r++) {
      let cur: { ids: number[]; targets: number[] } | undefined;
      const flush = () => {
        const n = cur ? cur.targets.filter((t) => t !== IGNORE_INDEX).length : 0;
        if (n > 0 && (docs.length === 0 || targets + n <= maxTargetTokens)) { docs.push(cur!); targets += n; }
      };
      for (let t = 0; t < T; t++) {
        const i = r * T + t;
        if (s.positions[i] === 0) { flush(); cur = { ids: [], targets: [] }; }
        cur!.ids.push(s.tokens[i]);
        cur!.targets.push(s.targets[i]);
      }
      flush();
    }
  }
  return docs;
}

export async function ggufPerplexity(llama: any, modelPath: string, docs: Array<{ ids: number[]; targets: number[] }>,
                                     threads: number): Promise<GgufPerplexity> {
  const model = await llama.loadModel({ modelPath });
  const contextSize = Math.max(...docs.map((d) => d.ids.length), 16);
  // f32 KV cache, no flash attention: the numbers should move with the weights' type only.
  const ctx = await model.createContext({ contextSize, threads, flashAttention: false,
                                          experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32" });
  try {
    const seq = ctx.getSequence();
    let nll = 0, tokens = 0;
    for (const doc of docs) {
      await seq.clearHistory();
      const input = doc.ids.map((id, t) => (doc.targets[t] !== IGNORE_INDEX ? [id, { generateNext: { probabilities: true } }] : id));
      const out: any[] = await seq.controlledEvaluate(input);
      doc.targets.forEach((target, t) => {
        if (target === IGNORE_INDEX) return;
        const p: number = out[t]?.next?.probabilities?.get(target) ?? 0;
        nll += -Math.log(Math.max(p, 1e-30));
        tokens++;
      });
    }
    const loss = nll / Math.max(tokens, 1);
    return { loss, perplexity: Math.exp(loss), tokens };
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}
