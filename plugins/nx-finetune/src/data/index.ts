// @nx-finetune/plugin data pipeline — the API the executors call.
//
//   runDatasetStage({ recipePath, data, outDir, workspaceRoot })  → DatasetManifest
//     Reads recipe.data (local .jsonl/.json/.csv/.parquet files relative to the recipe, or { hub, split, revision }),
//     validates and normalizes each row (format alpaca | sharegpt | messages | text, optional `columns` renames
//     { source: canonical }, `skip_bad_rows`), splits train/eval per row by a seeded content hash (`eval_fraction` or
//     `eval_rows`, `split_seed`) and writes outDir/rows.jsonl + outDir/manifest.json. A bad row throws an Error whose
//     message starts with "file:line: field "name": ...".
//
//   runShardsStage({ datasetDir, tokenizerDir, template, outDir, cacheDir? }) → ShardsManifest
//     Renders rows with recipe.template ({ name: alpaca | chatml | llama3 | base | text, max_seq_len, packing?,
//     train_on?: responses | all, system? }), tokenizes, writes outDir/<sha256>.tokens.bin shards (engine protocol
//     format) + outDir/manifest.json. Incremental: unchanged shards are reused (manifest.retokenized / reused).
//     Train shards: manifest.shards.filter(s => s.split === "train"), paths join(outDir, s.file).
//
//   Chat / generate helpers:
//     tokenizerFor(dir)                               loaded tokenizer (ids of bos/eos/pad, encode, decode)
//     renderChat(messages, template, tokenizerDir)    → { text, ids, stopIds }: prompt ids for the next assistant turn
//     decode(tokenizerDir, ids)                       text of ids
//     new StreamDecoder(tokenizerFor(dir), promptIds) .push(id) → newly completed text (UTF-8 safe), .flush()
//
//   Shard files: encodeShard / parseShard (shard-format.ts).
export { runDatasetStage, rowId, isEvalRow, type DatasetStageOptions } from "../stages/dataset";
export { runShardsStage, normalizeTemplateSpec, type ShardsStageOptions } from "../stages/shards";
export { tokenizerFor, decode, StreamDecoder, type LoadedTokenizer } from "./tokenizer";
export { renderRow, tokenizeRow, stopIds, checkTemplate, ALPACA_PREAMBLE, ALPACA_PREAMBLE_WITH_INPUT, TEMPLATE_NAMES } from "./templates";
export { encodeShard, parseShard, SHARD_MAGIC, IGNORE_INDEX, type ShardRows } from "./shard-format";
export { DataError } from "./readers";
export { FORMATS } from "./formats";
export { renderChat } from "./chat-prompt";
export type * from "./types";
