// build-demo-tokenizer.ts — learns the demo base model's tokenizer: a small SentencePiece-style BPE with byte
// fallback (the layout of Llama-2 / stories260K), written as a Hugging Face tokenizer.json + tokenizer_config.json.
//
//   npx tsx plugins/nx-finetune/src/data/build-demo-tokenizer.ts            # rewrite recipes/demo/base/tokenizer*.json
//   npx tsx plugins/nx-finetune/src/data/build-demo-tokenizer.ts --check    # exit 1 if the files differ from a rebuild
//   options: --corpus <jsonl> (default datasets/demo/train.jsonl), --out <dir>, --vocab-size <n> (default 512)
//
// Vocabulary layout (ids):      0 <unk>, 1 <s>, 2 </s>                 special (control)
//                               3..258  <0x00>..<0xFF>                 byte fallback
//                               259..   merged pieces, in merge order   (rank r = id - 259)
//                               then    single characters, most frequent first
//                               last 2  <|im_start|>, <|im_end|>        added special tokens (ChatML)
// Text is normalized SentencePiece-style: "▁" prepended, spaces replaced by "▁"; there is no pre-tokenizer, so the
// model sees whole lines. Training splits the text into words at "▁" (a word is "▁" + the non-space characters after
// it), like sentencepiece's split_by_whitespace, so no piece ever spans two words.
//
// The `merges` list holds EVERY pair (left, right) of vocabulary pieces whose concatenation is a merged piece, sorted by
// the rank of that piece. That makes Hugging Face's BPE (lowest merge rank first) segment text exactly like
// llama.cpp's SentencePiece tokenizer (highest score first) when the GGUF export gives each piece the score
// -(id - 259) — the convention of stories260K.gguf and of transformers' SentencePiece converter.
//
// Deterministic: ties between equally frequent pairs break on the pair's text (UTF-16 order), then the left piece.
import { readFileSync, existsSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { writeFileAtomic } from "./fsutil";
import { ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT } from "./templates";

export interface DemoTokenizerFiles {
  tokenizerJson: string; // file contents
  tokenizerConfigJson: string;
  stats: { vocabSize: number; merges: number; mergePairs: number; alphabet: number };
}

const SPECIALS = ["<unk>", "<s>", "</s>"];
const CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"];
const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const byteToken = (b: number) => `<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`;

// SentencePiece-style normalization, the same as the tokenizer.json normalizer written below.
function normalize(text: string): string {
  return "▁" + text.replace(/ /g, "▁");
}

// Learns the vocabulary from `texts`. Simple O(merges × corpus) BPE: fine for the small corpora a demo uses.
export function trainSpmBpe(texts: string[], vocabSize = 512): DemoTokenizerFiles {
  // 1. Alphabet: every character of the normalized corpus except control characters (those use byte fallback).
  const charCount = new Map<string, number>();
  const normalized = texts.map(normalize);
  for (const t of normalized) for (const c of t) charCount.set(c, (charCount.get(c) ?? 0) + 1);
  const alphabet = [...charCount.entries()]
    .filter(([c]) => c.codePointAt(0)! >= 0x20 && c !== "\u007f")
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([c]) => c);
  const inAlphabet = new Set(alphabet);
  const nMerges = vocabSize - SPECIALS.length - 256 - alphabet.length - CHAT_SPECIALS.length;
  if (nMerges < 0) throw new Error(`vocab size ${vocabSize} is too small for ${alphabet.length} characters`);

  // 2. Words (with counts): split at "▁" and at characters outside the alphabet (they can never merge).
  const wordCount = new Map<string, number>();
  for (const t of normalized) {
    let cur: string[] = [];
    const flush = () => {
      if (cur.length > 0) wordCount.set(cur.join("\u0000"), (wordCount.get(cur.join("\u0000")) ?? 0) + 1);
      cur = [];
    };
    for (const c of t) {
      if (!inAlphabet.has(c)) { flush(); continue; }
      if (c === "▁") flush();
      cur.push(c);
    }
    flush();
  }
  // Each word as an array of symbols, sorted for a deterministic iteration order.
  const words: Array<{ syms: string[]; count: number }> = [...wordCount.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([w, count]) => ({ syms: w.split("\u0000"), count }));

  // 3. Merges: repeatedly merge the most frequent adjacent pair.
  const vocabSet = new Set<string>(alphabet);
  const merged: string[] = [];
  while (merged.length < nMerges) {
    const pairCount = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const key = w.syms[i] + "\u0000" + w.syms[i + 1];
        pairCount.set(key, (pairCount.get(key) ?? 0) + w.count);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    let bestText = "";
    for (const [key, count] of pairCount) {
      const text = key.replace("\u0000", "");
      if (count > bestCount || (count === bestCount && (text < bestText || (text === bestText && key < best!)))) {
        best = key; bestCount = count; bestText = text;
      }
    }
    if (best === null) break; // every word is a single piece
    const [left, right] = best.split("\u0000");
    const piece = left + right;
    if (!vocabSet.has(piece)) { vocabSet.add(piece); merged.push(piece); }
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === left && w.syms[i + 1] === right) { out.push(piece); i++; }
        else out.push(w.syms[i]);
      }
      w.syms = out;
    }
  }

  // 4. Vocabulary in id order.
  const pieces: string[] = [...SPECIALS];
  for (let b = 0; b < 256; b++) pieces.push(byteToken(b));
  const firstMerged = pieces.length;
  pieces.push(...merged, ...alphabet);
  const vocab: Record<string, number> = {};
  pieces.forEach((p, id) => { vocab[p] = id; });
  const addedIds = CHAT_SPECIALS.map((_, i) => pieces.length + i);

  // 5. All (left, right) splits of each merged piece into two normal pieces, by rank of the piece, then by ids.
  const rankOf = new Map<string, number>(merged.map((p, r) => [p, r]));
  const isNormal = (p: string) => vocab[p] !== undefined && vocab[p] >= firstMerged;
  const mergePairs: Array<[string, string, number, number, number]> = [];
  for (const piece of merged) {
    const cps = Array.from(piece);
    for (let k = 1; k < cps.length; k++) {
      const l = cps.slice(0, k).join(""), r = cps.slice(k).join("");
      if (isNormal(l) && isNormal(r)) mergePairs.push([l, r, rankOf.get(piece)!, vocab[l], vocab[r]]);
    }
  }
  mergePairs.sort((a, b) => a[2] - b[2] || a[3] - b[3] || a[4] - b[4]);

  const special = (content: string, id: number) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [...SPECIALS.map((s, i) => special(s, i)), ...CHAT_SPECIALS.map((s, i) => special(s, addedIds[i]))],
    normalizer: {
      type: "Sequence",
      normalizers: [{ type: "Prepend", prepend: "▁" }, { type: "Replace", pattern: { String: " " }, content: "▁" }],
    },
    pre_tokenizer: null,
    post_processor: {
      type: "TemplateProcessing",
      single: [{ SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
      pair: [
        { SpecialToken: { id: "<s>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } },
        { SpecialToken: { id: "<s>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } },
      ],
      special_tokens: { "<s>": { id: "<s>", ids: [1], tokens: ["<s>"] } },
    },
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
        { type: "Strip", content: " ", start: 1, stop: 0 },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: mergePairs.map(([l, r]) => [l, r]),
    },
  };
  const addedDecoder: Record<string, unknown> = {};
  for (const t of tokenizer.added_tokens) {
    addedDecoder[String(t.id)] = { content: t.content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  }
  const config = {
    add_bos_token: true,
    add_eos_token: false,
    added_tokens_decoder: addedDecoder,
    bos_token: "<s>",
    chat_template: CHATML_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: "</s>",
    legacy: false,
    pad_token: "</s>",
    tokenizer_class: "LlamaTokenizerFast",
    unk_token: "<unk>",
  };
  return {
    tokenizerJson: JSON.stringify(tokenizer, null, 1) + "\n",
    tokenizerConfigJson: JSON.stringify(config, null, 2) + "\n",
    stats: { vocabSize: pieces.length + CHAT_SPECIALS.length, merges: merged.length, mergePairs: mergePairs.length, alphabet: alphabet.length },
  };
}

// The demo corpus: each Alpaca row of the JSONL file as the alpaca template renders it for training (so the template's
// fixed text gets pieces of its own and a rendered example stays short), in file order. Rows without an
// instruction/output contribute their string fields.
export function corpusFromJsonl(path: string): string[] {
  const texts: string[] = [];
  readFileSync(path, "utf8").split("\n").forEach((line, i) => {
    if (line.trim() === "") return;
    let row: unknown;
    try { row = JSON.parse(line); } catch (err) { throw new Error(`${path}:${i + 1}: invalid JSON: ${(err as Error).message}`); }
    if (!row || typeof row !== "object") throw new Error(`${path}:${i + 1}: expected a JSON object`);
    const r = row as Record<string, unknown>;
    if (typeof r.instruction === "string" && typeof r.output === "string") {
      const input = typeof r.input === "string" && r.input.trim() !== "" ? r.input : "";
      texts.push(`${input ? ALPACA_PREAMBLE_WITH_INPUT : ALPACA_PREAMBLE}\n\n### Instruction:\n${r.instruction}\n\n` +
        `${input ? `### Input:\n${input}\n\n` : ""}### Response:\n${r.output}`);
    } else {
      for (const v of Object.values(r)) if (typeof v === "string" && v.length > 0) texts.push(v);
    }
  });
  return texts;
}

function main(argv: string[]): number {
  const root = resolve(__dirname, "../../../..");
  const arg = (name: string, dflt: string) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : dflt; };
  const corpus = resolve(root, arg("--corpus", "datasets/demo/train.jsonl"));
  const out = resolve(root, arg("--out", "recipes/demo/base"));
  const vocabSize = Number(arg("--vocab-size", "512"));
  const files = trainSpmBpe(corpusFromJsonl(corpus), vocabSize);
  const targets: Array<[string, string]> = [
    [join(out, "tokenizer.json"), files.tokenizerJson],
    [join(out, "tokenizer_config.json"), files.tokenizerConfigJson],
  ];
  if (argv.includes("--check")) {
    const stale = targets.filter(([p, s]) => !existsSync(p) || readFileSync(p, "utf8") !== s).map(([p]) => p);
    if (stale.length > 0) { console.error(`out of date (rerun without --check): ${stale.join(", ")}`); return 1; }
    console.log("demo tokenizer is up to date");
    return 0;
  }
  for (const [p, s] of targets) writeFileAtomic(p, s);
  console.log(`wrote ${out}/tokenizer.json (vocab ${files.stats.vocabSize}: ${files.stats.merges} merged pieces, ` +
    `${files.stats.alphabet} characters, ${files.stats.mergePairs} merge pairs) and tokenizer_config.json`);
  return 0;
}

if (require.main === module) process.exit(main(process.argv.slice(2)));
