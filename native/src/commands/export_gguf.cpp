// export_gguf.cpp — the `export-gguf` command (docs/engine-protocol.md):
//   { "command": "export-gguf", "model": dir, "out": file.gguf, "type": preset, "tokenizer": {…}, "name", "threads" }
//   { "command": "export-gguf", "adapter": dir, "base_config": config.json, "out": file.gguf, "type": "f32" }
// Events: start, warning (shape fallbacks), progress (one per tensor written), done {summary: {files, …}}.
#include <thread>

#include "commands/command.h"
#include "gguf/export.h"
#include "gguf/gguf_types_policy.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"

namespace nxft {

static int cmd_export_gguf(const Json& job, const std::string& job_path) {
  JobReader r(job, job_path);
  const std::string model = r.opt_path("model");
  const std::string adapter = r.opt_path("adapter");
  if (model.empty() == adapter.empty())
    r.fail(model.empty() ? "model" : "adapter", "give exactly one of \"model\" (an HF folder) or \"adapter\" (a PEFT folder)");
  const std::string out = r.path("out");
  const std::string type = adapter.empty() ? r.choice("type", gguf_preset_names())
                                           : r.choice("type", {"f32", "f16", "bf16", "q8_0"}, "f32");
  const std::string name = r.str("name", "");
  int64_t threads = r.integer_in("threads", 0, 1024, 0);
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  std::unique_ptr<JobReader> tr;
  std::string base_config;
  TokenizerMeta tok;
  if (adapter.empty()) {
    if (!r.opt_sub("tokenizer", &tr))
      r.fail("tokenizer", "missing: a model GGUF needs the tokenizer object (produced by the TS side from tokenizer.json)");
    tok = TokenizerMeta::from_job(*tr);
  } else {
    base_config = r.path("base_config");
  }
  r.finish();
  const std::string out_dir = dirname_of(out);
  if (!out_dir.empty() && !path_exists(out_dir)) r.fail("out", "folder " + out_dir + " does not exist");

  emit_event("start", Json::object()
                          .set("command", Json::string("export-gguf"))
                          .set("backend", Json::string("cpu"))
                          .set("threads", Json::number(double(threads)))
                          .set("device", Json::string("cpu"))
                          .set("type", Json::string(type))
                          .set("source", Json::string(adapter.empty() ? model : adapter)));
  ExportSummary s = adapter.empty() ? export_model_gguf(model, out, type, tok, name, int(threads))
                                    : export_adapter_gguf(adapter, base_config, out, type, name, int(threads));
  Json types = Json::object();
  for (const auto& kv : s.tensor_types) types.set(kv.first, Json::number(kv.second));
  Json files = Json::array();
  files.push(Json::string(s.out));
  emit_event("done", Json::object().set("summary", Json::object()
                                                       .set("files", files)
                                                       .set("bytes", Json::number(double(s.bytes)))
                                                       .set("tensors", Json::number(double(s.tensors)))
                                                       .set("type", Json::string(type))
                                                       .set("tensor_types", types)));
  return 0;
}

static RegisterCommand reg("export-gguf", &cmd_export_gguf);

}  // namespace nxft
