// readers.ts — reads raw dataset records from local files, remembering where each record starts so errors can name
// file:line. Formats: .jsonl (one JSON object per line), .json (an array of objects; the line is where the element
// starts), .csv (RFC 4180 with a header row; the line is where the record starts), .parquet (hyparquet; "line" is the
// 1-based row number).
import { readFileSync } from "node:fs";
import { extname } from "node:path";

export interface RawRecord {
  file: string; // path as given (for messages)
  line: number; // 1-based
  value: unknown;
}

export class DataError extends Error {
  // `fieldNote` follows the field name, e.g. ' (column "answer")' when a columns mapping renamed it.
  constructor(readonly file: string, readonly line: number | null, readonly field: string | null, message: string, fieldNote = "") {
    super(`${file}${line !== null ? `:${line}` : ""}: ${field !== null ? `field "${field}"${fieldNote}: ` : ""}${message}`);
  }
}

export async function readRecords(path: string, displayPath = path): Promise<RawRecord[]> {
  const ext = extname(path).toLowerCase();
  switch (ext) {
    case ".jsonl": case ".ndjson": return readJsonlBytes(readFileSync(path), displayPath);
    case ".json": return readJsonArray(decodeUtf8(readFileSync(path), displayPath), displayPath);
    case ".csv": return readCsv(decodeUtf8(readFileSync(path), displayPath), displayPath);
    case ".parquet": return readParquet(path, displayPath);
    default: throw new DataError(displayPath, null, null, `unsupported file type "${ext}" (expected .jsonl, .json, .csv or .parquet)`);
  }
}

// Text must be valid UTF-8: a lenient decode would silently train on U+FFFD in place of the damaged bytes.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function decodeUtf8(bytes: Uint8Array, file: string): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new DataError(file, firstInvalidUtf8Line(bytes), null, INVALID_UTF8);
  }
}

const INVALID_UTF8 = "invalid UTF-8 (the file must be UTF-8 text; re-encode it, e.g. iconv -f latin1 -t utf-8)";

// 1-based line holding the first byte sequence that is not UTF-8 (only called once a decode failed).
function firstInvalidUtf8Line(bytes: Uint8Array): number {
  let line = 1;
  for (let start = 0; start < bytes.length; line++) {
    let end = bytes.indexOf(10, start);
    if (end < 0) end = bytes.length;
    try { strictUtf8.decode(bytes.subarray(start, end)); } catch { return line; }
    start = end + 1;
  }
  return line;
}

// JSON lines from bytes: a line that is not UTF-8 becomes a bad row of its own (skip_bad_rows can skip it).
export function readJsonlBytes(bytes: Uint8Array, file: string): RawRecord[] {
  let text: string | undefined;
  try { text = strictUtf8.decode(bytes); } catch { /* some line is not UTF-8: decode line by line below */ }
  if (text !== undefined) return readJsonl(text, file);
  const out: RawRecord[] = [];
  let line = 1;
  for (let start = 0; start < bytes.length; line++) {
    let end = bytes.indexOf(10, start);
    if (end < 0) end = bytes.length;
    try {
      const lineText = strictUtf8.decode(bytes.subarray(start, end));
      for (const rec of readJsonl(lineText, file)) out.push({ ...rec, line });
    } catch {
      out.push({ file, line, value: new DataError(file, line, null, INVALID_UTF8) });
    }
    start = end + 1;
  }
  return out;
}

function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

export function readJsonl(text: string, file: string): RawRecord[] {
  const out: RawRecord[] = [];
  const lines = stripBom(text).split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].endsWith("\r") ? lines[i].slice(0, -1) : lines[i];
    if (line.trim() === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      // Bad JSON is recorded as an error value so skip_bad_rows can skip it like any other bad row.
      value = new DataError(file, i + 1, null, `invalid JSON: ${(err as Error).message}`);
    }
    out.push({ file, line: i + 1, value });
  }
  return out;
}

// Line number (1-based) of a character offset.
function lineAt(text: string, offset: number, lineStarts?: number[]): number {
  if (lineStarts) {
    let lo = 0, hi = lineStarts.length - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (lineStarts[mid] <= offset) lo = mid; else hi = mid - 1; }
    return lo + 1;
  }
  let n = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) n++;
  return n;
}

// A JSON array of records. A whole-file parse error names the line of the offending character; each element's line
// is found by a small scan over the top level of the array (strings and nesting tracked, nothing else parsed).
export function readJsonArray(text: string, file: string): RawRecord[] {
  text = stripBom(text);
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    const msg = (err as Error).message;
    const m = /position (\d+)/.exec(msg);
    throw new DataError(file, m ? lineAt(text, Number(m[1])) : null, null, `invalid JSON: ${msg}`);
  }
  if (!Array.isArray(parsed)) throw new DataError(file, 1, null, "expected a JSON array of rows");
  const lineStarts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) lineStarts.push(i + 1);
  const starts: number[] = [];
  let depth = 0;
  let inString = false;
  let expectElement = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === "\\") i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === " " || c === "\n" || c === "\r" || c === "\t") continue;
    if (expectElement && depth === 1 && c !== "]") { starts.push(i); expectElement = false; }
    if (c === '"') inString = true;
    else if (c === "[" || c === "{") { depth++; if (depth === 1) expectElement = true; }
    else if (c === "]" || c === "}") depth--;
    else if (c === "," && depth === 1) expectElement = true;
    if (depth === 1 && c !== "," && c !== "[" && c !== "]") expectElement = false;
  }
  if (starts.length !== parsed.length) throw new Error(`${file}: internal error: found ${starts.length} element starts for ${parsed.length} elements`);
  return parsed.map((value, k) => ({ file, line: lineAt(text, starts[k], lineStarts), value }));
}

// RFC 4180 CSV: comma separated, fields optionally in double quotes ("" escapes a quote; quoted fields may span
// lines). The first record is the header. Every value is a string.
export function readCsv(text: string, file: string): RawRecord[] {
  text = stripBom(text);
  const records: Array<{ line: number; fields: string[] }> = [];
  let fields: string[] = [];
  let field = "";
  let line = 1;
  let recordLine = 1;
  let i = 0;
  let atFieldStart = true;
  const endRecord = () => {
    fields.push(field);
    if (!(fields.length === 1 && fields[0] === "")) records.push({ line: recordLine, fields });
    fields = [];
    field = "";
    atFieldStart = true;
  };
  while (i < text.length) {
    const c = text[i];
    if (atFieldStart && c === '"') {
      // Quoted field.
      i++;
      for (;;) {
        if (i >= text.length) throw new DataError(file, recordLine, null, "unterminated quoted field");
        const q = text[i];
        if (q === '"') {
          if (text[i + 1] === '"') { field += '"'; i += 2; continue; }
          i++;
          break;
        }
        if (q === "\n") line++;
        field += q;
        i++;
      }
      atFieldStart = false;
      if (i < text.length && text[i] !== "," && text[i] !== "\n" && text[i] !== "\r") {
        throw new DataError(file, line, null, "unexpected character after a closing quote");
      }
      continue;
    }
    atFieldStart = false;
    if (c === ",") { fields.push(field); field = ""; atFieldStart = true; i++; continue; }
    if (c === "\r" && text[i + 1] === "\n") { i++; continue; }
    if (c === "\n") { endRecord(); line++; recordLine = line; i++; continue; }
    field += c;
    i++;
  }
  if (field !== "" || fields.length > 0) endRecord();
  if (records.length === 0) throw new DataError(file, 1, null, "empty CSV file (a header row is required)");
  const header = records[0].fields;
  const out: RawRecord[] = [];
  for (const r of records.slice(1)) {
    if (r.fields.length !== header.length) {
      out.push({ file, line: r.line, value: new DataError(file, r.line, null, `expected ${header.length} fields (as in the header), found ${r.fields.length}`) });
      continue;
    }
    const obj: Record<string, string> = {};
    header.forEach((h, k) => { obj[h] = r.fields[k]; });
    out.push({ file, line: r.line, value: obj });
  }
  return out;
}

// A string cell whose bytes are not UTF-8 (hyparquet's own decoder would put U+FFFD in their place).
const NOT_UTF8 = Symbol("not UTF-8");

async function readParquet(path: string, file: string): Promise<RawRecord[]> {
  const { asyncBufferFromFile, parquetReadObjects } = await import("hyparquet");
  const stringFromBytes = (bytes: Uint8Array | undefined): unknown => {
    if (!bytes) return bytes;
    try { return strictUtf8.decode(bytes); } catch { return NOT_UTF8; }
  };
  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({ file: await asyncBufferFromFile(path), parsers: { stringFromBytes: stringFromBytes as (b: Uint8Array) => string } });
  } catch (err) {
    throw new DataError(file, null, null, `cannot read parquet: ${(err as Error).message}`);
  }
  return rows.map((value, k) => {
    const bad = Object.entries(value).find(([, v]) => holdsNotUtf8(v));
    return { file, line: k + 1, value: bad ? new DataError(file, k + 1, bad[0], INVALID_UTF8) : plainValue(value) };
  });
}

function holdsNotUtf8(v: unknown): boolean {
  if (v === NOT_UTF8) return true;
  if (Array.isArray(v)) return v.some(holdsNotUtf8);
  if (v && typeof v === "object" && !ArrayBuffer.isView(v) && !(v instanceof Date)) return Object.values(v).some(holdsNotUtf8);
  return false;
}

// Parquet values as plain JSON values: bigint → number, Date → ISO string, typed arrays → arrays.
function plainValue(v: unknown): unknown {
  if (typeof v === "bigint") return Number(v);
  if (v instanceof Date) return v.toISOString();
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return Array.from(v as unknown as ArrayLike<number>);
  if (Array.isArray(v)) return v.map(plainValue);
  if (v && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = plainValue(x);
    return out;
  }
  return v;
}
