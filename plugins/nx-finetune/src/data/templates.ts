// templates.ts — renders a normalized row into text segments (prompt parts and response parts) for each prompt
// template, and tokenizes the segments so the loss mask boundaries fall exactly between tokens.
//
// Templates (what one conversation becomes; [..] marks the trained response segments with train_on: responses):
//   alpaca  <preamble>\n\n### Instruction:\n{user}\n\n[### Input:\n{input}\n\n]### Response:\n[{assistant}<eos>]
//           preamble = the system message, else the standard Stanford Alpaca sentence (with / without input);
//           later turns continue with "\n\n### Instruction:\n…".
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n per message; assistant: <|im_start|>assistant\n[{content}<|im_end|>]\n
//   llama3  <|begin_of_text|> then <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|> per message;
//           assistant: header + [{content}<|eot_id|>]
//   base    the tokenizer_config's chat_template (jinja); a response is the assistant content as rendered plus the
//           end-of-turn tokens that directly follow it (EOS, <|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>, …)
//   text    [{text}<eos>] (text rows only)
// Every template ends a response with its end-of-turn token (alpaca/text: the tokenizer's EOS), which is also what
// generation stops on. BOS: added when the tokenizer adds one (add_bos_token / post-processor), except for llama3,
// which writes <|begin_of_text|> itself, and base templates whose text already starts with the BOS token.
import { Template } from "@huggingface/jinja";
import type { LoadedTokenizer } from "./tokenizer";
import type { Message, NormalizedRow, TemplateSpec } from "./types";

export interface Segment {
  text: string;
  train: boolean; // response text: predicted (loss) when train_on is "responses"
}

export interface RenderedRow {
  segments: Segment[];
  addBos: boolean;
}

export const ALPACA_PREAMBLE =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
export const ALPACA_PREAMBLE_WITH_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.";

export const TEMPLATE_NAMES = ["alpaca", "chatml", "llama3", "base", "text"] as const;

// The special tokens a template writes itself; the tokenizer must have them as single tokens.
const TEMPLATE_SPECIALS: Record<string, string[]> = {
  chatml: ["<|im_start|>", "<|im_end|>"],
  llama3: ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
};

// The special tokens `template` writes itself (none for alpaca, base, text).
export function templateSpecials(template: string): string[] {
  return TEMPLATE_SPECIALS[template] ?? [];
}

// Tokens that end a turn in common chat templates (base template responses; stop ids).
const END_OF_TURN = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>"];

export function checkTemplate(spec: TemplateSpec, tok: LoadedTokenizer): void {
  if (!TEMPLATE_NAMES.includes(spec.name as any)) {
    throw new Error(`template: field "name": unknown template ${JSON.stringify(spec.name)} (expected ${TEMPLATE_NAMES.join(", ")})`);
  }
  const missing = (TEMPLATE_SPECIALS[spec.name] ?? []).filter((s) => tok.tokenId(s) === undefined);
  if (missing.length > 0) {
    // Rendered as plain text these markers would be split into ordinary pieces, and the model would never learn a
    // single end-of-turn token to stop at: refuse, and say what works with this base.
    const ways = [`template.add_special_tokens: true (adds ${missing.join(" and ")} to the tokenizer and trains their embedding and output rows)`,
                  `template "alpaca" (plain-text markers, ends each response with the tokenizer's EOS)`];
    if (tok.chatTemplate !== null) ways.push(`template "base" (the base's own chat_template)`);
    for (const [name, specials] of Object.entries(TEMPLATE_SPECIALS)) {
      if (name !== spec.name && specials.length > 0 && specials.every((x) => tok.tokenId(x) !== undefined)) ways.push(`template "${name}"`);
    }
    ways.push(`a base whose tokenizer has ${missing.join(" and ")} (e.g. an instruct model trained with this template)`);
    throw new Error(`template "${spec.name}" needs the special token${missing.length > 1 ? "s" : ""} ${missing.join(", ")}, which the tokenizer in ${tok.dir} ` +
      `does not have (template.name). With this base use ${ways.join("; or ")}`);
  }
  if ((spec.name === "alpaca" || spec.name === "text") && tok.eosToken === null) {
    throw new Error(`template "${spec.name}" appends EOS after each response, but ${tok.dir}/tokenizer_config.json has no eos_token`);
  }
  if (spec.name === "base" && tok.chatTemplate === null) {
    throw new Error(`template "base" uses the tokenizer's chat_template, but ${tok.dir}/tokenizer_config.json has none`);
  }
}

// Ids that end a response for this template (for generate's stop_ids): the template's end-of-turn token and EOS.
export function stopIds(spec: TemplateSpec, tok: LoadedTokenizer): number[] {
  const ids: number[] = [];
  const add = (s: string) => { const id = tok.tokenId(s); if (id !== undefined && !ids.includes(id)) ids.push(id); };
  if (spec.name === "chatml") add("<|im_end|>");
  if (spec.name === "llama3") add("<|eot_id|>");
  if (spec.name === "base") for (const s of END_OF_TURN) if (tok.chatTemplate?.includes(s)) add(s);
  if (tok.eosId !== null && !ids.includes(tok.eosId)) ids.push(tok.eosId);
  return ids;
}

const userText = (m: Message) => (m.input ? `${m.content}\n\n${m.input}` : m.content);

// Conversation with a default system message (when the spec has one and the row has none).
function withSystem(messages: Message[], spec: TemplateSpec): Message[] {
  if (spec.system !== undefined && !messages.some((m) => m.role === "system")) {
    return [{ role: "system", content: spec.system }, ...messages];
  }
  return messages;
}

// Renders one row. With `generationPrompt`, the row is a conversation that ends before the next assistant turn and
// the result ends with that turn's header (for generate).
export function renderRow(row: NormalizedRow, spec: TemplateSpec, tok: LoadedTokenizer, generationPrompt = false): RenderedRow {
  if ("text" in row) {
    if (spec.name !== "text") throw new Error(`template "${spec.name}" needs conversation rows, but the dataset holds plain text rows (use template "text")`);
    return { segments: [{ text: row.text + tok.eosToken, train: true }], addBos: tok.addBos };
  }
  if (spec.name === "text") throw new Error(`template "text" needs plain text rows, but the dataset holds conversations`);
  const messages = withSystem(row.messages, spec);
  switch (spec.name) {
    case "alpaca": return renderAlpaca(messages, tok, generationPrompt);
    case "chatml": return renderChatml(messages, tok, generationPrompt);
    case "llama3": return renderLlama3(messages, generationPrompt);
    case "base": return renderBase(messages, tok, generationPrompt);
    default: throw new Error(`template: field "name": unknown template ${JSON.stringify((spec as any).name)}`);
  }
}

function renderAlpaca(messages: Message[], tok: LoadedTokenizer, generationPrompt: boolean): RenderedRow {
  const segs: Segment[] = [];
  const system = messages.find((m) => m.role === "system");
  const firstUser = messages.find((m) => m.role === "user");
  let prompt = system ? system.content : firstUser?.input ? ALPACA_PREAMBLE_WITH_INPUT : ALPACA_PREAMBLE;
  for (const m of messages) {
    if (m.role === "system") continue;
    if (m.role === "user") {
      prompt += `\n\n### Instruction:\n${m.content}\n\n`;
      if (m.input) prompt += `### Input:\n${m.input}\n\n`;
      prompt += "### Response:\n";
    } else {
      segs.push({ text: prompt, train: false });
      segs.push({ text: m.content + tok.eosToken, train: true });
      prompt = "";
    }
  }
  if (generationPrompt ? prompt.length > 0 : prompt.length > 0 && segs.length === 0) segs.push({ text: prompt, train: false });
  return { segments: segs, addBos: tok.addBos };
}

function renderChatml(messages: Message[], tok: LoadedTokenizer, generationPrompt: boolean): RenderedRow {
  const segs: Segment[] = [];
  let prompt = "";
  for (const m of messages) {
    if (m.role === "assistant") {
      segs.push({ text: prompt + "<|im_start|>assistant\n", train: false });
      segs.push({ text: m.content + "<|im_end|>", train: true });
      prompt = "\n";
    } else {
      prompt += `<|im_start|>${m.role}\n${m.role === "user" ? userText(m) : m.content}<|im_end|>\n`;
    }
  }
  if (generationPrompt) prompt += "<|im_start|>assistant\n";
  if (prompt.length > 0) segs.push({ text: prompt, train: false });
  return { segments: segs, addBos: tok.addBos };
}

function renderLlama3(messages: Message[], generationPrompt: boolean): RenderedRow {
  const segs: Segment[] = [];
  let prompt = "<|begin_of_text|>";
  const header = (role: string) => `<|start_header_id|>${role}<|end_header_id|>\n\n`;
  for (const m of messages) {
    if (m.role === "assistant") {
      segs.push({ text: prompt + header("assistant"), train: false });
      segs.push({ text: m.content + "<|eot_id|>", train: true });
      prompt = "";
    } else {
      prompt += header(m.role) + (m.role === "user" ? userText(m) : m.content) + "<|eot_id|>";
    }
  }
  if (generationPrompt) prompt += header("assistant");
  if (prompt.length > 0) segs.push({ text: prompt, train: false });
  return { segments: segs, addBos: false };
}

const compiled = new Map<string, Template>();

function renderJinja(tok: LoadedTokenizer, messages: Message[], addGenerationPrompt: boolean): string {
  const source = tok.chatTemplate!;
  let t = compiled.get(source);
  if (!t) {
    try { t = new Template(source); } catch (err) { throw new Error(`${tok.dir}/tokenizer_config.json: field "chat_template": ${(err as Error).message}`); }
    compiled.set(source, t);
  }
  const plain = messages.map((m) => ({ role: m.role, content: m.role === "user" ? userText(m) : m.content }));
  try {
    return t.render({
      messages: plain,
      add_generation_prompt: addGenerationPrompt,
      bos_token: tok.bosToken ?? "",
      eos_token: tok.eosToken ?? "",
      unk_token: tok.config.unk_token ?? "",
      pad_token: tok.config.pad_token ?? "",
    });
  } catch (err) {
    throw new Error(`${tok.dir}/tokenizer_config.json: field "chat_template": rendering failed: ${(err as Error).message}`);
  }
}

function renderBase(messages: Message[], tok: LoadedTokenizer, generationPrompt: boolean): RenderedRow {
  const full = renderJinja(tok, messages, generationPrompt);
  // End-of-turn tokens that belong to a response when they directly follow its content.
  const enders = [...new Set([tok.eosToken, ...END_OF_TURN])].filter((s): s is string => !!s && tok.tokenId(s) !== undefined);
  const segs: Segment[] = [];
  let cursor = 0;
  messages.forEach((m, i) => {
    if (m.role !== "assistant") return;
    const before = renderJinja(tok, messages.slice(0, i), true);
    if (!full.startsWith(before) || before.length < cursor) {
      throw new Error(`${tok.dir}/tokenizer_config.json: field "chat_template": the rendering of the conversation up to ` +
        `assistant message ${i} (with add_generation_prompt) is not a prefix of the whole conversation's rendering`);
    }
    const content = m.content.trim();
    const at = full.indexOf(content, before.length);
    if (at < 0 || full.slice(before.length, at).trim() !== "") {
      throw new Error(`${tok.dir}/tokenizer_config.json: field "chat_template": cannot find assistant message ${i}'s content right after the generation prompt`);
    }
    let end = at + content.length;
    for (let more = true; more;) {
      more = false;
      for (const a of enders) if (full.startsWith(a, end)) { end += a.length; more = true; break; }
    }
    segs.push({ text: full.slice(cursor, at), train: false });
    segs.push({ text: full.slice(at, end), train: true });
    cursor = end;
  });
  if (cursor < full.length) segs.push({ text: full.slice(cursor), train: false });
  const startsWithBos = tok.bosToken !== null && full.startsWith(tok.bosToken);
  return { segments: segs.filter((s) => s.text.length > 0), addBos: tok.addBos && !startsWithBos };
}

export interface TokenizedRow {
  ids: number[]; // [L] input ids, BOS included
  train: Uint8Array; // [L] 1 where the token is a target of the loss
}

// Tokenizes rendered segments: each segment on its own (so the mask boundary is exact); a segment that continues text
// (the previous segment did not end with a special token) is encoded without an SPM prefix space.
export function tokenizeRow(r: RenderedRow, tok: LoadedTokenizer, trainOnAll: boolean): TokenizedRow {
  const ids: number[] = [];
  const train: number[] = [];
  if (r.addBos) { ids.push(tok.bosId!); train.push(0); } // BOS is never predicted
  let continues = false;
  for (const s of r.segments) {
    const segIds = continues ? tok.encodeContinuation(s.text) : tok.encode(s.text);
    for (const id of segIds) { ids.push(id); train.push(trainOnAll || s.train ? 1 : 0); }
    if (s.text.length > 0) continues = !tok.endsWithAddedToken(s.text);
  }
  return { ids, train: Uint8Array.from(train) };
}
