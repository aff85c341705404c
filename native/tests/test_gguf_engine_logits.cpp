// test_gguf_engine_logits — our engine's next-token log-probabilities for stories260K-hf on the prompt of
// test/gguf/golden/stories260K-logprobs.json (transformers, fp32) must match within 1e-4.
//   test_gguf_engine_logits                 compare against the golden (exit 0/1)
//   test_gguf_engine_logits --dump out.json also write {"ids", "logprobs"} for test/gguf (which compares llama.cpp
//                                           running our F32 GGUF against these engine values directly)
// Run from the repository root (ctest does); the model comes from ../shared/fixtures.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/transformer.h"
#include "util/fs.h"
#include "util/json.h"

using namespace nxft;

int main(int argc, char** argv) {
  std::string dump;
  if (argc == 3 && std::strcmp(argv[1], "--dump") == 0) dump = argv[2];
  const std::string model_dir = "../shared/fixtures/models/stories260K-hf";
  const Json golden = Json::parse_file("test/gguf/golden/stories260K-logprobs.json");
  std::vector<int32_t> ids;
  for (const Json& v : golden.at("ids").as_array()) ids.push_back(int32_t(v.as_int()));

  const ModelConfig cfg = ModelConfig::load(path_join(model_dir, "config.json"));
  std::unique_ptr<Backend> be = make_backend("cpu", 1);
  TransformerOptions opt;
  Transformer model(*be, cfg, nullptr, opt);
  model.load_weights(model_dir);
  model.reset_cache(int(ids.size()));

  const int V = cfg.vocab_size;
  std::vector<float> logits(static_cast<size_t>(V));
  std::vector<std::vector<double>> lp;
  for (size_t i = 0; i < ids.size(); i++) {
    model.decode(&ids[i], 1, logits.data());   // logits of the next token after ids[0..i]
    double mx = -1e300, sum = 0;
    for (float x : logits) mx = std::max(mx, double(x));
    for (float x : logits) sum += std::exp(double(x) - mx);
    std::vector<double> row(static_cast<size_t>(V));
    for (int t = 0; t < V; t++) row[size_t(t)] = double(logits[size_t(t)]) - mx - std::log(sum);
    lp.push_back(row);
  }
  double max_diff = 0;
  const auto& g = golden.at("logprobs").as_array();
  for (size_t i = 0; i < ids.size(); i++)
    for (int t = 0; t < V; t++) max_diff = std::max(max_diff, std::fabs(lp[i][size_t(t)] - g[i].as_array()[size_t(t)].as_number()));
  std::printf("engine vs transformers: max |Δ log p| over %zu positions × %d tokens = %.3g\n", ids.size(), V, max_diff);

  if (!dump.empty()) {
    Json out = Json::object(), rows = Json::array(), jids = Json::array();
    for (int32_t id : ids) jids.push(Json::number(id));
    for (const auto& row : lp) {
      Json r = Json::array();
      for (double v : row) r.push(Json::number(v));
      rows.push(r);
    }
    out.set("ids", jids).set("logprobs", rows);
    write_file_atomic(dump, out.dump());
  }
  if (!(max_diff < 1e-4)) {
    std::fprintf(stderr, "FAIL: engine log-probabilities differ from transformers' by %.3g (> 1e-4)\n", max_diff);
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
