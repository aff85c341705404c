// types.ts — the data pipeline's public types: the recipe sections it reads and the manifests it writes.

// recipe.data — where the dataset comes from and how to read it.
export interface DataSpec {
  // Local file(s), relative to the recipe's folder: .jsonl, .json (an array of rows), .csv, .parquet.
  path?: string | string[];
  // Or a Hugging Face Hub dataset ("org/name"); downloaded once into the cache (HF_TOKEN used when set).
  hub?: string;
  split?: string; // hub split, default "train"
  revision?: string; // hub revision, default "main"
  config?: string; // hub config (subset), default "default"
  // alpaca: {instruction, input?, output, system?}; sharegpt: {conversations: [{from, value}]};
  // messages: {messages: [{role, content}]}; text: {text}.
  format: "alpaca" | "sharegpt" | "messages" | "text";
  // Renames source fields before validation, pandas-style { source_name: canonical_name },
  // e.g. { question: "instruction", answer: "output" } or { dialog: "conversations" }.
  columns?: Record<string, string>;
  skip_bad_rows?: boolean; // skip (and count) invalid rows instead of failing on the first one
  // Held-out split, decided per row from a seeded hash of the row's content (editing a row never moves others):
  eval_fraction?: number; // 0 ≤ f < 1
  eval_rows?: number; // approximate count: converted to a fraction of the row count
  split_seed?: number; // default 0
  max_rows?: number; // keep only the first N valid rows (after skipping bad rows)
}

export interface Message {
  role: "system" | "user" | "assistant";
  content: string;
  // Alpaca's optional context ("input" field), kept apart so the alpaca template can render its "### Input:" block.
  // Other templates render a user message as content + "\n\n" + input.
  input?: string;
}

// One line of rows.jsonl (the canonical normalized row).
export type NormalizedRow = { messages: Message[] } | { text: string };

export interface SkippedRow {
  file: string;
  line: number;
  field: string;
  message: string;
}

// datasetDir/manifest.json
export interface DatasetManifest {
  version: 1;
  kind: "text" | "messages"; // what every row of rows.jsonl holds
  format: DataSpec["format"];
  sources: Array<{ file: string; sha256: string; rows: number }>;
  rows: number; // rows in rows.jsonl
  train_rows: number;
  eval_rows: number;
  skipped: number;
  skipped_examples: SkippedRow[]; // the first 20 skipped rows
  rows_file: "rows.jsonl";
  rows_sha256: string; // sha256 of rows.jsonl
  split_seed: number;
  eval_fraction: number; // the fraction actually used (eval_rows converted)
  // Per row of rows.jsonl, in order: its id (first 16 hex digits of the sha256 of its canonical JSON) and split.
  row_ids: string[];
  row_splits: string; // one character per row: "t" train, "e" eval
  hub_commit?: string; // data.hub: the commit data.revision named when the files were fetched (pinned)
}

// recipe.template — how rows become token sequences.
export interface TemplateSpec {
  // alpaca | chatml | llama3 | base (the tokenizer_config's own chat_template, rendered with @huggingface/jinja) |
  // text (plain text rows: BOS + text + EOS).
  name: "alpaca" | "chatml" | "llama3" | "base" | "text";
  max_seq_len: number; // T, the row length of the shards
  packing?: boolean; // pack several examples per row (default false: one example per row, padded)
  train_on?: "responses" | "all"; // default "responses" (prompt tokens get target -100); "all" for text
  system?: string; // default system message when a conversation has none (chatml/llama3/base only)
}

export interface ShardEntry {
  file: string; // "<sha256>.tokens.bin" (content hash of the file)
  split: "train" | "eval";
  rows: number; // rows of T tokens in the file
  examples: number; // dataset rows in it
  tokens: number; // non-padding tokens
  target_tokens: number; // targets != -100
  truncated: number; // examples in it that were cut at seq_len
  untrained: number; // examples in it with no target left (e.g. the prompt alone fills seq_len)
  sha256: string;
  key: string; // cache key: hash of the dataset row ids + template + tokenizer + seq_len (reuse across runs)
}

// shardsDir/manifest.json — the protocol's fields (seq_len, vocab_size, pad_id, tokenizer_sha256, shards) plus stats.
export interface ShardsManifest {
  version: 1;
  seq_len: number;
  vocab_size: number;
  pad_id: number;
  bos_id: number | null;
  eos_id: number | null;
  stop_ids: number[]; // ids that end a response for this template (for generate)
  tokenizer_sha256: string;
  template: TemplateSpec;
  dataset_rows_sha256: string;
  shards: ShardEntry[];
  examples: { train: number; eval: number };
  truncated: number; // examples longer than seq_len that were cut
  untrained: number; // examples without any target token (they add nothing to the loss: raise max_seq_len)
  retokenized: number; // shards tokenized in this run (the rest were reused from earlier output / the cache)
  reused: number;
  // template.add_special_tokens: the tokens appended to the base's vocabulary (the grown tokenizer's files sit next
  // to this manifest); absent when none were added.
  added_tokens?: Array<{ id: number; content: string }>;
}
