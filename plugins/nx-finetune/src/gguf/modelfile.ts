// modelfile.ts — an Ollama Modelfile for an exported GGUF: FROM (and ADAPTER), a TEMPLATE in Ollama's Go
// template language that renders conversations exactly like the training template (src/data/templates.ts),
// the stop tokens that end a turn, and PARAMETERs.
//
// Ollama hands the template .Messages (role/content; a SYSTEM line or a system message comes first) and adds
// BOS itself when the GGUF says add_bos_token, so no template writes BOS.
// Template "base" maps the tokenizer's own Jinja chat_template to a Go template when it is a known family
// (ChatML, Llama 3, Zephyr, Gemma); an unknown one is an error naming the file.
// "text" is plain completion: TEMPLATE {{ .Prompt }}.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ALPACA_PREAMBLE_TEXT, type TrainingTemplate } from "./tokenizer-metadata";

export interface ModelfileOptions {
  ggufFile: string;            // path written after FROM (relative to the Modelfile, e.g. ./demo.q4_k_m.gguf)
  tokenizerDir: string;        // folder with tokenizer_config.json (eos token, chat_template for "base")
  template: TrainingTemplate;
  adapterFile?: string;        // a GGUF LoRA adapter applied on top (ADAPTER line)
  system?: string;             // default system message (SYSTEM line)
  parameters?: Record<string, string | number>;   // extra PARAMETER lines (temperature, num_ctx, …)
}

interface GoTemplate { template: string; stop: string[] }

const CHATML: GoTemplate = {
  template: "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
  stop: ["<|im_start|>", "<|im_end|>"],
};
const LLAMA3: GoTemplate = {
  template: "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}" +
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
  stop: ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
};
function zephyr(eos: string): GoTemplate {
  return {
    template: `{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}${eos}\n{{ end }}<|assistant|>\n`,
    stop: ["<|user|>", "<|system|>", "<|assistant|>", eos],
  };
}
const GEMMA: GoTemplate = {
  // Gemma has no system role: a system message is folded into the first user turn by its Jinja template; here it
  // is rendered as a user turn of its own.
  template: "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}user{{ end }}\n" +
    "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
  stop: ["<start_of_turn>", "<end_of_turn>"],
};
function alpaca(eos: string): GoTemplate {
  // The system message (if any) replaces the preamble; each user turn opens an instruction, each assistant turn
  // ends with EOS (src/data/templates.ts renderAlpaca).
  return {
    template: `{{- $preamble := ${goString(ALPACA_PREAMBLE_TEXT)} }}{{- range .Messages }}{{- if eq .Role "system" }}` +
      `{{- $preamble = .Content }}{{- end }}{{- end }}{{ $preamble }}{{- range .Messages }}{{- if eq .Role "user" }}\n\n` +
      `### Instruction:\n{{ .Content }}\n\n### Response:\n{{ else if eq .Role "assistant" }}{{ .Content }}${eos}{{- end }}{{- end }}`,
    stop: ["### Instruction:", eos],
  };
}
const TEXT: GoTemplate = { template: "{{ .Prompt }}", stop: [] };

function goString(s: string): string {
  return JSON.stringify(s);   // Go template string literals accept JSON's escapes
}

function readConfig(dir: string): any {
  const p = join(dir, "tokenizer_config.json");
  if (!existsSync(p)) return {};
  return JSON.parse(readFileSync(p, "utf8"));
}
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as any).content === "string") return (v as any).content;
  return undefined;
}

// The Go template for a Jinja chat_template of a known family, or undefined.
export function goTemplateForJinja(jinja: string, eos: string): GoTemplate | undefined {
  if (jinja.includes("<|im_start|>")) return CHATML;
  if (jinja.includes("<|start_header_id|>")) return LLAMA3;
  if (jinja.includes("<start_of_turn>")) return GEMMA;
  if (jinja.includes("<|user|>") && jinja.includes("<|assistant|>")) return zephyr(eos);
  return undefined;
}

export function ollamaModelfile(opts: ModelfileOptions): string {
  const cfg = readConfig(opts.tokenizerDir);
  const eos = tokenText(cfg.eos_token) ?? "";
  let t: GoTemplate;
  switch (opts.template) {
    case "chatml": t = CHATML; break;
    case "llama3": t = LLAMA3; break;
    case "alpaca":
      if (!eos) throw new Error(`${join(opts.tokenizerDir, "tokenizer_config.json")}: field "eos_token": the alpaca template needs it`);
      t = alpaca(eos);
      break;
    case "text": t = { ...TEXT, stop: eos ? [eos] : [] }; break;
    case "base": {
      const own = typeof cfg.chat_template === "string" ? cfg.chat_template
        : Array.isArray(cfg.chat_template) ? (cfg.chat_template.find((x: any) => x?.name === "default") ?? cfg.chat_template[0])?.template : undefined;
      if (!own) throw new Error(`${join(opts.tokenizerDir, "tokenizer_config.json")}: field "chat_template": template "base" needs it`);
      const mapped = goTemplateForJinja(own, eos);
      if (!mapped) {
        throw new Error(`${join(opts.tokenizerDir, "tokenizer_config.json")}: field "chat_template": no Ollama equivalent is known for this ` +
          `chat template (known: ChatML, Llama 3, Zephyr, Gemma); use template chatml, llama3 or alpaca, or turn export.ollama off`);
      }
      t = mapped;
      break;
    }
    default:
      throw new Error(`unknown template ${JSON.stringify(opts.template)}`);
  }
  const lines: string[] = [];
  lines.push(`# Modelfile written by nx-finetune (template: ${opts.template}). Create the model with: ollama create <name> -f Modelfile`);
  lines.push(`FROM ${opts.ggufFile}`);
  if (opts.adapterFile) lines.push(`ADAPTER ${opts.adapterFile}`);
  if (t.template.includes('"""')) throw new Error("the chat template contains \"\"\", which a Modelfile cannot quote");
  lines.push(`TEMPLATE """${t.template}"""`);
  if (opts.system !== undefined) {
    if (opts.system.includes('"""')) throw new Error("the system message contains \"\"\", which a Modelfile cannot quote");
    lines.push(`SYSTEM """${opts.system}"""`);
  }
  const stops = [...new Set(t.stop.filter((s) => s.length > 0))];
  for (const s of stops) lines.push(`PARAMETER stop ${JSON.stringify(s)}`);
  for (const [k, v] of Object.entries(opts.parameters ?? {})) lines.push(`PARAMETER ${k} ${v}`);
  return lines.join("\n") + "\n";
}
