// generate.cpp — `finetune-engine generate`: token ids in, token ids out, with a KV cache.
//   { "command": "generate", "model": dir, "adapter": dir|null, "prompt_ids": [...], "max_new_tokens": 64,
//     "temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0, "stop_ids": [2], "backend": "auto", "threads": 0 }
// temperature 0 = greedy (argmax, lowest id on ties like torch.argmax). Otherwise logits/temperature, then
// top-k, then top-p (smallest set of most likely tokens whose probability reaches top_p), then a draw from a
// seeded RNG. The adapter is applied unmerged (y = Wx + scale·B(Ax)). Streams one `token` event per token;
// a token in stop_ids is emitted and ends generation.
// "prompts": [[...], ...] instead of "prompt_ids" runs several prompts one after another on one loaded model (the
// eval stage's samples): each starts from an empty KV cache and a fresh RNG stream, so its output equals a
// single-prompt run; `token` events carry `prompt` (its index) and `done` has `outputs` (one id list per prompt).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include "backend/backend.h"
#if defined(NXFT_HAVE_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif
#include "commands/command.h"
#include "commands/inference_model.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"
#include "util/rng.h"

namespace nxft {

namespace {

int sample_token(std::vector<float>& logits, double temperature, int top_k, double top_p, Rng& rng) {
  const int V = int(logits.size());
  if (temperature <= 0) {
    int best = 0;
    for (int i = 1; i < V; i++)
      if (logits[size_t(i)] > logits[size_t(best)]) best = i;
    return best;
  }
  std::vector<int> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  // most likely first; ties by id so the order is deterministic
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
  int keep = V;
  if (top_k > 0 && top_k < keep) keep = top_k;
  std::vector<double> prob(static_cast<size_t>(keep));
  const double mx = double(logits[size_t(order[0])]) / temperature;
  double sum = 0;
  for (int i = 0; i < keep; i++) sum += (prob[size_t(i)] = std::exp(double(logits[size_t(order[size_t(i)])]) / temperature - mx));
  for (double& p : prob) p /= sum;
  if (top_p < 1.0) {
    double cum = 0;
    int n = 0;
    while (n < keep) {
      cum += prob[size_t(n)];
      n++;
      if (cum >= top_p) break;
    }
    keep = std::max(1, n);
    double s = 0;
    for (int i = 0; i < keep; i++) s += prob[size_t(i)];
    for (int i = 0; i < keep; i++) prob[size_t(i)] /= s;
  }
  double u = rng.uniform(), cum = 0;
  for (int i = 0; i < keep; i++) {
    cum += prob[size_t(i)];
    if (u < cum) return order[size_t(i)];
  }
  return order[size_t(keep - 1)];
}

int cmd_generate(const Json& job, const std::string& job_path) {
  const auto t0 = std::chrono::steady_clock::now();
  JobReader r(job, job_path);
  const std::string model_dir = r.path("model");
  const std::string adapter_dir = r.opt_path("adapter");
  std::vector<std::vector<int64_t>> prompts;
  const bool batch = r.present("prompts");
  if (batch == r.present("prompt_ids")) r.fail("prompt_ids", "give exactly one of prompt_ids / prompts");
  if (batch) {
    const Json& list = r.any("prompts");
    if (!list.is_array() || list.as_array().empty()) r.fail("prompts", "must be a non-empty array of id arrays");
    for (size_t p = 0; p < list.as_array().size(); p++) {
      const Json& ids = list.as_array()[p];
      if (!ids.is_array()) r.fail("prompts[" + std::to_string(p) + "]", "must be an array of integers");
      std::vector<int64_t> v;
      for (const Json& e : ids.as_array()) {
        if (!e.is_number() || e.as_number() != std::floor(e.as_number()))
          r.fail("prompts[" + std::to_string(p) + "]", "must be an array of integers");
        v.push_back(int64_t(e.as_number()));
      }
      prompts.push_back(std::move(v));
    }
  } else {
    prompts.push_back(r.int_list("prompt_ids"));
  }
  const int max_new = int(r.integer_in("max_new_tokens", 0, 1 << 20, 64));
  const double temperature = r.num_in("temperature", 0.0, 100.0, 0.0);
  const int top_k = int(r.integer_in("top_k", 0, 1 << 30, 0));
  const double top_p = r.num_in("top_p", 0.0, 1.0, 1.0);
  const int64_t seed = r.integer_in("seed", 0, int64_t(9007199254740991LL), 0);
  const std::vector<int64_t> stop_ids = r.int_list("stop_ids", {});
  const std::string backend_name = r.choice("backend", {"auto", "cpu", "cuda"}, "auto");
  const int threads = int(r.integer_in("threads", 0, 4096, 0));
  // Grow the vocabulary to this many rows (new rows: the mean of the model's), e.g. the base of a recipe whose
  // template added tokens, measured on the same ids as the tuned model. 0: the config's.
  const int vocab_size = int(r.integer_in("vocab_size", 0, 1 << 24, 0));
  r.finish();
  if (top_p <= 0) r.fail("top_p", "must be in (0, 1]");

  ModelConfig cfg = ModelConfig::load(path_join(model_dir, "config.json"));   // grown by an adapter's added tokens
  InferenceModel im = make_inference_model(cfg, adapter_dir, backend_name, threads, vocab_size);
  size_t longest = 0;
  for (size_t p = 0; p < prompts.size(); p++) {
    const std::string field = batch ? "prompts[" + std::to_string(p) + "]" : "prompt_ids";
    const std::vector<int64_t>& prompt = prompts[p];
    if (prompt.empty()) r.fail(field, "must not be empty");
    for (size_t i = 0; i < prompt.size(); i++)
      if (prompt[i] < 0 || prompt[i] >= cfg.vocab_size)
        r.fail(field, "id " + std::to_string(prompt[i]) + " at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                          std::to_string(cfg.vocab_size) + ")");
    longest = std::max(longest, prompt.size());
  }
  Transformer& model = *im.model;

  emit_event("start", start_event_fields("generate", *im.backend)
                          .set("prompt_tokens", Json::number(double(prompts[0].size())))
                          .set("prompts", Json::number(double(prompts.size())))
                          .set("max_new_tokens", Json::number(max_new)));
  model.load_weights(model_dir, [](size_t done, size_t total) {
    if (done == total || done % 16 == 0) emit_progress("load", double(done), double(total), "tensors");
  });   // streamed tensor by tensor into the backend

  std::vector<float> logits(size_t(cfg.vocab_size));
  Json outputs = Json::array();
  const auto t_gen = std::chrono::steady_clock::now();
  int produced = 0;
  for (size_t p = 0; p < prompts.size(); p++) {
    model.reset_cache(std::max(1, int(longest) + max_new));
    std::vector<int32_t> ids(prompts[p].begin(), prompts[p].end());
    Rng rng = Rng::stream(uint64_t(seed), "generate");
    Json out_ids = Json::array();
    if (max_new > 0) model.decode(ids.data(), int(ids.size()), logits.data());
    for (int i = 0; i < max_new; i++) {
      for (float x : logits)
        if (!std::isfinite(x)) throw EngineError("non-finite logits at generated token " + std::to_string(i));
      const int next = sample_token(logits, temperature, top_k, top_p, rng);
      Json ev = Json::object().set("id", Json::number(next)).set("index", Json::number(i));
      if (batch) ev.set("prompt", Json::number(double(p)));
      emit_event("token", ev);
      out_ids.push(Json::number(next));
      produced++;
      if (std::find(stop_ids.begin(), stop_ids.end(), int64_t(next)) != stop_ids.end()) break;
      if (i + 1 < max_new) {
        int32_t tok = next;
        model.decode(&tok, 1, logits.data());
      }
    }
    outputs.push(out_ids);
  }
  const auto t1 = std::chrono::steady_clock::now();
#if defined(NXFT_HAVE_CUDA)
  // NXFT_CUDA_PROFILE=1: the per-op table of the whole generation on stderr (bench/generate_run.py keeps it).
  if (im.backend->name() == "cuda" && cuda_profile_enabled(*im.backend))
    std::fprintf(stderr, "#### per-op profile of this generate job (CUDA events around each backend op)\n\n%s\n",
                 cuda_profile_report(*im.backend).c_str());
#endif
  const double gen_s = std::chrono::duration<double>(t1 - t_gen).count();
  Json summary = Json::object();
  if (batch) summary.set("outputs", outputs);
  else summary.set("ids", outputs.as_array()[0]);
  emit_event("done", Json::object().set(
                         "summary", summary
                                        .set("tokens", Json::number(produced))
                                        .set("tokens_per_s", Json::number(gen_s > 0 ? produced / gen_s : 0))
                                        .set("wall_s", Json::number(std::chrono::duration<double>(t1 - t0).count()))
                                        .set("files", Json::array())));
  return 0;
}

RegisterCommand reg_generate("generate", &cmd_generate);

}  // namespace

}  // namespace nxft
