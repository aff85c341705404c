// tokenizer-metadata.ts — the `tokenizer` object of an export-gguf job (docs/engine-protocol.md), built from a
// Hugging Face tokenizer.json + tokenizer_config.json the way llama.cpp's convert_hf_to_gguf.py builds its
// tokenizer.ggml.* keys (../shared/notes/native.md §2.4). The engine never parses tokenizer files.
//
// Two families are supported; anything else is a clear error:
//   SentencePiece-style BPE (byte_fallback + "▁" normalizer or Metaspace pre-tokenizer: Llama 2, Mistral v0.x,
//     TinyLlama, Gemma) → model "llama", pre "default". llama.cpp's SPM tokenizer merges the adjacent pair whose
//     result has the highest score, so scores are −(rank of the first merge that produces the piece): the same
//     order the Hugging Face merges apply in (SentencePiece's own scores have that order too). Pieces no merge
//     produces come after, in id order; special, byte and unknown tokens score 0.
//   Byte-level BPE (ByteLevel pre-tokenizer: Llama 3, Qwen2) → model "gpt2" with merges; pre from the split regex
//     (the converter hashes the tokenization of a test string instead; the regex is what that hash identifies):
//     Llama-3 regex → "llama-bpe", Qwen2 regex → "qwen2".
// Token types: 1 normal, 2 unknown, 3 control (special added tokens), 4 user-defined (other added tokens),
// 5 unused ([PAD{i}] fillers up to the model's vocab_size), 6 byte (<0xXX>).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface GgufTokenizer {
  model: "llama" | "gpt2";
  pre: string;
  tokens: string[];
  scores?: number[];
  token_types: number[];
  merges?: string[];
  bos_id?: number;
  eos_id?: number;
  eot_id?: number;
  unk_id?: number;
  pad_id?: number;
  add_bos?: boolean;
  add_eos?: boolean;
  add_space_prefix?: boolean;
  chat_template?: string;
}

export type TrainingTemplate = "alpaca" | "chatml" | "llama3" | "base" | "text";

export interface TokenizerMetadataOptions {
  // Pad the vocabulary with [PAD{i}] up to the model's embedding rows (config.json vocab_size).
  vocabSize?: number;
  // The recipe's prompt template: its Jinja equivalent becomes tokenizer.chat_template (base/text keep the
  // tokenizer's own), and its end-of-turn token becomes eot_id.
  template?: TrainingTemplate;
  // Default system message of the recipe, baked into the chat template's default.
  system?: string;
  // Names the files in error messages.
  source?: string;
}

const TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4, TOKEN_UNUSED = 5, TOKEN_BYTE = 6;

// The Split regexes of the byte-level BPE tokenizers we know, and llama.cpp's pre-tokenizer name for each.
const KNOWN_PRE: { name: string; regex: string }[] = [
  {
    name: "llama-bpe",
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  },
  {
    name: "qwen2",
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  },
];

// Chat templates (Jinja, as tokenizer.chat_template) equivalent to the training templates of src/data/templates.ts.
export const ALPACA_PREAMBLE_TEXT =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
function jinjaString(s: string): string {
  return "'" + s.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n") + "'";
}
// `addBos`: the tokenizer adds BOS, so training saw BOS first (renderRow's addBos). The template then starts with
// {{ bos_token }} like Hugging Face templates do: node-llama-cpp and transformers' apply_chat_template take BOS from
// the template, and llama.cpp strips a leading BOS from the rendered text before adding its own.
// (llama3 writes <|begin_of_text|> = bos_token itself, as training does.)
export function trainingChatTemplate(template: TrainingTemplate, system?: string, addBos = false): string | undefined {
  const bos = addBos ? "{{- bos_token }}" : "";
  const sys = system !== undefined
    ? `{%- if messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', 'content': ${jinjaString(system)}}] + messages %}{%- endif %}`
    : "";
  switch (template) {
    case "chatml":
      return sys + bos + "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";
    case "llama3":
      return sys + "{{- bos_token }}{%- for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + " +
        "message['content'] + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";
    case "alpaca":
      return sys + bos + `{%- set preamble = ${jinjaString(ALPACA_PREAMBLE_TEXT)} %}{%- if messages[0]['role'] == 'system' %}{%- set preamble = messages[0]['content'] %}{%- endif %}` +
        "{{ preamble }}{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}" +
        "{%- elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{%- endif %}{%- endfor %}";
    default:
      return undefined;
  }
}

function readJson(path: string): any {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new Error(`${path}: cannot read JSON: ${(e as Error).message}`);
  }
}

// tokenizer_config.json spells special tokens as a string or as {content: …} (AddedToken).
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as any).content === "string") return (v as any).content;
  return undefined;
}

function containsType(node: any, type: string): boolean {
  if (!node || typeof node !== "object") return false;
  if (node.type === type) return true;
  for (const k of ["normalizers", "pretokenizers", "processors", "decoders"]) {
    if (Array.isArray(node[k]) && node[k].some((n: any) => containsType(n, type))) return true;
  }
  return false;
}
function findAll(node: any, type: string, out: any[] = []): any[] {
  if (!node || typeof node !== "object") return out;
  if (node.type === type) out.push(node);
  for (const k of ["normalizers", "pretokenizers", "processors", "decoders"]) {
    if (Array.isArray(node[k])) for (const n of node[k]) findAll(n, type, out);
  }
  return out;
}

export function tokenizerMetadataFrom(tokenizerJson: any, tokenizerConfig: any, opts: TokenizerMetadataOptions = {}): GgufTokenizer {
  const src = opts.source ?? "tokenizer.json";
  const model = tokenizerJson?.model;
  if (!model || typeof model !== "object") throw new Error(`${src}: field "model": missing`);
  if (model.type !== "BPE") {
    throw new Error(`${src}: field "model.type": "${model.type}" tokenizers cannot be exported to GGUF (supported: BPE, SentencePiece-style or byte-level)`);
  }
  const vocab: Record<string, number> = model.vocab ?? {};
  const byId = new Map<number, string>();
  for (const [text, id] of Object.entries(vocab)) byId.set(id, text);
  const added = new Map<number, { content: string; special: boolean }>();
  for (const t of tokenizerJson.added_tokens ?? []) {
    added.set(t.id, { content: t.content, special: !!t.special });
    byId.set(t.id, t.content);
  }
  let maxId = -1;
  for (const id of byId.keys()) maxId = Math.max(maxId, id);
  const n = Math.max(maxId + 1, opts.vocabSize ?? 0);
  if (opts.vocabSize !== undefined && maxId + 1 > opts.vocabSize) {
    throw new Error(`${src}: the tokenizer has ${maxId + 1} tokens but the model's vocab_size is ${opts.vocabSize}`);
  }
  const idOf = (text: string): number | undefined => {
    if (vocab[text] !== undefined) return vocab[text];
    for (const [id, t] of added) if (t.content === text) return id;
    return undefined;
  };
  const merges: string[] = (model.merges ?? []).map((m: string | string[]) => (Array.isArray(m) ? m.join(" ") : m));

  const byteLevel = containsType(tokenizerJson.pre_tokenizer, "ByteLevel");
  const metaspace = findAll(tokenizerJson.pre_tokenizer, "Metaspace")[0];
  const replaces = findAll(tokenizerJson.normalizer, "Replace");
  const spaceToMeta = replaces.some((r: any) => r.pattern?.String === " " && r.content === "▁");
  const prepend = findAll(tokenizerJson.normalizer, "Prepend").some((p: any) => p.prepend === "▁");

  const tokens: string[] = [];
  const types: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = byId.get(i);
    if (t === undefined) { tokens.push(`[PAD${i}]`); types.push(TOKEN_UNUSED); continue; }
    tokens.push(t);
    const a = added.get(i);
    if (a) types.push(a.special ? TOKEN_CONTROL : TOKEN_USER_DEFINED);
    else types.push(TOKEN_NORMAL);
  }

  const out: GgufTokenizer = { model: "llama", pre: "default", tokens, token_types: types };
  if (byteLevel) {
    out.model = "gpt2";
    out.merges = merges;
    const split = findAll(tokenizerJson.pre_tokenizer, "Split")[0];
    const regex: string | undefined = split?.pattern?.Regex;
    const known = KNOWN_PRE.find((k) => k.regex === regex);
    if (!known) {
      throw new Error(`${src}: field "pre_tokenizer": unknown byte-level pre-tokenizer ${regex ? `regex ${JSON.stringify(regex)}` : "(no Split regex)"}; ` +
        `supported: the Llama-3 regex (llama-bpe) and the Qwen2 regex (qwen2)`);
    }
    out.pre = known.name;
  } else if (model.byte_fallback && (spaceToMeta || metaspace)) {
    out.model = "llama";
    // Scores: −rank of the first merge producing each piece; other normal pieces after all merges, in id order.
    const rank = new Map<string, number>();
    merges.forEach((m, r) => {
      const sp = m.indexOf(" ");
      const piece = m.slice(0, sp) + m.slice(sp + 1);
      if (!rank.has(piece)) rank.set(piece, r);
    });
    const unk = model.unk_token !== undefined && model.unk_token !== null ? idOf(model.unk_token) : undefined;
    let next = merges.length;
    out.scores = tokens.map((t, i) => {
      if (types[i] !== TOKEN_NORMAL) return 0;
      if (i === unk) { types[i] = TOKEN_UNKNOWN; return 0; }
      if (/^<0x[0-9A-Fa-f]{2}>$/.test(t)) { types[i] = TOKEN_BYTE; return 0; }
      const r = rank.get(t);
      return r !== undefined ? -r : -(next++);
    });
    if (unk !== undefined) types[unk] = TOKEN_UNKNOWN;
    if (metaspace) {
      out.add_space_prefix = metaspace.prepend_scheme !== undefined ? metaspace.prepend_scheme !== "never" : metaspace.add_prefix_space !== false;
    } else {
      out.add_space_prefix = prepend;
    }
    if (typeof tokenizerConfig?.add_prefix_space === "boolean") out.add_space_prefix = tokenizerConfig.add_prefix_space;
  } else {
    throw new Error(`${src}: unsupported BPE tokenizer: neither byte-level (ByteLevel pre-tokenizer) nor SentencePiece-style ` +
      `(byte_fallback with a "▁" normalizer or Metaspace pre-tokenizer)`);
  }

  // Special tokens.
  const cfgSrc = src.replace(/tokenizer\.json$/, "tokenizer_config.json");
  const special = (key: string): number | undefined => {
    const text = tokenText(tokenizerConfig?.[key]);
    if (text === undefined) return undefined;
    const id = idOf(text);
    if (id === undefined) throw new Error(`${cfgSrc}: field "${key}": token ${JSON.stringify(text)} is not in the vocabulary`);
    return id;
  };
  const bos = special("bos_token"), eos = special("eos_token"), unkId = special("unk_token"), pad = special("pad_token");
  if (bos !== undefined) out.bos_id = bos;
  if (eos !== undefined) out.eos_id = eos;
  if (unkId !== undefined) out.unk_id = unkId;
  else if (out.model === "llama" && model.unk_token) out.unk_id = idOf(model.unk_token);
  if (pad !== undefined) out.pad_id = pad;

  // add_bos/add_eos: tokenizer_config flags, else what the post-processor's template adds, else false.
  if (typeof tokenizerConfig?.add_bos_token === "boolean") out.add_bos = tokenizerConfig.add_bos_token;
  if (typeof tokenizerConfig?.add_eos_token === "boolean") out.add_eos = tokenizerConfig.add_eos_token;
  const tp = findAll(tokenizerJson.post_processor, "TemplateProcessing")[0];
  if (tp && Array.isArray(tp.single)) {
    if (out.add_bos === undefined) out.add_bos = !!tp.single[0]?.SpecialToken;
    if (out.add_eos === undefined) out.add_eos = !!tp.single[tp.single.length - 1]?.SpecialToken;
  }
  // Neither says: no BOS/EOS, written explicitly — that is what training did (src/data/tokenizer.ts addBos), and
  // llama.cpp would otherwise apply its per-pre-tokenizer default (true for llama-bpe).
  out.add_bos ??= false;
  out.add_eos ??= false;

  // Chat template: the training template's equivalent, else the tokenizer's own.
  const own = tokenizerConfig?.chat_template;
  let ownText: string | undefined;
  if (typeof own === "string") ownText = own;
  else if (Array.isArray(own)) ownText = (own.find((t: any) => t?.name === "default") ?? own[0])?.template;
  const trained = opts.template ? trainingChatTemplate(opts.template, opts.system, out.add_bos === true) : undefined;
  const chat = trained ?? ownText;
  if (chat !== undefined) out.chat_template = chat;

  // End of turn: the training template's turn terminator when it is not EOS itself.
  const eotText = opts.template === "chatml" ? "<|im_end|>" : opts.template === "llama3" ? "<|eot_id|>" : undefined;
  const eot = eotText !== undefined ? idOf(eotText) : undefined;
  if (eot !== undefined && eot !== out.eos_id) out.eot_id = eot;
  return out;
}

// The export-gguf `tokenizer` object for an HF folder holding tokenizer.json + tokenizer_config.json (and, when
// present, config.json, whose vocab_size pads the vocabulary).
export function ggufTokenizerMetadata(tokenizerDir: string, opts: Omit<TokenizerMetadataOptions, "source"> = {}): GgufTokenizer {
  const tj = join(tokenizerDir, "tokenizer.json");
  if (!existsSync(tj)) throw new Error(`${tj}: missing (a GGUF export needs the Hugging Face tokenizer.json)`);
  const tc = join(tokenizerDir, "tokenizer_config.json");
  const cfg = existsSync(tc) ? readJson(tc) : {};
  let vocabSize = opts.vocabSize;
  const mc = join(tokenizerDir, "config.json");
  if (vocabSize === undefined && existsSync(mc)) {
    const v = readJson(mc).vocab_size;
    if (typeof v === "number") vocabSize = v;
  }
  return tokenizerMetadataFrom(readJson(tj), cfg, { ...opts, vocabSize, source: tj });
}
