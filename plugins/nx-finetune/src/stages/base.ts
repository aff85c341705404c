// base.ts — the base stage: make the base model folder available and pin its identity.
//   local folder → fingerprint it (sha256 of every file, remembered by path+size+mtime+inode)
//   {hub, revision} → the revision pinned to its commit, the files from the shared HF cache (hub-client.ts)
//   {init, tokenizer, seed} → `finetune-engine init` writes a deterministic random model (the demo)
import { existsSync } from "node:fs";
import { join } from "node:path";
import { baseQuantization } from "../base-quantization";
import { fingerprint } from "../fingerprint.cjs";
import { resolveRevision } from "../hub-client";
import { ensureHubModel } from "../hub-model";
import { baseSpec } from "../recipe";
import { engine, mustExist, recipePath, type StageContext, type StageResult } from "../stage-context";
import { fingerprintCachePath } from "../store";

const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"];

export async function runBase(ctx: StageContext): Promise<StageResult> {
  const spec = baseSpec(ctx.recipe);
  if (spec.kind === "local") {
    const dir = recipePath(ctx, spec.path);
    mustExist(join(dir, "config.json"), "base model config.json");
    const fp = fingerprint(dir, fingerprintCachePath(ctx.store));
    const quantization = baseQuantization(join(dir, "config.json"));   // pre-quantized (bitsandbytes 4-bit) or null
    ctx.log(`base: ${dir} (${fp.files} files, ${(fp.size / 1e6).toFixed(1)} MB, ${fp.hashed} hashed this run)` +
      (quantization ? `, bitsandbytes 4-bit ${quantization.quant_type}${quantization.double_quant ? " double-quantized" : ""}` : ""));
    return { info: { kind: "local", path: spec.path, sha256: fp.sha256, ...(quantization ? { quantization } : {}) } };
  }
  if (spec.kind === "hub") {
    // A branch or tag is pinned to the commit it names now: `revision` in the manifest is that commit.
    const commit = await resolveRevision({ workspaceRoot: ctx.workspaceRoot, log: ctx.log }, { kind: "model", name: spec.hub, field: "base" }, spec.revision);
    const dir = await ensureHubModel(ctx.store, ctx.workspaceRoot, spec.hub, commit, ctx.log);
    const fp = fingerprint(dir, fingerprintCachePath(ctx.store));
    const quantization = baseQuantization(join(dir, "config.json"));
    return { info: { kind: "hub", hub: spec.hub, revision: commit, ...(commit !== spec.revision ? { ref: spec.revision } : {}), sha256: fp.sha256,
                     ...(quantization ? { quantization } : {}) } };
  }
  const config = mustExist(recipePath(ctx, spec.init), "base.init config");
  const tokenizerDir = recipePath(ctx, spec.tokenizer);
  const tokenizerFiles = TOKENIZER_FILES.map((f) => join(tokenizerDir, f)).filter((f) => existsSync(f));
  mustExist(join(tokenizerDir, "tokenizer.json"), "base.tokenizer tokenizer.json");
  const summary = await engine(ctx, "init", { config, seed: spec.seed, dtype: spec.dtype, out: ctx.tmp, tokenizer_files: tokenizerFiles });
  return { info: { kind: "init", seed: spec.seed, dtype: spec.dtype }, run: { engine: summary } };
}
