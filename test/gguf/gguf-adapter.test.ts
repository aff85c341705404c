// LoRA adapters as GGUF (general.type=adapter): llama.cpp running base + our adapter GGUF gives the same
// next-token log-probabilities as the merged model (W + scale·B·A computed here) exported as F32. That checks
// the tensor names and shapes (lora_a {in, r}, lora_b {r, out}), the Q/K permutation of lora_B rows, and alpha
// (alpha/r; rsLoRA's alpha/√r carried as alpha·√r).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ggufTokenizerMetadata } from "../../plugins/nx-finetune/src/gguf";
import { STORIES, exportGguf, logprobs, randn, readGgufHeader, writeSafetensors } from "./gguf-helpers";

const TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
const MODULE: Record<string, string> = {
  q_proj: "self_attn", k_proj: "self_attn", v_proj: "self_attn", o_proj: "self_attn", gate_proj: "mlp", up_proj: "mlp", down_proj: "mlp",
};

function readSafetensors(path: string): Record<string, { shape: number[]; data: Float32Array }> {
  const buf = readFileSync(path);
  const hl = Number(buf.readBigUInt64LE(0));
  const hdr = JSON.parse(buf.toString("utf8", 8, 8 + hl));
  const out: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, v] of Object.entries<any>(hdr)) {
    if (k === "__metadata__") continue;
    const [a, b] = v.data_offsets;
    out[k] = { shape: v.shape, data: new Float32Array(buf.buffer.slice(buf.byteOffset + 8 + hl + a, buf.byteOffset + 8 + hl + b)) };
  }
  return out;
}

let dir: string;
before(() => { dir = mkdtempSync(join(tmpdir(), "nxft-gguf-lora-")); });
after(() => rmSync(dir, { recursive: true, force: true }));

// Writes a PEFT adapter for stories260K and the merged model; returns [adapterDir, mergedDir].
function makeAdapter(name: string, r: number, alpha: number, rslora: boolean, seed: number): [string, string] {
  const base = readSafetensors(join(STORIES, "model.safetensors"));
  const adapter = join(dir, `${name}-adapter`), merged = join(dir, `${name}-merged`);
  mkdirSync(adapter, { recursive: true });
  mkdirSync(merged, { recursive: true });
  const scale = rslora ? alpha / Math.sqrt(r) : alpha / r;
  const lora: Record<string, { shape: number[]; data: Float32Array }> = {};
  let k = seed;
  for (let l = 0; l < 5; l++) {
    for (const t of TARGETS) {
      const wName = `model.layers.${l}.${MODULE[t]}.${t}.weight`;
      const W = base[wName];
      const [out, inp] = W.shape;
      const A = randn(r * inp, k++, 0.2), B = randn(out * r, k++, 0.2);
      lora[`base_model.model.model.layers.${l}.${MODULE[t]}.${t}.lora_A.weight`] = { shape: [r, inp], data: A };
      lora[`base_model.model.model.layers.${l}.${MODULE[t]}.${t}.lora_B.weight`] = { shape: [out, r], data: B };
      const Wm = new Float32Array(W.data.length);
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inp; i++) {
          let s = 0;
          for (let j = 0; j < r; j++) s += B[o * r + j] * A[j * inp + i];
          Wm[o * inp + i] = W.data[o * inp + i] + scale * s;
        }
      }
      base[wName] = { shape: W.shape, data: Wm };
    }
  }
  writeSafetensors(join(adapter, "adapter_model.safetensors"), lora);
  writeFileSync(join(adapter, "adapter_config.json"), JSON.stringify({
    peft_type: "LORA", r, lora_alpha: alpha, lora_dropout: 0.0, use_rslora: rslora, target_modules: TARGETS, bias: "none",
    task_type: "CAUSAL_LM", base_model_name_or_path: "stories260K-hf",
  }));
  writeSafetensors(join(merged, "model.safetensors"), base);
  for (const f of ["config.json", "tokenizer.json", "tokenizer_config.json"]) cpSync(join(STORIES, f), join(merged, f));
  return [adapter, merged];
}

const IDS = [1, 403, 407, 261, 378, 432, 383, 286];

for (const [name, r, alpha, rslora] of [["lora", 4, 8, false], ["rslora", 8, 4, true]] as const) {
  test(`${name} (r=${r}, alpha=${alpha}): base + adapter GGUF in llama.cpp equals the merged model`, async (t) => {
    const [adapter, merged] = makeAdapter(name, r, alpha, rslora, name === "lora" ? 100 : 200);
    const tokenizer = ggufTokenizerMetadata(STORIES);
    const baseGguf = join(dir, "base.f32.gguf"), mergedGguf = join(dir, `${name}-merged.f32.gguf`), adapterGguf = join(dir, `${name}.adapter.gguf`);
    exportGguf({ model: STORIES, out: baseGguf, type: "f32", tokenizer }, dir);
    exportGguf({ model: merged, out: mergedGguf, type: "f32", tokenizer }, dir);
    const s = exportGguf({ adapter, base_config: join(STORIES, "config.json"), out: adapterGguf, type: "f32" }, dir);
    assert.equal(s.tensors, 5 * 7 * 2);
    const h = readGgufHeader(adapterGguf);
    assert.equal(h.kv.get("general.type"), "adapter");
    assert.equal(h.kv.get("general.architecture"), "llama");
    assert.equal(h.kv.get("adapter.type"), "lora");
    assert.ok(Math.abs((h.kv.get("adapter.lora.alpha") as number) - (rslora ? alpha * Math.sqrt(r) : alpha)) < 1e-5);
    const qa = h.tensors.find((t) => t.name === "blk.0.attn_q.weight.lora_a")!;
    const qb = h.tensors.find((t) => t.name === "blk.0.attn_q.weight.lora_b")!;
    assert.deepEqual(qa.ne, [64, r]);
    assert.deepEqual(qb.ne, [r, 64]);

    const viaAdapter = await logprobs(baseGguf, IDS, { filePath: adapterGguf });
    const viaMerged = await logprobs(mergedGguf, IDS);
    const plain = await logprobs(baseGguf, IDS);
    let max = 0, moved = 0;
    viaAdapter.forEach((row, i) => row.forEach((v, t) => {
      max = Math.max(max, Math.abs(v - viaMerged[i][t]));
      moved = Math.max(moved, Math.abs(v - plain[i][t]));
    }));
    t.diagnostic(`max |Δ log p| base+adapter vs merged ${max.toExponential(2)}; adapter moves log p by up to ${moved.toFixed(2)}`);
    assert.ok(moved > 0.5, `the adapter barely changes the model (max |Δ log p| ${moved}): the test would prove nothing`);
    assert.ok(max < 5e-3, `base+adapter vs merged: max |Δ log p| = ${max}`);
  });
}

test("adapter export refuses quantized presets it does not support", () => {
  const [adapter] = makeAdapter("bad", 4, 8, false, 300);
  assert.throws(() => exportGguf({ adapter, base_config: join(STORIES, "config.json"), out: join(dir, "bad.gguf"), type: "q4_k_m" }, dir),
    /type.*q4_k_m|q4_k_m/);
});
