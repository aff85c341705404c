// The engine's generate with "prompts" (several prompts on one loaded model, used by the eval stage) gives exactly
// what one generate call per prompt gives, greedy and sampled; token events say which prompt they belong to.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine, runEngine, type EngineEvent } from "../../plugins/nx-finetune/src/engine";

const root = join(__dirname, "..", "..");
let engine = "", dir = "", model = "";

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(root, () => {}));
  dir = mkdtempSync(join(tmpdir(), "nxft-generate-"));
  model = join(dir, "model");
  const base = join(root, "recipes", "demo", "base");
  await runEngine(engine, "init", { config: join(base, "config.json"), seed: 3, dtype: "f32", out: model, threads: 1,
                                   tokenizer_files: [join(base, "tokenizer.json")].filter(existsSync) }, join(dir, "init.json"), () => {});
});

const PROMPTS = [[1, 17, 40, 90], [1, 200], [1, 5, 6, 7, 8, 9, 10, 11, 300]];

async function generate(job: Record<string, unknown>): Promise<{ summary: Record<string, any>; events: EngineEvent[] }> {
  const events: EngineEvent[] = [];
  const summary = await runEngine(engine, "generate", { model, adapter: null, max_new_tokens: 12, top_k: 0, top_p: 1, stop_ids: [], threads: 1, ...job },
                                  join(dir, "generate.json"), (e) => events.push(e));
  return { summary, events };
}

for (const [name, sampling] of [["greedy", { temperature: 0, seed: 0 }], ["sampled", { temperature: 1.5, seed: 7 }]] as const) {
  test(`prompts: equals one call per prompt (${name})`, async () => {
    const single: number[][] = [];
    for (const p of PROMPTS) single.push((await generate({ ...sampling, prompt_ids: p })).summary.ids);
    const { summary, events } = await generate({ ...sampling, prompts: PROMPTS });
    assert.deepEqual(summary.outputs, single);
    assert.equal(summary.ids, undefined);
    assert.equal(summary.tokens, single.flat().length);
    const tokens = events.filter((e) => e.event === "token");
    assert.deepEqual(PROMPTS.map((_, p) => tokens.filter((e) => e.prompt === p).map((e) => e.id)), single);
    // The outputs differ between prompts (the test would pass trivially on a model that ignores its input).
    assert.notDeepEqual(single[0], single[1]);
  });
}

test("prompts: exactly one of prompt_ids / prompts, every prompt checked", async () => {
  await assert.rejects(generate({ temperature: 0, seed: 0 }), /prompt_ids.*exactly one of prompt_ids \/ prompts/);
  await assert.rejects(generate({ temperature: 0, seed: 0, prompt_ids: [1], prompts: [[1]] }), /exactly one of prompt_ids \/ prompts/);
  await assert.rejects(generate({ temperature: 0, seed: 0, prompts: [[1], []] }), /prompts\[1\].*must not be empty/);
  await assert.rejects(generate({ temperature: 0, seed: 0, prompts: [[1, 100000]] }), /prompts\[0\].*outside the vocabulary/);
});
