// model-card.ts — the README.md pushed with a published fine-tune: Hub metadata (YAML front matter), then what it is
// (base, data, template, LoRA, training), how good it is (the eval stage's metrics against the base model), the
// files, and how to run them in llama.cpp, Ollama and transformers + PEFT.
import { formatMetric, type Metrics } from "../eval/metrics";
import type { Recipe } from "../recipe";

export interface ModelCardInput {
  repo: string;
  project: string;
  recipe: Recipe;
  base: { kind: string; hub?: string; revision?: string; path?: string };
  data: { rows: number; train_rows: number; eval_rows: number; format: string; sources: string[] };
  training: Record<string, any> | null;
  metrics: Metrics;
  files: Array<{ path: string; size: number }>;
  artifacts: string[];
  adapterDir: string; // "" (repo root) or "adapter/"
}

const fmtSize = (n: number) => (n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(2)} GiB` : n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(0)} KiB`);
const yamlString = (s: string) => JSON.stringify(s); // JSON strings are valid YAML scalars

export function modelCard(c: ModelCardInput): string {
  const r = c.recipe, m = c.metrics;
  const baseName = c.base.kind === "hub" ? `${c.base.hub}` : c.base.kind === "init" ? "a randomly initialized model (engine init)" : `a local model (${c.base.path})`;
  const ggufs = c.files.filter((f) => f.path.endsWith(".gguf") && !f.path.endsWith(".adapter.gguf"));
  const preferred = ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "f16", "bf16", "f32"]
    .map((t) => ggufs.find((f) => f.path.endsWith(`.${t}.gguf`))).find(Boolean);
  const quantTag = preferred ? /\.([a-z0-9_]+)\.gguf$/.exec(preferred.path)![1].toUpperCase() : "";
  const front = [
    "---",
    ...(c.base.kind === "hub" ? [`base_model: ${yamlString(c.base.hub!)}`] : []),
    ...(c.artifacts.includes("adapter") ? ["library_name: peft"] : []),
    ...(r.data.hub ? [`datasets:\n  - ${yamlString(r.data.hub)}`] : []),
    "tags:", "  - nx-finetune", "  - lora", ...(ggufs.length ? ["  - gguf"] : []),
    ...(Number.isFinite(m.eval_loss ?? NaN) ? [
      "model-index:", `  - name: ${yamlString(c.repo)}`, "    results:", "      - task: { type: text-generation }",
      "        metrics:", `          - { type: loss, name: eval_loss, value: ${m.eval_loss} }`,
      `          - { type: perplexity, name: eval_perplexity, value: ${m.eval_perplexity} }`,
    ] : []),
    "---",
  ];
  const evalRows: Array<[string, number | null, number | null, number | null]> = [
    ["eval loss", m.base_eval_loss, m.eval_loss, m.eval_loss_delta],
    ["perplexity", m.base_eval_perplexity, m.eval_perplexity, m.eval_perplexity_delta],
    ["exact match", m.base_exact_match, m.exact_match, m.exact_match_delta],
    ["contains", m.base_contains, m.contains, m.contains_delta],
  ];
  const ggufEval = ggufs.map((f) => {
    const t = /\.([a-z0-9_]+)\.gguf$/.exec(f.path)?.[1] ?? "";
    const d = m[`gguf_${t}_perplexity_delta`];
    return `| \`${f.path}\` | ${fmtSize(f.size)} | ${formatMetric(m[`gguf_${t}_perplexity`])} | ${d === null || d === undefined ? "n/a" : `${d >= 0 ? "+" : ""}${(100 * d).toFixed(2)}%`} |`;
  });
  const prompt = r.chat.prompt ?? "Hello";
  const t = c.training ?? {};
  return [
    ...front, "",
    `# ${c.repo.split("/")[1]}`, "",
    `A LoRA fine-tune of ${baseName}, made with nx-finetune from the recipe \`${c.project}\`.`, "",
    "## Training", "",
    `| | |`, `|---|---|`,
    `| base model | ${baseName}${c.base.revision ? ` @ \`${c.base.revision}\`` : ""} |`,
    `| data | ${c.data.sources.map((s) => `\`${s}\``).join(", ") || "n/a"} (${r.data.format}): ${c.data.rows} rows, ${c.data.train_rows} train, ${c.data.eval_rows} eval |`,
    `| prompt template | \`${r.template.name}\`, max_seq_len ${r.template.max_seq_len}, trained on ${r.template.train_on}${r.template.packing ? ", packed" : ""} |`,
    `| LoRA | r ${r.lora.r}, alpha ${r.lora.alpha}, dropout ${r.lora.dropout}${r.lora.rslora ? ", rsLoRA" : ""}, ${r.lora.targets.join(", ")}${r.quantize_base ? ` (QLoRA, ${r.quantize_base} base)` : ""} |`,
    `| training | ${t.steps ?? r.train.steps ?? "?"} steps, lr ${r.train.lr} (${r.train.schedule}), batch ${r.train.batch_size} × ${r.train.grad_accum}, final train loss ${formatMetric(t.final_train_loss)} |`,
    "",
    "## Evaluation (eval split, greedy)", "",
    "| metric | base model | this model | delta |", "|---|---:|---:|---:|",
    ...evalRows.map(([name, b, tuned, d]) => `| ${name} | ${formatMetric(b)} | ${formatMetric(tuned)} | ${formatMetric(d)} |`),
    "",
    ...(ggufs.length ? ["## Files", "", "| GGUF file | size | perplexity (llama.cpp) | vs f16 |", "|---|---:|---:|---:|", ...ggufEval, ""] : []),
    ...(preferred ? [
      "## Run it with llama.cpp", "", "```sh",
      `llama-cli --hf-repo ${c.repo} --hf-file ${preferred.path} -p ${JSON.stringify(prompt)} -n 64`,
      `# or, after downloading: llama-cli -m ${preferred.path} -cnv`,
      ...(c.files.some((f) => f.path.endsWith(".adapter.gguf")) ? [`# the LoRA alone, on a GGUF of the base model: llama-cli -m base.gguf --lora ${c.files.find((f) => f.path.endsWith(".adapter.gguf"))!.path}`] : []),
      "```", "",
      "## Run it with Ollama", "", "```sh",
      `ollama run hf.co/${c.repo}:${quantTag}`,
      ...(c.files.some((f) => f.path === "Modelfile") ? [`# or with the recipe's template and stop tokens: download the repo, then`, `ollama create ${c.project} -f Modelfile && ollama run ${c.project}`] : []),
      "```", "",
    ] : []),
    ...(c.artifacts.includes("adapter") && c.base.kind === "hub" ? [
      "## Use the adapter with transformers + PEFT", "", "```python",
      "from transformers import AutoModelForCausalLM, AutoTokenizer", "from peft import PeftModel",
      `base = AutoModelForCausalLM.from_pretrained(${JSON.stringify(c.base.hub)}${c.base.revision ? `, revision=${JSON.stringify(c.base.revision)}` : ""})`,
      // the template's added tokens: the adapter trains their rows of the grown vocabulary (its tokenizer beside it)
      ...(c.files.some((f) => f.path === `${c.adapterDir}tokenizer.json`) ? [
        `tokenizer = AutoTokenizer.from_pretrained(${JSON.stringify(c.repo)}${c.adapterDir ? `, subfolder=${JSON.stringify(c.adapterDir.replace(/\/$/, ""))}` : ""})`,
        "base.resize_token_embeddings(max(len(tokenizer), base.config.vocab_size))",
      ] : []),
      `model = PeftModel.from_pretrained(base, ${JSON.stringify(c.repo)}${c.adapterDir ? `, subfolder=${JSON.stringify(c.adapterDir.replace(/\/$/, ""))}` : ""})`,
      "```", "",
    ] : []),
  ].join("\n");
}
