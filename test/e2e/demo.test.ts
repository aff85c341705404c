// The demo as a user runs it, in a fresh temp copy of the workspace: `nx run demo:gguf` (the committed recipe,
// full training), then `nx run demo:chat` answers questions from the training set the way it was taught, and so does
// llama.cpp (node-llama-cpp) from each GGUF file the gguf stage wrote.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { renderChat } from "../../plugins/nx-finetune/src/data";
import { greedy } from "../gguf/gguf-helpers";
import { makeWorkspace, repoRoot, runNx, removeTestDirs } from "./temp-workspace";

let ws = "", shared = "", engine = "";

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-demo-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws);
});

after(() => removeTestDirs(shared));

test("nx run demo:gguf trains the demo and exports it", () => {
  const r = runNx(ws, { shared, engine }, "run", "demo:gguf");
  assert.equal(r.code, 0, r.out);
  console.log(`demo: nx run demo:gguf took ${r.wall_s.toFixed(1)} s`);
  const final = /adapter: 300 steps, final train loss ([\d.]+)/.exec(r.out);
  assert.ok(final, r.out);
  assert.ok(Number(final[1]) < 5, `the loss went down from ln(512) = 6.24: ${final[1]}`);
  assert.deepEqual(readdirSync(join(ws, "recipes", "demo", "out", "gguf")).filter((f) => f.endsWith(".gguf")).sort(),
    ["demo.adapter.gguf", "demo.f16.gguf", "demo.q4_k_m.gguf", "demo.q8_0.gguf"]);
});

// Greedy decoding of the trained adapter, through the recipe's template and the engine's generate.
for (const [prompt, answer] of [["What is the capital of France?", "Paris."], ["What colour is snow?", "White."]]) {
  test(`chat: "${prompt}" → "${answer}"`, () => {
    const r = runNx(ws, { shared, engine }, "run", "demo:chat", `--prompt=${prompt}`);
    assert.equal(r.code, 0, r.out);
    // Only the reply between Nx's task header and its summary: no replayed logs of the cached stages.
    const reply = /> nx run demo:chat[^\n]*\n+([\s\S]*?)\n+ NX {3}Successfully ran/.exec(r.out);
    assert.ok(reply, r.out);
    assert.equal(reply[1].replace(/^demo: /gm, "").trim(), answer);
  });
}

// The same questions through llama.cpp: the alpaca prompt the recipe trains with, greedy, from every exported type.
for (const type of ["f16", "q8_0", "q4_k_m"]) {
  test(`llama.cpp answers from demo.${type}.gguf like the engine does`, async () => {
    const gguf = join(ws, "recipes", "demo", "out", "gguf", `demo.${type}.gguf`);
    for (const [prompt, answer] of [["What is the capital of France?", "Paris."], ["What colour is snow?", "White."]]) {
      const { text } = renderChat([{ role: "user", content: prompt }], "alpaca", join(repoRoot, "recipes", "demo", "base"));
      const reply = await greedy(gguf, text, 8);
      assert.ok(reply.text.trim().startsWith(answer), `${type}: ${JSON.stringify(prompt)} → ${JSON.stringify(reply.text)}`);
    }
  });
}
