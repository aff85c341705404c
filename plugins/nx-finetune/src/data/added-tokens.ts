// added-tokens.ts — template.add_special_tokens: a base whose tokenizer lacks the special tokens a template writes
// (ChatML's <|im_start|> / <|im_end|> on a base model, say) gets them appended after its vocabulary, in a tokenizer
// folder of its own that every later stage reads instead of the base's (the shards stage writes it next to the
// shards). The engine then grows embed_tokens / lm_head to the new vocabulary and trains exactly those rows
// (PEFT's trainable_token_indices, docs/engine-protocol.md "train"); merge writes them into the merged model, and the
// GGUF tokenizer metadata, read from the merged folder, lists them as control tokens.
//
// What the folder holds, as transformers' tokenizer.add_special_tokens + save_pretrained would write it:
//   tokenizer.json         added_tokens gains {id, content, special: true, normalized: false, …} per new token
//   tokenizer_config.json  added_tokens_decoder gains the same entries by id; the template's chat_template when
//                          the base has none or it uses other markers (chatml, llama3), so the merged model chats
//                          the way it was trained
//   other tokenizer files  (special_tokens_map.json, tokenizer.model) copied as they are
import { copyFileSync, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { trainingChatTemplate } from "../gguf/tokenizer-metadata";
import { writeFileAtomic } from "./fsutil";
import { templateSpecials } from "./templates";
import type { LoadedTokenizer } from "./tokenizer";

export interface AddedToken { id: number; content: string }

// Tokenizer files written into the folder; the first two are rewritten, the rest copied when the base has them.
export const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"];

// The special tokens `template` writes that `tok` does not have, in the template's order.
export function missingSpecialTokens(template: string, tok: LoadedTokenizer): string[] {
  return templateSpecials(template).filter((s) => tok.tokenId(s) === undefined);
}

// Writes the base tokenizer plus `tokens` (ids from tok.vocabSize up) into outDir; returns the new tokens.
export function writeTokenizerWithAddedTokens(tok: LoadedTokenizer, tokens: string[], outDir: string,
                                              template: { name: string; system?: string }): AddedToken[] {
  const added = tokens.map((content, i) => ({ id: tok.vocabSize + i, content }));
  const entry = (t: AddedToken) => ({ content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const json = { ...tok.json, added_tokens: [...(tok.json.added_tokens ?? []), ...added.map((t) => ({ id: t.id, ...entry(t) }))] };
  const config: Record<string, any> = { ...tok.config };
  config.added_tokens_decoder = { ...(config.added_tokens_decoder ?? {}) };
  for (const t of added) config.added_tokens_decoder[String(t.id)] = entry(t);
  const chatTemplate = trainingChatTemplate(template.name as any, template.system, tok.addBos);
  if (chatTemplate !== undefined) config.chat_template = chatTemplate;
  writeFileAtomic(join(outDir, "tokenizer.json"), JSON.stringify(json, null, 2) + "\n");
  writeFileAtomic(join(outDir, "tokenizer_config.json"), JSON.stringify(config, null, 2) + "\n");
  for (const f of TOKENIZER_FILES.slice(2)) if (existsSync(join(tok.dir, f))) copyFileSync(join(tok.dir, f), join(outDir, f));
  return added;
}

// Copies the tokenizer files of `fromDir` over those of `toDir` (the merged model gets the grown tokenizer).
export function copyTokenizerFiles(fromDir: string, toDir: string): void {
  for (const f of TOKENIZER_FILES) if (existsSync(join(fromDir, f))) writeFileAtomic(join(toDir, f), readFileSync(join(fromDir, f)));
}
