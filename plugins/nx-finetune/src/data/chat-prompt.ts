// chat-prompt.ts — builds the prompt for generation: a conversation (ending with a user message) rendered with the recipe's
// template up to the next assistant turn, tokenized exactly as the shards stage tokenizes training rows.
import { normalizeTemplateSpec } from "../stages/shards";
import { checkTemplate, renderRow, stopIds, tokenizeRow } from "./templates";
import { tokenizerFor } from "./tokenizer";
import type { Message, TemplateSpec } from "./types";

export interface RenderedChat {
  text: string; // the prompt text (without the BOS token the ids may start with)
  ids: number[]; // prompt ids (BOS included when the tokenizer adds one)
  stopIds: number[]; // generation stops on any of these
}

// `template` is recipe.template (max_seq_len is not needed here) or just a template name.
export function renderChat(messages: Message[], template: TemplateSpec | TemplateSpec["name"], tokenizerDir: string): RenderedChat {
  const spec = normalizeTemplateSpec(typeof template === "string" ? { name: template, max_seq_len: 2 } : { ...template, max_seq_len: template.max_seq_len ?? 2 });
  const tok = tokenizerFor(tokenizerDir);
  checkTemplate(spec, tok);
  if (messages.length === 0 || messages[messages.length - 1].role === "assistant") {
    throw new Error(`renderChat: the conversation must end with a user (or system) message`);
  }
  const row = spec.name === "text" ? { text: messages.map((m) => m.content).join("\n") } : { messages };
  let rendered = renderRow(row, spec, tok, true);
  if (spec.name === "text") {
    // Plain-text models continue the text: no EOS after the prompt.
    rendered = { ...rendered, segments: [{ text: (row as { text: string }).text, train: false }] };
  }
  const { ids } = tokenizeRow(rendered, tok, false);
  return { text: rendered.segments.map((s) => s.text).join(""), ids, stopIds: stopIds(spec, tok) };
}
