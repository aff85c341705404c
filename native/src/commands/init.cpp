// init.cpp — `finetune-engine init`: a deterministic random-init HF model folder from a config.json.
//   { "command": "init", "config": "/abs/config.json", "seed": 0, "dtype": "f32", "out": "/abs/model-dir",
//     "tokenizer_files": ["/abs/tokenizer.json", …], "threads": 0 }
// Writes out/model.safetensors, the listed files copied verbatim, and config.json (copied verbatim) last, each
// atomically, so a folder with a config.json is complete.
#include <chrono>

#include "commands/command.h"
#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"
#include "util/parallel.h"

namespace nxft {

static int cmd_init(const Json& job, const std::string& job_path) {
  auto t0 = std::chrono::steady_clock::now();
  JobReader r(job, job_path);
  const std::string config_path = r.path("config");
  const int64_t seed = r.integer_in("seed", 0, int64_t(9007199254740991LL), 0);
  const std::string dtype = r.choice("dtype", {"f32", "f16", "bf16"}, "f32");
  const std::string out = r.path("out");
  const std::vector<std::string> tok_files = r.path_list("tokenizer_files", {});
  const int threads = int(r.integer_in("threads", 0, 4096, 0));
  r.finish();
  for (size_t i = 0; i < tok_files.size(); i++) {
    if (!path_exists(tok_files[i]))
      throw EngineError(job_path + ": tokenizer_files[" + std::to_string(i) + "]: no such file: " + tok_files[i], job_path,
                        "tokenizer_files[" + std::to_string(i) + "]");
    std::string b = basename_of(tok_files[i]);
    if (b == "config.json" || b == "model.safetensors")
      throw EngineError(job_path + ": tokenizer_files[" + std::to_string(i) + "]: would overwrite the model's " + b, job_path,
                        "tokenizer_files[" + std::to_string(i) + "]");
  }

  ModelConfig cfg = ModelConfig::load(config_path);
  emit_event("start", Json::object()
                          .set("command", Json::string("init"))
                          .set("backend", Json::string("cpu"))
                          .set("threads", Json::number(resolve_threads(threads)))
                          .set("device", Json::string("cpu"))
                          .set("model_type", Json::string(cfg.model_type))
                          .set("params", Json::number(double(cfg.num_params()))));
  ModelWeights w = ModelWeights::random_init(cfg, uint64_t(seed));
  emit_progress("init", 1, 2);
  make_dirs(out);
  Json files = Json::array();
  const std::string st = path_join(out, "model.safetensors");
  w.save_safetensors(st, dtype);
  files.push(Json::string(st));
  for (const auto& f : tok_files) {
    std::string dst = path_join(out, basename_of(f));
    copy_file_atomic(f, dst);
    files.push(Json::string(dst));
  }
  const std::string cfg_out = path_join(out, "config.json");
  copy_file_atomic(config_path, cfg_out);
  files.push(Json::string(cfg_out));
  emit_progress("init", 2, 2);
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  emit_event("done", Json::object().set("summary", Json::object()
                                                       .set("files", files)
                                                       .set("params", Json::number(double(cfg.num_params())))
                                                       .set("dtype", Json::string(dtype))
                                                       .set("wall_s", Json::number(wall))));
  return 0;
}

static RegisterCommand reg_init("init", &cmd_init);

}  // namespace nxft
