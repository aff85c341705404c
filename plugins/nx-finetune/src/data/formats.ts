// formats.ts — validates one raw record of a given dataset format and turns it into the canonical normalized row:
// { messages: [{ role, content, input? }, …] } (alpaca, sharegpt, messages) or { text } (text). Keys are always
// written in the same order, so JSON.stringify of a normalized row is canonical (its sha256 is the row id).
import { DataError, type RawRecord } from "./readers";
import type { DataSpec, Message, NormalizedRow } from "./types";

export const FORMATS = ["alpaca", "sharegpt", "messages", "text"] as const;

const SHAREGPT_ROLES: Record<string, Message["role"]> = {
  system: "system", human: "user", user: "user", gpt: "assistant", assistant: "assistant", chatgpt: "assistant", bing: "assistant",
};

// Applies the columns mapping ({ source: canonical }) to a record's top-level fields.
function renamed(obj: Record<string, unknown>, columns: Record<string, string> | undefined): Record<string, unknown> {
  if (!columns) return obj;
  const out: Record<string, unknown> = { ...obj };
  for (const [src, dst] of Object.entries(columns)) {
    if (src in obj) { delete out[src]; out[dst] = obj[src]; }
  }
  return out;
}

export function normalizeRecord(rec: RawRecord, spec: DataSpec): NormalizedRow {
  if (rec.value instanceof DataError) throw rec.value;
  if (rec.value === null || typeof rec.value !== "object" || Array.isArray(rec.value)) {
    throw new DataError(rec.file, rec.line, null, `expected an object, found ${Array.isArray(rec.value) ? "an array" : JSON.stringify(rec.value)}`);
  }
  const obj = renamed(rec.value as Record<string, unknown>, spec.columns);
  // Errors name the canonical field, and its source column when the mapping renamed it.
  const fail = (field: string, msg: string): never => {
    const top = field.split(/[.[]/)[0];
    const src = Object.entries(spec.columns ?? {}).find(([, dst]) => dst === top)?.[0];
    throw new DataError(rec.file, rec.line, field, msg, src !== undefined ? ` (column "${src}")` : "");
  };
  const str = (field: string, { optional = false, nonEmpty = true } = {}): string => {
    const v = obj[field];
    if (v === undefined || v === null) {
      if (optional) return "";
      return fail(field, "missing");
    }
    if (typeof v !== "string") return fail(field, `expected a string, found ${typeof v}`);
    if (nonEmpty && v.trim() === "") return fail(field, "empty");
    return v;
  };
  // A list of objects; a string holding JSON (CSV cells) is parsed.
  const list = (field: string): unknown[] => {
    let v = obj[field];
    if (v === undefined || v === null) return fail(field, "missing");
    if (typeof v === "string") {
      try { v = JSON.parse(v); } catch { return fail(field, "expected a list (or a JSON string holding one)"); }
    }
    if (!Array.isArray(v)) return fail(field, "expected a list");
    if (v.length === 0) return fail(field, "empty list");
    return v;
  };
  const checkConversation = (field: string, messages: Message[]) => {
    messages.forEach((m, i) => {
      if (m.role === "system" && i !== 0) fail(`${field}[${i}]`, "a system message may only come first");
    });
    if (!messages.some((m) => m.role === "assistant")) fail(field, "no assistant message (nothing to train on)");
    if (messages[messages.length - 1].role !== "assistant") fail(field, "the conversation must end with an assistant message");
  };

  switch (spec.format) {
    case "alpaca": {
      const instruction = str("instruction");
      const input = str("input", { optional: true, nonEmpty: false });
      const output = str("output");
      const system = str("system", { optional: true, nonEmpty: false });
      const messages: Message[] = [];
      if (system !== "") messages.push({ role: "system", content: system });
      messages.push(input.trim() !== "" ? { role: "user", content: instruction, input } : { role: "user", content: instruction });
      messages.push({ role: "assistant", content: output });
      return { messages };
    }
    case "sharegpt": {
      const conv = list("conversations");
      const messages = conv.map((m, i): Message => {
        const f = `conversations[${i}]`;
        if (!m || typeof m !== "object") return fail(f, "expected an object {from, value}");
        const from = (m as any).from, value = (m as any).value;
        if (typeof from !== "string") return fail(`${f}.from`, from === undefined ? "missing" : "expected a string");
        const role = SHAREGPT_ROLES[from.toLowerCase()];
        if (!role) return fail(`${f}.from`, `unknown speaker ${JSON.stringify(from)} (expected human, gpt or system)`);
        if (typeof value !== "string") return fail(`${f}.value`, value === undefined ? "missing" : "expected a string");
        if (value.trim() === "" && role !== "system") return fail(`${f}.value`, "empty");
        return { role, content: value };
      });
      checkConversation("conversations", messages);
      return { messages };
    }
    case "messages": {
      const raw = list("messages");
      const messages = raw.map((m, i): Message => {
        const f = `messages[${i}]`;
        if (!m || typeof m !== "object") return fail(f, "expected an object {role, content}");
        const role = (m as any).role, content = (m as any).content;
        if (role !== "system" && role !== "user" && role !== "assistant") {
          return fail(`${f}.role`, role === undefined ? "missing" : `unknown role ${JSON.stringify(role)} (expected system, user or assistant)`);
        }
        if (typeof content !== "string") return fail(`${f}.content`, content === undefined ? "missing" : "expected a string");
        if (content.trim() === "" && role !== "system") return fail(`${f}.content`, "empty");
        return { role, content };
      });
      checkConversation("messages", messages);
      return { messages };
    }
    case "text":
      return { text: str("text") };
    default:
      throw new Error(`data: field "format": unknown format ${JSON.stringify((spec as any).format)} (expected ${FORMATS.join(", ")})`);
  }
}
