// eval.cpp — `finetune-engine eval`: mean cross-entropy of a model (optionally with an unmerged adapter) over
// token shards, the same number `train` reports in its `eval` events.
//   { "command": "eval", "model": dir, "adapter": dir|null, "shards": [...], "batch_size": 8,
//     "backend": "auto", "threads": 0 }
// Emits start, one `eval` event {step: 0, loss, tokens} and done {summary: {loss, tokens, rows, wall_s, files: []}}.
#include <chrono>
#include <cmath>
#include "backend/backend.h"
#include "commands/command.h"
#include "commands/inference_model.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "train/shards.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"

namespace nxft {

namespace {

int cmd_eval(const Json& job, const std::string& job_path) {
  const auto t0 = std::chrono::steady_clock::now();
  JobReader r(job, job_path);
  const std::string model_dir = r.path("model");
  const std::string adapter_dir = r.opt_path("adapter");
  const std::vector<std::string> shard_files = r.path_list("shards");
  const int B = int(r.integer_in("batch_size", 1, 1 << 20, 8));
  const std::string backend_name = r.choice("backend", {"auto", "cpu", "cuda"}, "auto");
  const int threads = int(r.integer_in("threads", 0, 4096, 0));
  // Grow the vocabulary to this many rows (new rows: the mean of the model's), e.g. the base of a recipe whose
  // template added tokens, measured on the same ids as the tuned model. 0: the config's.
  const int vocab_size = int(r.integer_in("vocab_size", 0, 1 << 24, 0));
  r.finish();
  if (shard_files.empty()) r.fail("shards", "must list at least one shard");

  ModelConfig cfg = ModelConfig::load(path_join(model_dir, "config.json"));   // grown by an adapter's added tokens
  InferenceModel im = make_inference_model(cfg, adapter_dir, backend_name, threads, vocab_size);
  ShardSet shards(shard_files, cfg.vocab_size);
  Transformer& model = *im.model;
  emit_event("start", start_event_fields("eval", *im.backend).set("rows", Json::number(double(shards.rows()))));
  model.load_weights(model_dir);

  const int T = shards.seq_len();
  double sum = 0;
  int64_t count = 0;
  std::vector<int32_t> tokens, targets, positions;
  for (int64_t r0 = 0; r0 < shards.rows(); r0 += B) {
    const int b = int(std::min<int64_t>(B, shards.rows() - r0));
    tokens.resize(size_t(b) * T);
    targets.resize(size_t(b) * T);
    positions.resize(size_t(b) * T);
    int64_t n = 0;
    for (int i = 0; i < b; i++) {
      shards.read_row(r0 + i, &tokens[size_t(i) * T], &targets[size_t(i) * T], &positions[size_t(i) * T]);
      for (int t = 0; t < T; t++) n += targets[size_t(i) * T + t] != -100;
    }
    if (n == 0) continue;
    const RowsToRun run = cut_rows_after_last_target(&tokens, &targets, &positions, b, T);   // as train's eval batches
    sum += model.forward_loss(Batch{tokens.data(), targets.data(), positions.data(), run.B, run.T});
    count += n;
    emit_progress("eval", double(r0 + b), double(shards.rows()), "rows");
  }
  const double loss = count > 0 ? sum / double(count) : std::nan("");
  Json lj = std::isfinite(loss) ? Json::number(loss) : Json();
  emit_event("eval", Json::object().set("step", Json::number(0)).set("loss", lj).set("tokens", Json::number(double(count))));
  emit_event("done", Json::object().set("summary", Json::object()
                                                       .set("loss", lj)
                                                       .set("tokens", Json::number(double(count)))
                                                       .set("rows", Json::number(double(shards.rows())))
                                                       .set("wall_s", Json::number(std::chrono::duration<double>(
                                                                                       std::chrono::steady_clock::now() - t0)
                                                                                       .count()))
                                                       .set("files", Json::array())));
  return 0;
}

RegisterCommand reg_eval("eval", &cmd_eval);

}  // namespace

}  // namespace nxft
