// The eval target end to end, with the real nx, engine and llama.cpp, in a temp copy of the workspace holding the
// demo recipe and a copy of it with a quality gate it cannot pass:
//   - `nx run demo:eval` exits 0, prints the base-vs-tuned table and the demo's overfitting warning, writes
//     metrics.json whose numbers agree with each other (the merged f16 model and its f16 GGUF score alike), and a
//     report.html that headless Chromium renders offline into a screenshot with real content;
//   - `nx run demo-gate:eval` fails naming eval_loss, value and bound, twice (a failing gate is never cached), and
//     leaves no stage-manifest.json under out/eval/;
//   - `nx run demo:publish` pushes the adapter, GGUF files and model card to a fake Hub on 127.0.0.1 (HF_TOKEN from
//     .env, never printed), pushes again to the existing repo, and fails clearly when the Hub is unreachable, without
//     a token, with a bad token, and (demo-gate) when the gate fails.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ensureEngine } from "../../plugins/nx-finetune/src/engine";
import { countColor, decodePng, pixelStats } from "../support/png";
import { findChromium, screenshot } from "../support/chromium";
import { startFakeHub } from "../support/fake-hub";
import { makeWorkspace, nxBin, nxEnvironment, repoRoot, runNx, removeTestDirs } from "./temp-workspace";

let ws = "", shared = "", engine = "";

before(async () => {
  engine = process.env.NXFT_ENGINE || (await ensureEngine(repoRoot, (l) => console.log(l)));
  const root = mkdtempSync(join(tmpdir(), "nxft-eval-"));
  shared = join(root, "shared");
  ws = join(root, "ws");
  mkdirSync(ws, { recursive: true });
  makeWorkspace(ws, (dir) => {
    // The demo recipe as committed, plus the gate. The copy's paths are relative, so it sits beside the demo.
    const gated = join(dir, "recipes", "demo-gate");
    mkdirSync(gated, { recursive: true });
    cpSync(join(dir, "recipes", "demo", "base"), join(gated, "base"), { recursive: true });
    const recipe = JSON.parse(readFileSync(join(dir, "recipes", "demo", "recipe.json"), "utf8"));
    recipe.eval = { gate: { eval_loss: { max: 0.0001 } } };
    writeFileSync(join(gated, "recipe.json"), JSON.stringify(recipe, null, 2) + "\n");
  });
});

after(() => removeTestDirs(shared));

const evalDir = (project: string) => join(ws, "recipes", project, "out", "eval");

test("nx show project demo lists eval, which depends on gguf", () => {
  const r = runNx(ws, { shared, engine }, "show", "project", "demo", "--json");
  assert.equal(r.code, 0, r.out);
  const project = JSON.parse(r.out.slice(r.out.indexOf("{"), r.out.lastIndexOf("}") + 1));
  assert.deepEqual(project.targets.eval.dependsOn, ["gguf"]);
  assert.equal(project.targets.eval.cache, true);
});

test("nx run demo:eval measures base vs tuned, warns about overfitting, writes metrics and the report", () => {
  const r = runNx(ws, { shared, engine }, "run", "demo:eval");
  assert.equal(r.code, 0, r.out);
  console.log(r.out.split("\n").filter((l) => /eval: |warning: overfitting/.test(l)).join("\n"));
  // The demo trains 300 steps on 58 rows: train loss → 0.01 while eval loss climbs after step 100.
  assert.match(r.out, /warning: overfitting: eval loss rose at 2 consecutive evals \(5\.9\d → [\d.]+ → 6\.2\d/);
  const m = JSON.parse(readFileSync(join(evalDir("demo"), "metrics.json"), "utf8"));
  const x = m.metrics;
  // The tuned model's eval loss is the one training reported at its last eval (same shards, same engine code).
  const training = JSON.parse(readFileSync(join(ws, "recipes", "demo", "out", "adapter", "run.json"), "utf8")).summary;
  assert.ok(Math.abs(x.eval_loss - training.final_eval_loss) < 1e-4, `${x.eval_loss} vs ${training.final_eval_loss}`);
  assert.ok(Math.abs(x.eval_loss_delta - (x.eval_loss - x.base_eval_loss)) < 1e-12);
  assert.ok(x.base_eval_loss > x.eval_loss, "the tuned model fits the eval split better than the random base");
  assert.ok(Math.abs(x.eval_perplexity - Math.exp(x.eval_loss)) < 1e-6 * x.eval_perplexity);
  // merged f16 (engine) and demo.f16.gguf (llama.cpp) are the same weights: their perplexities agree closely;
  // the merge itself (f32 adapter → f16 weights) costs little.
  assert.ok(Math.abs(x.merged_eval_loss - x.eval_loss) < 0.01, `${x.merged_eval_loss} vs ${x.eval_loss}`);
  assert.ok(Math.abs(Math.log(x.gguf_f16_perplexity) - x.merged_eval_loss) < 0.01, `${x.gguf_f16_perplexity} vs exp(${x.merged_eval_loss})`);
  assert.equal(x.gguf_f16_perplexity_delta, 0);
  for (const t of ["q8_0", "q4_k_m"]) assert.ok(Number.isFinite(x[`gguf_${t}_perplexity`]) && Number.isFinite(x[`gguf_${t}_perplexity_delta`]), t);
  assert.ok(Math.abs(x.gguf_q8_0_perplexity_delta) < 0.05, "q8_0 stays within 5% of f16");
  // Scores are fractions of the 9 eval rows; samples show the first rows with their reference answers.
  for (const k of ["exact_match", "contains", "base_exact_match", "base_contains"]) assert.ok(x[k] >= 0 && x[k] <= 1, k);
  assert.equal(m.samples.length, 4);
  for (const s of m.samples) assert.ok(typeof s.reference === "string" && s.reference.length > 0 && typeof s.tuned === "string");
  assert.deepEqual(m.gguf.map((g: any) => g.file).sort(), ["demo.adapter.gguf", "demo.f16.gguf", "demo.q4_k_m.gguf", "demo.q8_0.gguf"]);
  assert.ok(existsSync(join(evalDir("demo"), "stage-manifest.json")));

  const html = readFileSync(join(evalDir("demo"), "report.html"), "utf8");
  assert.ok(!/(src|href)=["']?https?:/i.test(html), "the report loads nothing from the network");
  // The demo's own gate (eval_loss_delta ≤ 0: the tuned model beats the base on the eval split) passes.
  assert.deepEqual(m.gate, { bounds: { eval_loss_delta: { max: 0 } }, failures: [] });
  for (const s of ["gate passed", "overfitting", "demo.q4_k_m.gguf", "Sample generations", "<svg", "base model eval", m.samples[0].reference]) assert.ok(html.includes(s), s);
});

test("a second nx run demo:eval comes from the cache", () => {
  const r = runNx(ws, { shared, engine }, "run", "demo:eval");
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /Nx read the output from the cache instead of running the command for 7 out of 7 tasks/);
});

test("headless Chromium renders the report: a non-blank page with the tables, warning and loss curve", (t) => {
  const chromium = findChromium();
  if (!chromium) {
    if (process.env.CI) assert.fail("chromium not found (.ci/run installs it)");
    t.skip("chromium not installed (apt-get install -y chromium)");
    return;
  }
  const png = join(shared, "..", "report.png");
  screenshot(chromium, join(evalDir("demo"), "report.html"), png, 1200, 2200);
  const img = decodePng(readFileSync(png));
  assert.equal(img.width, 1200);
  assert.equal(img.height, 2200);
  const stats = pixelStats(img);
  console.log(`report screenshot: ${img.width}×${img.height}, luma std ${stats.lumaStd.toFixed(1)}, ${stats.colors} colours`);
  assert.ok(stats.lumaStd > 10, `a blank page has no contrast: luma std ${stats.lumaStd}`);
  assert.ok(stats.colors > 100, `text and charts anti-alias into many colours: ${stats.colors}`);
  // Colours only the rendered report has: the yellow warning box, the green "helped" delta cells, the loss curve's
  // blue train line and red eval dots.
  assert.ok(countColor(img, "#fff8c5", 4) > 5000, "overfitting warning box");
  assert.ok(countColor(img, "#dafbe1", 4) > 1000, "green delta cells");
  assert.ok(countColor(img, "#1f77b4", 40) > 200, "train loss line");
  assert.ok(countColor(img, "#d62728", 40) > 20, "eval loss dots");
});

test("a copy of the demo with eval.gate eval_loss ≤ 0.0001 fails naming eval_loss, and is not cached", () => {
  for (let run = 0; run < 2; run++) {
    const r = runNx(ws, { shared, engine }, "run", "demo-gate:eval");
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /quality gate failed/);
    assert.match(r.out, /eval_loss = 6\.2\d+, the gate wants ≤ 0\.0001/);
    if (run === 1) assert.doesNotMatch(r.out, /demo-gate:eval.*\[local cache\]|existing outputs match the cache/);
  }
  assert.ok(existsSync(join(evalDir("demo-gate"), "report.html")), "the failing report is there to read");
  assert.ok(!existsSync(join(evalDir("demo-gate"), "stage-manifest.json")), "but nothing marks it as a passing eval");
  assert.match(readFileSync(join(evalDir("demo-gate"), "report.html"), "utf8"), /gate FAILED/);
  // The gated stages upstream are the demo's own, cached like any others: the second run trained nothing.
  const runs = readFileSync(join(ws, "recipes", "demo-gate", "out", "runs.log"), "utf8").trim().split("\n").map((l) => l.split(" ")[1]);
  assert.equal(runs.filter((s) => s === "adapter").length, 1);
  assert.equal(runs.filter((s) => s === "eval").length, 0, "a failed eval never commits");
});

// runNx blocks the event loop (spawnSync), which would starve the fake Hub living in this process.
function runNxAsync(extra: Record<string, string>, ...args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [nxBin(), ...args, "--outputStyle=stream"], { cwd: ws, env: nxEnvironment(ws, { shared, engine, extra }) });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    child.on("close", (code) => resolve({ code: code ?? -1, out }));
  });
}

const TOKEN = "hf_fake_0123456789abcdefSECRET";

test("nx run demo:publish pushes the adapter, GGUF files and a model card to the Hub, token from .env", async () => {
  const hub = await startFakeHub(TOKEN);
  try {
    writeFileSync(join(ws, ".env"), `HF_TOKEN=${TOKEN}\n`);
    const r = await runNxAsync({ HF_ENDPOINT: hub.url, HF_TOKEN: "" }, "run", "demo:publish", "--repo=me/demo-lora");
    assert.equal(r.code, 0, r.out);
    assert.ok(!r.out.includes(TOKEN), "the token is never printed");
    const repo = hub.repos.get("me/demo-lora");
    assert.ok(repo, "the repo was created");
    assert.equal(repo.private, true, "publish.private defaults to true");
    const out = (stage: string, f: string) => readFileSync(join(ws, "recipes", "demo", "out", stage, f));
    const expected: Record<string, Buffer> = {
      "adapter_config.json": out("adapter", "adapter_config.json"), "adapter_model.safetensors": out("adapter", "adapter_model.safetensors"),
      "Modelfile": out("gguf", "Modelfile"),
    };
    for (const t of ["f16", "q8_0", "q4_k_m", "adapter"]) expected[`demo.${t}.gguf`] = out("gguf", `demo.${t}.gguf`);
    assert.deepEqual([...repo.files.keys()].sort(), [...Object.keys(expected), "README.md"].sort());
    const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
    for (const [f, bytes] of Object.entries(expected)) assert.equal(sha(repo.files.get(f)!), sha(bytes), f);
    // Weights went through LFS (PUT /lfs-upload), small files inline in the commit.
    assert.equal(hub.requests.filter((q) => q.method === "PUT").length, 5);
    for (const q of hub.requests.filter((q) => q.path.startsWith("/api/"))) assert.equal(q.authorization, `Bearer ${TOKEN}`);
    const card = repo.files.get("README.md")!.toString();
    const metrics = JSON.parse(readFileSync(join(evalDir("demo"), "metrics.json"), "utf8")).metrics;
    for (const s of ["library_name: peft", "## Evaluation", `| eval loss | ${metrics.base_eval_loss.toFixed(4)} | ${metrics.eval_loss.toFixed(4)} |`,
                     "`alpaca`", "r 16, alpha 32", "llama-cli --hf-repo me/demo-lora --hf-file demo.q4_k_m.gguf", "ollama run hf.co/me/demo-lora:Q4_K_M",
                     "ollama create demo -f Modelfile", "`demo.q8_0.gguf`", "datasets/demo/train.jsonl"]) {
      assert.ok(card.includes(s), `model card lacks ${JSON.stringify(s)}:\n${card}`);
    }
    // A second push goes to the existing repo (the Hub answers 409 to create).
    const again = await runNxAsync({ HF_ENDPOINT: hub.url, HF_TOKEN: "" }, "run", "demo:publish", "--repo=me/demo-lora");
    assert.equal(again.code, 0, again.out);
    assert.equal(repo.commits.length, 2);
    // A wrong token: the Hub's 401, with what to do, and still no token in the output.
    const bad = await runNxAsync({ HF_ENDPOINT: hub.url, HF_TOKEN: "hf_wrong_SECRET2" }, "run", "demo:publish", "--repo=me/other");
    assert.notEqual(bad.code, 0, bad.out);
    assert.match(bad.out, /creating me\/other \(HTTP 401\).*HF_TOKEN must be a token with write access to me\/other/);
    assert.ok(!bad.out.includes("hf_wrong_SECRET2") && !bad.out.includes(TOKEN));
  } finally {
    await hub.close();
    writeFileSync(join(ws, ".env"), "");
  }
});

test("publish fails clearly when the Hub is unreachable, without a token, or when the gate fails", async () => {
  // A port nothing listens on: take one, then close it.
  const port = await new Promise<number>((resolve) => { const s = createServer().listen(0, "127.0.0.1", () => { const p = (s.address() as any).port; s.close(() => resolve(p)); }); });
  const offline = await runNxAsync({ HF_ENDPOINT: `http://127.0.0.1:${port}`, HF_TOKEN: TOKEN }, "run", "demo:publish", "--repo=me/demo-lora");
  assert.notEqual(offline.code, 0, offline.out);
  assert.match(offline.out, new RegExp(`cannot reach the Hugging Face Hub at http://127\\.0\\.0\\.1:${port} \\(ECONNREFUSED\\)`));
  assert.ok(!offline.out.includes(TOKEN));
  const noToken = await runNxAsync({ HF_TOKEN: "" }, "run", "demo:publish", "--repo=me/demo-lora");
  assert.notEqual(noToken.code, 0, noToken.out);
  assert.match(noToken.out, /HF_TOKEN is not set \(environment or \.env\)/);
  const noRepo = await runNxAsync({ HF_TOKEN: TOKEN }, "run", "demo:publish");
  assert.match(noRepo.out, /no repo to publish to: pass --repo=<user or org>\/<name> or set publish\.repo/);
  const gated = await runNxAsync({ HF_TOKEN: TOKEN }, "run", "demo-gate:publish", "--repo=me/demo-lora");
  assert.notEqual(gated.code, 0, gated.out);
  assert.match(gated.out, /quality gate failed/);
  assert.doesNotMatch(gated.out, /publish: uploading/);
});
