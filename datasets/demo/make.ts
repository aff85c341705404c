// make.ts — writes datasets/demo/train.jsonl, the demo's instruction dataset (Alpaca fields).
// Deterministic: fixed tables, fixed order shuffled by a seeded PRNG, so the file is byte-identical on every run.
// The tasks have short fixed answers (capitals, opposites, colours, plurals) so a tiny 4-layer model learns them
// visibly within a few hundred CPU steps.
//
//   npx tsx datasets/demo/make.ts            # rewrite train.jsonl
//   npx tsx datasets/demo/make.ts --check    # exit 1 if train.jsonl is not what this script writes
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const capitals: Array<[string, string]> = [
  ["France", "Paris"], ["Germany", "Berlin"], ["Italy", "Rome"], ["Spain", "Madrid"], ["Japan", "Tokyo"],
  ["China", "Beijing"], ["Egypt", "Cairo"], ["Russia", "Moscow"], ["Canada", "Ottawa"], ["Peru", "Lima"],
  ["Kenya", "Nairobi"], ["Greece", "Athens"], ["Norway", "Oslo"], ["Sweden", "Stockholm"], ["Poland", "Warsaw"],
  ["Austria", "Vienna"], ["Ireland", "Dublin"], ["Portugal", "Lisbon"], ["Chile", "Santiago"], ["Cuba", "Havana"],
];
const opposites: Array<[string, string]> = [
  ["hot", "cold"], ["big", "small"], ["up", "down"], ["fast", "slow"], ["happy", "sad"], ["light", "dark"],
  ["open", "closed"], ["early", "late"], ["full", "empty"], ["hard", "soft"], ["old", "new"], ["wet", "dry"],
  ["loud", "quiet"], ["rich", "poor"], ["tall", "short"], ["strong", "weak"], ["near", "far"], ["day", "night"],
  ["win", "lose"], ["in", "out"],
];
const colours: Array<[string, string]> = [
  ["grass", "green"], ["the sky", "blue"], ["snow", "white"], ["coal", "black"], ["a banana", "yellow"],
  ["a tomato", "red"], ["an orange", "orange"], ["chocolate", "brown"], ["milk", "white"], ["a lemon", "yellow"],
  ["blood", "red"], ["a carrot", "orange"], ["the sea", "blue"], ["a leaf", "green"], ["a crow", "black"],
];
const plurals: Array<[string, string]> = [
  ["cat", "cats"], ["dog", "dogs"], ["child", "children"], ["mouse", "mice"], ["box", "boxes"], ["foot", "feet"],
  ["tooth", "teeth"], ["city", "cities"], ["knife", "knives"], ["man", "men"], ["woman", "women"], ["bus", "buses"],
];

type Row = { instruction: string; input: string; output: string };
const rows: Row[] = [];
for (const [country, city] of capitals) rows.push({ instruction: `What is the capital of ${country}?`, input: "", output: `${city}.` });
for (const [word, opposite] of opposites) rows.push({ instruction: "Give the opposite of the word.", input: word, output: opposite });
for (const [thing, colour] of colours) rows.push({ instruction: `What colour is ${thing}?`, input: "", output: `${colour[0].toUpperCase()}${colour.slice(1)}.` });
for (const [word, plural] of plurals) rows.push({ instruction: "Write the plural of the word.", input: word, output: plural });

// mulberry32: a tiny seeded PRNG, enough for a reproducible shuffle.
function mulberry32(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = mulberry32(1234);
for (let i = rows.length - 1; i > 0; i--) {
  const j = Math.floor(random() * (i + 1));
  [rows[i], rows[j]] = [rows[j], rows[i]];
}

const text = rows.map((row) => JSON.stringify(row)).join("\n") + "\n";
const out = join(dirname(fileURLToPath(import.meta.url)), "train.jsonl");
if (process.argv.includes("--check")) {
  const same = readFileSync(out, "utf8") === text;
  console.log(same ? `${out}: up to date (${rows.length} rows)` : `${out}: differs from make.ts output`);
  process.exit(same ? 0 : 1);
}
writeFileSync(out + ".tmp", text);
renameSync(out + ".tmp", out);
console.log(`wrote ${out} (${rows.length} rows)`);
