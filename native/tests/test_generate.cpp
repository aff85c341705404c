// test_generate.cpp — greedy decoding with the KV cache on ../shared/fixtures/models/stories260K-hf reproduces
// transformers, and the cached decoder agrees with a full forward pass.
//
// Golden produced once with /work/pyenv (torch 2.x, transformers 5.24), fp32:
//   m = AutoModelForCausalLM.from_pretrained("../shared/fixtures/models/stories260K-hf", dtype=torch.float32)
//   m.generate(torch.tensor([[1, 403, 407, 261, 378]]), max_new_tokens=40, do_sample=False,
//              eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
// ("<s>Once upon a time" = [1, 403, 407, 261, 378] in the stories260K tokenizer.)
#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include "commands/command.h"
#include "util/json.h"
#include "math_test_util.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "util/fs.h"

using namespace nxft;

static const int32_t kPrompt[] = {1, 403, 407, 261, 378};
static const int32_t kGolden[40] = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396,
                                    267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385,
                                    328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426};

// Runs the generate command with stdout captured to a file; returns summary.ids of the done event.
static std::vector<int> run_generate(const std::string& dir, double temperature, int top_k, double top_p, int seed) {
  char tmpl[] = "/tmp/nxft-gen-XXXXXX";
  const int fd = mkstemp(tmpl);
  close(fd);
  const std::string job_text = "{\"command\":\"generate\",\"model\":\"" + dir + "\",\"adapter\":null," +
                               "\"prompt_ids\":[1,403,407,261,378],\"max_new_tokens\":12,\"temperature\":" +
                               std::to_string(temperature) + ",\"top_k\":" + std::to_string(top_k) + ",\"top_p\":" +
                               std::to_string(top_p) + ",\"seed\":" + std::to_string(seed) +
                               ",\"stop_ids\":[],\"backend\":\"cpu\",\"threads\":2}";
  Json job = Json::parse(job_text, "job");
  std::fflush(stdout);
  const int saved = dup(1);
  FILE* f = std::freopen(tmpl, "w", stdout);
  (void)f;
  find_command("generate")(job, "job.json");
  std::fflush(stdout);
  dup2(saved, 1);
  close(saved);
  std::vector<int> ids;
  std::string text = read_file(tmpl);
  unlink(tmpl);
  size_t pos = text.rfind("{\"event\":\"done\"");
  if (pos == std::string::npos) return ids;
  Json done = Json::parse(text.substr(pos, text.find('\n', pos) - pos));
  for (const Json& x : done.at("summary").at("ids").as_array()) ids.push_back(int(x.as_int()));
  return ids;
}

int main() {
  const std::string dir = "../shared/fixtures/models/stories260K-hf";
  if (!path_exists(dir + "/config.json")) {
    std::fprintf(stderr, "test_generate: fixture %s not found (run from the repo root)\n", dir.c_str());
    return 1;
  }
  ModelWeights w = ModelWeights::load(dir);
  auto be = make_cpu_backend(2);
  TransformerOptions opt;
  Transformer m(*be, w, nullptr, opt);
  const int V = w.config.vocab_size;

  m.reset_cache(5 + 40);
  std::vector<float> logits(static_cast<size_t>(V));
  m.decode(kPrompt, 5, logits.data());
  std::vector<int32_t> all(kPrompt, kPrompt + 5);
  int mismatch = -1;
  for (int i = 0; i < 40; i++) {
    int best = 0;
    for (int v = 1; v < V; v++)
      if (logits[size_t(v)] > logits[size_t(best)]) best = v;
    if (best != kGolden[i] && mismatch < 0) mismatch = i;
    all.push_back(best);
    int32_t tok = best;
    if (i + 1 < 40) m.decode(&tok, 1, logits.data());
  }
  MT_CHECK(mismatch < 0, "greedy continuation differs from transformers at generated token %d", mismatch);

  // streaming load (Transformer from config + load_weights) gives the same logits as ModelWeights::load
  {
    Transformer streamed(*be, w.config, nullptr, opt);
    streamed.load_weights(dir);
    std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
    streamed.reset_cache(8);
    streamed.decode(kPrompt, 5, a.data());
    m.reset_cache(8);
    m.decode(kPrompt, 5, b.data());
    MT_CHECK(a == b, "load_weights gives different logits from ModelWeights::load");
  }

  // the cache path equals a fresh full pass over the same 20 tokens (last-token logits)
  {
    std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
    m.reset_cache(20);
    m.decode(all.data(), 20, a.data());
    m.reset_cache(20);
    for (int i = 0; i < 20; i++) m.decode(&all[size_t(i)], 1, b.data());
    double worst = 0;
    for (int v = 0; v < V; v++) worst = std::max(worst, double(std::fabs(a[size_t(v)] - b[size_t(v)])));
    MT_CHECK(worst < 1e-4, "token-by-token decode differs from a full pass by %g", worst);
  }
  // the training forward over the same tokens gives the loss implied by those logits (consistency of both paths)
  {
    std::vector<int32_t> tokens(all.begin(), all.begin() + 20), targets(20, -100), pos(20);
    for (int i = 0; i < 20; i++) pos[size_t(i)] = i;
    targets[19] = 7;
    std::vector<float> lg(static_cast<size_t>(V));
    m.reset_cache(20);
    m.decode(tokens.data(), 20, lg.data());
    double mx = -1e30, s = 0;
    for (float x : lg) mx = std::max(mx, double(x));
    for (float x : lg) s += std::exp(double(x) - mx);
    double want = mx + std::log(s) - lg[7];
    double got = m.forward_loss(Batch{tokens.data(), targets.data(), pos.data(), 1, 20});
    MT_CHECK(std::fabs(got - want) < 1e-4, "training forward loss %g vs decode logits %g", got, want);
  }
  // an unmerged adapter equals the merged weights W + scale·B·A (decode path with LoRA)
  {
    LoraSpec spec;
    spec.r = 4;
    spec.alpha = 8;
    spec.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    LoraAdapter ad = LoraAdapter::init(w.config, spec, 3);
    mt::Rng rng(4);
    for (LoraPair& p : ad.pairs)
      for (float& x : p.B) x = float(rng.normal() * 0.05);
    Transformer with(*be, w, &spec, opt);
    with.set_lora(ad);
    ModelWeights merged = w;
    const double scale = spec.scale();
    for (const LoraPair& p : ad.pairs) {
      LayerWeights& L = merged.layers[size_t(p.layer)];
      std::vector<float>* W = p.target == "q_proj" ? &L.wq : p.target == "k_proj" ? &L.wk : p.target == "v_proj" ? &L.wv
                            : p.target == "o_proj" ? &L.wo : p.target == "gate_proj" ? &L.w_gate
                            : p.target == "up_proj" ? &L.w_up : &L.w_down;
      for (int o = 0; o < p.out; o++)
        for (int i = 0; i < p.in; i++) {
          double s = 0;
          for (int k = 0; k < spec.r; k++) s += double(p.B[size_t(o) * spec.r + k]) * p.A[size_t(k) * p.in + i];
          (*W)[size_t(o) * p.in + i] += float(scale * s);
        }
    }
    Transformer mm(*be, merged, nullptr, opt);
    std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
    with.reset_cache(8);
    mm.reset_cache(8);
    with.decode(kPrompt, 5, a.data());
    mm.decode(kPrompt, 5, b.data());
    std::vector<float> base(static_cast<size_t>(V));
    m.reset_cache(8);
    m.decode(kPrompt, 5, base.data());
    double worst = 0, moved = 0;
    for (int v = 0; v < V; v++) worst = std::max(worst, double(std::fabs(a[size_t(v)] - b[size_t(v)])));
    for (int v = 0; v < V; v++) moved = std::max(moved, double(std::fabs(a[size_t(v)] - base[size_t(v)])));
    MT_CHECK(worst < 1e-4, "adapter applied unmerged differs from merged weights by %g", worst);
    MT_CHECK(moved > 1e-2, "the adapter did not change the logits (max change %g)", moved);
  }
  // the command: greedy = golden; sampling is reproducible per seed, and top_k = 1 is greedy
  {
    const std::string abs = std::filesystem::absolute(dir).lexically_normal().string();
    std::vector<int> greedy = run_generate(abs, 0.0, 0, 1.0, 0);
    MT_CHECK(greedy.size() == 12 && std::equal(greedy.begin(), greedy.end(), kGolden), "generate command greedy != golden");
    std::vector<int> s1 = run_generate(abs, 1.5, 0, 1.0, 7), s2 = run_generate(abs, 1.5, 0, 1.0, 7),
                     s3 = run_generate(abs, 1.5, 0, 1.0, 8), k1 = run_generate(abs, 0.8, 1, 1.0, 9);
    MT_CHECK(s1.size() == 12 && s1 == s2, "sampling with the same seed is not reproducible");
    MT_CHECK(s1 != s3, "seeds 7 and 8 sampled the same 12 tokens");
    MT_CHECK(k1 == greedy, "top_k = 1 sampling differs from greedy");
    MT_CHECK(run_generate(abs, 1.0, 0, 1e-3, 3) == greedy, "top_p → 0 (nucleus of one token) differs from greedy");
  }
  return mt::finish("test_generate");
}
