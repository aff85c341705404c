// tokenizer.ts — loads a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json) with
// @huggingface/tokenizers and adds what the pipeline needs on top: BOS/EOS/PAD ids per the config, special-token
// lookup, "continuation" encoding (text that continues earlier text of the same document, so an SPM tokenizer must
// not prepend another "▁"), plain and streaming (incremental, UTF-8-safe) decoding.
import { readFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { sha256Hex } from "./fsutil";

export interface LoadedTokenizer {
  dir: string;
  // sha256 over tokenizer.json and tokenizer_config.json bytes: identifies the tokenizer for caches and manifests.
  sha256: string;
  vocabSize: number; // max id + 1 over the model vocab and the added tokens
  addBos: boolean; // whether a document starts with BOS (tokenizer_config add_bos_token, else the post-processor)
  bosId: number | null;
  eosId: number | null;
  padId: number; // pad_token id, else 0 (padding positions never carry loss)
  unkId: number | null;
  bosToken: string | null;
  eosToken: string | null;
  chatTemplate: string | null;
  config: Record<string, any>;
  json: Record<string, any>;
  // Encodes text that starts a document or follows a special token (SPM tokenizers prepend "▁"). Special tokens
  // written in the text (e.g. "<|im_end|>") map to their ids. Never adds BOS/EOS.
  encode(text: string): number[];
  // Encodes text that directly continues earlier text of the same document (no "▁" prepended to its first piece).
  encodeContinuation(text: string): number[];
  tokenId(token: string): number | undefined;
  // Whether `text` ends with an added token (e.g. "<|im_end|>"): the next text then starts a new section.
  endsWithAddedToken(text: string): boolean;
  decode(ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string;
  // The underlying @huggingface/tokenizers object.
  hf: Tokenizer;
}

const cache = new Map<string, LoadedTokenizer>();

// Reads a token name from a config value: "<s>" or { content: "<s>", ... } (older configs), or null.
function tokenName(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as any).content === "string") return (v as any).content;
  return null;
}

function readJson(path: string): any {
  if (!existsSync(path)) throw new Error(`${path}: file not found (a tokenizer folder needs tokenizer.json and tokenizer_config.json)`);
  const text = readFileSync(path, "utf8");
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: invalid JSON: ${(err as Error).message}`);
  }
}

// A copy of tokenizer.json whose normalizer / pre-tokenizer never add a prefix space: used for text that continues
// a previous segment, so that splitting a document into prompt/response segments gives the same pieces a single
// pass over the text would (no spurious "▁" at the start of a response).
function withoutPrefixSpace(json: any): { json: any; changed: boolean } {
  // Only the normalizer and pre-tokenizer change: copy those, share the (large) model.
  const clone = (x: unknown) => (x === undefined ? undefined : JSON.parse(JSON.stringify(x)));
  const copy = { ...json, normalizer: clone(json.normalizer), pre_tokenizer: clone(json.pre_tokenizer) };
  let changed = false;
  const fixNormalizer = (n: any): any => {
    if (!n) return n;
    if (n.type === "Prepend") { changed = true; return null; }
    if (n.type === "Sequence") {
      n.normalizers = n.normalizers.map(fixNormalizer).filter((x: any) => x !== null);
      return n;
    }
    return n;
  };
  const fixPre = (p: any): any => {
    if (!p) return p;
    if (p.type === "Metaspace") {
      if (p.prepend_scheme !== "never" || p.add_prefix_space) changed = true;
      p.prepend_scheme = "never";
      p.add_prefix_space = false;
    } else if (p.type === "ByteLevel" && p.add_prefix_space) {
      p.add_prefix_space = false;
      changed = true;
    } else if (p.type === "Sequence") {
      p.pretokenizers = p.pretokenizers.map(fixPre);
    }
    return p;
  };
  copy.normalizer = fixNormalizer(copy.normalizer);
  copy.pre_tokenizer = fixPre(copy.pre_tokenizer);
  return { json: copy, changed };
}

// SentencePiece-style BPE tokenizers (a "▁" normalizer and no pre-tokenizer) see each text section as ONE word, which
// @huggingface/tokenizers' BPE neither caches nor handles quickly on long lines. When no vocabulary piece has a "▁"
// right after another character, no merge can ever join the text before such a "▁" with the text after it, so
// splitting the normalized text there (a Split pre-tokenizer: "▁+[^▁]*|[^▁]+") gives exactly the same ids — and
// every word now hits the BPE word cache. The parity tests (llama.cpp vectors, Python goldens) run through this path.
function withWordSplit(json: any): any {
  const m = json.model;
  if (json.pre_tokenizer || !m || m.type !== "BPE" || !m.vocab || Array.isArray(m.vocab)) return json;
  const norm = JSON.stringify(json.normalizer ?? null);
  if (!norm.includes('"content":"▁"')) return json;
  for (const piece of Object.keys(m.vocab)) {
    for (let i = 1; i < piece.length; i++) if (piece[i] === "▁" && piece[i - 1] !== "▁") return json;
  }
  return { ...json, pre_tokenizer: { type: "Split", pattern: { Regex: "▁+[^▁]*|[^▁]+" }, behavior: "Isolated", invert: false } };
}

// Byte-level BPE tokenizers (GPT-2, Llama-3, Qwen) map every pre-token to its byte-level string with a TextEncoder
// and a per-byte table on every call, which is most of the JS encode time on natural text. That step is a pure
// function of the pre-token, so we memoize it on the tokenizer's ByteLevel pre-tokenizer object (found by duck typing
// on @huggingface/tokenizers' public pre_tokenizer; nothing happens when the shape differs). About 2x on TinyStories
// with Llama-3; the parity tests (llama.cpp vectors) run through it.
const BYTE_LEVEL_MEMO_MAX = 1 << 19;
function memoizeByteLevel(hf: Tokenizer): void {
  const pre: any = (hf as any).pre_tokenizer;
  const steps: any[] = pre && Array.isArray(pre.tokenizers) ? pre.tokenizers : pre ? [pre] : [];
  for (const step of steps) {
    if (!step || !step.byte_encoder || typeof step.pre_tokenize_text !== "function" || step.__nxftMemo) continue;
    const original = step.pre_tokenize_text.bind(step);
    const memo = new Map<string, string[]>();
    step.pre_tokenize_text = (text: string, options: unknown): string[] => {
      let out = memo.get(text);
      if (out === undefined) {
        out = original(text, options) as string[];
        if (memo.size >= BYTE_LEVEL_MEMO_MAX) memo.clear();
        memo.set(text, out);
      }
      return out;
    };
    step.__nxftMemo = true;
  }
}

// The BPE model's word cache is an LRU that re-inserts the key on every hit (two Map writes per word) and holds 10k
// words. A plain Map (cleared when full) with a larger capacity gives the same results — the cache only memoizes
// the pure function word → pieces — for less work per hit. Applied only when the model has that cache shape.
const BPE_CACHE_MAX = 1 << 18;
function fasterBpeCache(hf: Tokenizer): void {
  const model: any = (hf as any).model;
  const c = model?.cache;
  if (!c || typeof c.get !== "function" || typeof c.put !== "function" || !(c.cache instanceof Map) || model.__nxftCache) return;
  const map = new Map<string, unknown>();
  model.cache = {
    get: (key: string) => map.get(key),
    put: (key: string, value: unknown) => { if (map.size >= BPE_CACHE_MAX) map.clear(); map.set(key, value); },
    clear: () => map.clear(),
  };
  model.__nxftCache = true;
}

// Loads (and caches per folder + content) the tokenizer in `dir`.
export function tokenizerFor(dir: string): LoadedTokenizer {
  dir = resolve(dir);
  const jsonPath = join(dir, "tokenizer.json");
  const configPath = join(dir, "tokenizer_config.json");
  if (!existsSync(jsonPath)) throw new Error(`${jsonPath}: file not found (a tokenizer folder needs tokenizer.json and tokenizer_config.json)`);
  const jsonBytes = readFileSync(jsonPath);
  const configBytes = existsSync(configPath) ? readFileSync(configPath) : Buffer.from("{}");
  const sha256 = sha256Hex(Buffer.concat([Buffer.from(sha256Hex(jsonBytes)), Buffer.from(sha256Hex(configBytes))]));
  const key = `${dir}\0${sha256}`;
  const hit = cache.get(key);
  if (hit) return hit;

  let json: any, config: any;
  try { json = JSON.parse(jsonBytes.toString("utf8")); } catch (err) { throw new Error(`${jsonPath}: invalid JSON: ${(err as Error).message}`); }
  try { config = JSON.parse(configBytes.toString("utf8")); } catch (err) { throw new Error(`${configPath}: invalid JSON: ${(err as Error).message}`); }
  if (!json.model) throw new Error(`${jsonPath}: field "model": missing`);
  const hf = new Tokenizer(withWordSplit(json), config);
  const noPrefix = withoutPrefixSpace(json);
  const hfCont = noPrefix.changed ? new Tokenizer(withWordSplit(noPrefix.json), config) : hf;
  for (const t of hfCont !== hf ? [hf, hfCont] : [hf]) { memoizeByteLevel(t); fasterBpeCache(t); }

  // Added tokens (special or not) are matched verbatim in text before normalization; we need them to find where a
  // continuation's first text fragment ends.
  const addedContents: string[] = (json.added_tokens ?? []).map((t: any) => String(t.content)).filter((c: string) => c.length > 0);
  // Added tokens grouped by their last character (Llama-3 has 256 of them; most texts end with none).
  const addedByLastChar = new Map<string, string[]>();
  for (const c of addedContents) {
    const last = c[c.length - 1];
    addedByLastChar.set(last, [...(addedByLastChar.get(last) ?? []), c]);
  }

  let vocabSize = 0;
  const vocab = json.model.vocab;
  if (Array.isArray(vocab)) vocabSize = vocab.length; // Unigram: [[piece, score], ...]
  else if (vocab) for (const id of Object.values(vocab) as number[]) vocabSize = Math.max(vocabSize, id + 1);
  for (const t of json.added_tokens ?? []) vocabSize = Math.max(vocabSize, t.id + 1);

  const idOf = (name: string | null, field: string): number | null => {
    if (name === null) return null;
    const id = hf.token_to_id(name);
    if (id === undefined) throw new Error(`${configPath}: field "${field}": token ${JSON.stringify(name)} is not in the vocabulary`);
    return id;
  };
  const bosToken = tokenName(config.bos_token);
  const eosToken = tokenName(config.eos_token);
  const bosId = idOf(bosToken, "bos_token");
  const eosId = idOf(eosToken, "eos_token");
  const padId = idOf(tokenName(config.pad_token), "pad_token") ?? 0;
  const unkId = idOf(tokenName(config.unk_token), "unk_token") ?? (json.model.unk_token ? hf.token_to_id(json.model.unk_token) ?? null : null);

  // BOS: an explicit add_bos_token in the config wins (as in transformers' Llama tokenizers); otherwise whatever the
  // post-processor adds in front of a single sequence.
  let addBos: boolean;
  let bosFinal = bosId;
  if (typeof config.add_bos_token === "boolean") {
    addBos = config.add_bos_token;
    if (addBos && bosId === null) throw new Error(`${configPath}: field "add_bos_token": true but there is no bos_token`);
  } else {
    const withSpecial = hf.encode("a", { add_special_tokens: true }).ids;
    const without = hf.encode("a", { add_special_tokens: false }).ids;
    addBos = withSpecial.length > without.length && withSpecial[0] !== without[0];
    if (addBos) bosFinal = withSpecial[0];
  }

  const encodeWith = (t: Tokenizer, text: string): number[] => (text.length === 0 ? [] : t.encode(text, { add_special_tokens: false }).ids);
  const loaded: LoadedTokenizer = {
    dir,
    sha256,
    vocabSize,
    addBos,
    bosId: bosFinal,
    eosId,
    padId,
    unkId,
    bosToken: bosFinal !== null ? hf.id_to_token(bosFinal) ?? bosToken : bosToken,
    eosToken,
    chatTemplate: typeof config.chat_template === "string" ? config.chat_template : null,
    config,
    json,
    hf,
    encode: (text) => encodeWith(hf, text),
    encodeContinuation(text) {
      if (hfCont === hf) return encodeWith(hf, text);
      // Only the text before the first added token continues the previous segment; after a special token the
      // tokenizer's usual rule (prefix space after specials, as llama.cpp and HF do) applies again.
      let cut = text.length;
      for (const a of addedContents) {
        const i = text.indexOf(a);
        if (i >= 0 && i < cut) cut = i;
      }
      return [...encodeWith(hfCont, text.slice(0, cut)), ...encodeWith(hf, text.slice(cut))];
    },
    tokenId: (token) => hf.token_to_id(token),
    endsWithAddedToken(text) {
      if (text.length === 0) return false;
      for (const c of addedByLastChar.get(text[text.length - 1]) ?? []) if (text.endsWith(c)) return true;
      return false;
    },
    decode: (ids, opts) => (ids.length === 0 ? "" : hf.decode(Array.from(ids), { skip_special_tokens: opts?.skipSpecialTokens ?? false })),
  };
  cache.set(key, loaded);
  return loaded;
}

// Decodes ids with the tokenizer in `dir` (special tokens kept unless skipSpecialTokens).
export function decode(tokenizerDir: string, ids: ArrayLike<number>, opts?: { skipSpecialTokens?: boolean }): string {
  return tokenizerFor(tokenizerDir).decode(ids, opts);
}

// Streaming detokenizer for the generate/chat flow: push token ids as the engine streams them, get back only the
// newly completed text. Text is held back while the tail decodes to U+FFFD (an incomplete UTF-8 sequence from byte
// tokens), and each step decodes a window that starts a few tokens back so SPM leading-space rules stay right.
// `contextIds` (e.g. the prompt's last ids) set that window for the first generated tokens.
export class StreamDecoder {
  private ids: number[];
  private prefix = 0; // window start
  private read: number; // ids before this index have been emitted
  constructor(private readonly tok: LoadedTokenizer, contextIds: ArrayLike<number> = [], private readonly skipSpecialTokens = false) {
    this.ids = Array.from(contextIds).slice(-8);
    this.read = this.ids.length;
  }
  push(id: number): string {
    this.ids.push(id);
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read), opts);
    const now = this.tok.decode(this.ids.slice(this.prefix), opts);
    if (now.length > before.length && !now.endsWith("\uFFFD") && now.startsWith(before)) {
      const out = now.slice(before.length);
      this.prefix = this.read;
      this.read = this.ids.length;
      return out;
    }
    return "";
  }
  // Whatever is still held back (an incomplete byte sequence decodes to U+FFFD here).
  flush(): string {
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const before = this.tok.decode(this.ids.slice(this.prefix, this.read), opts);
    const now = this.tok.decode(this.ids.slice(this.prefix), opts);
    this.prefix = this.read = this.ids.length;
    return now.startsWith(before) ? now.slice(before.length) : now;
  }
}
