// test_keep_mlp_input.cpp — TransformerOptions::keep_mlp_input: without checkpointing each layer keeps its own MLP
// input h (the down group's input, with down's folded xa in its tail columns) instead of sharing one h that backward
// refills with a GLU forward and down's x·Aᵀ. On the fp32 CPU backend, for a tiny model of each family
// (llama, qwen2, gemma), folded LoRA, unfolded LoRA (fold_lora off) and LoRA dropout (unfolded, per-projection
// masks), rows of one document each and rows of packed documents, three AdamW steps:
//   1. loss, every gradient of every step and the eval loss afterwards are bit-identical with the option on, off
//      (lean sets) and with every group input kept (keep_group_inputs): the same kernels on the same inputs;
//   2. the same holds when the LoRA weight gradients (the model's side work, Backend::side_begin) run as late as
//      the backend contract allows — at the next side_join() — so a main-path write into a buffer the side work
//      still reads (a missing join, e.g. around the shared or the kept h) changes a gradient;
//   3. the option costs exactly (L − 1) h buffers of N × input_ld(down) (the shared one goes), keeping every
//      input costs more, and with gradient checkpointing the option changes nothing (not even the bytes);
//   4. nothing leaks (the sets that own h and those that share xn1/xn2 are freed once each), and eval and
//      generation still run on the same model.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>
#include "forwarding_backend.h"
#include "math_test_util.h"
#include "tiny_models.h"
#include "model/transformer.h"
#include "util/json.h"

using namespace nxft;

namespace {

// The CPU backend, except that the GEMMs issued between side_begin() and side_end() (the LoRA
// weight gradients) are queued and run only at the next side_join(): the latest a stream backend may run them.
// Running them at once, as the CPU backend does, would hide a main-path overwrite of something they read.
class DeferredSide : public ForwardingBackend {
 public:
  explicit DeferredSide(Backend& inner) : ForwardingBackend(inner) {}
  ~DeferredSide() override {
    if (!queued_.empty()) std::fprintf(stderr, "DeferredSide: %zu side GEMMs never joined\n", queued_.size());
  }
  size_t deferred = 0;   // side GEMMs that ran at a join

  void side_begin() override { in_side_ = true; }
  void side_end() override { in_side_ = false; }
  void side_join() override {
    for (auto& op : queued_) op();
    deferred += queued_.size();
    queued_.clear();
  }
  void synchronize() override {
    MT_CHECK(queued_.empty(), "synchronize() with %zu side GEMMs not joined", queued_.size());
    b_.synchronize();
  }
  void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K, bool ta,
                 bool tb, float alpha, float beta, int lda, int ldb, int ldd) override {
    if (in_side_)   // Tensors are views (pointer + count): the queued GEMM reads whatever the buffers hold then
      queued_.push_back([=] { b_.matmul_ex(d, c, a, b, M, N, K, ta, tb, alpha, beta, lda, ldb, ldd); });
    else
      b_.matmul_ex(d, c, a, b, M, N, K, ta, tb, alpha, beta, lda, ldb, ldd);
  }
 private:
  bool in_side_ = false;
  std::deque<std::function<void()>> queued_;
};

// Two rows of T = 7, one document each (row 1 ends in padding without targets).
Rows single_rows() {
  Rows r;
  r.B = 2, r.T = 7;
  r.tokens = {1, 5, 9, 2, 6, 7, 3, /**/ 1, 4, 4, 11, 12, 0, 0};
  r.targets = {5, 9, 2, 6, 7, 3, 8, /**/ 4, 4, 11, 12, -100, -100, -100};
  r.positions = {0, 1, 2, 3, 4, 5, 6, /**/ 0, 1, 2, 3, 4, 5, 6};
  return r;
}

// Three rows of T = 6 packing several documents (attention and the per-document positions restart at each 0).
Rows packed_rows() {
  Rows r;
  r.B = 3, r.T = 6;
  r.tokens = {1, 5, 9, 1, 7, 3, /**/ 1, 4, 1, 11, 12, 2, /**/ 1, 8, 10, 6, 1, 9};
  r.targets = {5, 9, -100, 7, 3, 8, /**/ 4, -100, 11, 12, 2, 5, /**/ 8, 10, 6, -100, 9, 12};
  r.positions = {0, 1, 2, 0, 1, 2, /**/ 0, 1, 0, 1, 2, 3, /**/ 0, 1, 2, 3, 0, 1};
  return r;
}

struct Path {
  const char* name;
  double dropout;   // > 0: unfolded, each projection's own dropout mask
  bool fold;        // TransformerOptions::fold_lora
  bool ckpt;        // gradient checkpointing: keep_mlp_input has nothing to keep
};

enum Mode { kLean = 0, kKeepH = 1, kKeepAll = 2 };
const char* const kModeName[] = {"lean", "keep_mlp_input", "keep_group_inputs"};

struct Run {
  std::vector<double> loss;
  std::vector<std::vector<double>> grads;
  double eval = 0;
  size_t held = 0;       // backend bytes while the model lives (after training)
  size_t deferred = 0;   // side GEMMs that ran at a join (DeferredSide)
};

constexpr int kLayers = 3, kSteps = 3;

Run train(const std::string& family, const Path& p, const Rows& rows, Mode mode, bool deferred) {
  auto cpu = make_cpu_backend(2);
  DeferredSide side(*cpu);
  Backend& be = deferred ? static_cast<Backend&>(side) : *cpu;
  ModelConfig cfg = tiny_config(family);
  cfg.num_layers = kLayers;   // > 2: a shared h would be reused by more than one other layer
  ModelWeights w = random_weights(cfg, 13);
  LoraSpec spec = all_targets(p.dropout);
  TransformerOptions opt;
  opt.gradient_checkpointing = p.ckpt;
  opt.fold_lora = p.fold;
  opt.keep_mlp_input = mode == kKeepH;
  opt.keep_group_inputs = mode == kKeepAll;
  Run run;
  {
    Transformer m(be, w, &spec, opt);
    mt::Rng rng(5);
    const auto init = rng.normals(m.num_lora_params(), 0.3);   // B ≠ 0: every gradient path carries signal
    be.upload(m.lora_params(), init.data(), init.size());
    const size_t n = m.num_lora_params();
    Tensor adam_m = be.alloc(n, Role::Param), adam_v = be.alloc(n, Role::Param);
    be.fill(adam_m, 0.0f, n);
    be.fill(adam_v, 0.0f, n);
    for (int s = 0; s < kSteps; s++) {
      m.zero_grads();
      run.loss.push_back(m.forward_backward(rows.batch(), 1.0f / float(rows.with_target()), 77 + uint64_t(s)));
      run.grads.push_back(mt::download(be, m.lora_grads(), n));
      be.adamw_step(m.lora_params(), m.lora_grads(), adam_m, adam_v, n, 1e-2, 0.9, 0.999, 1e-8, 0.0, s + 1, 1.0f);
    }
    run.held = be.bytes_in_use();
    run.eval = m.forward_loss(rows.batch());
    m.reset_cache(4);   // generation on the same model (its buffers beside the training sets)
    std::vector<float> logits(static_cast<size_t>(cfg.vocab_size));
    m.decode(rows.tokens.data(), 3, logits.data());
    MT_CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }),
             "%s %s %s: decode gave non-finite logits", family.c_str(), p.name, kModeName[mode]);
    be.free(adam_m);
    be.free(adam_v);
  }
  run.deferred = side.deferred;
  MT_CHECK(cpu->bytes_in_use() == 0, "%s %s %s: Transformer leaked %zu backend bytes", family.c_str(), p.name,
           kModeName[mode], cpu->bytes_in_use());
  return run;
}

void compare(const std::string& family, const Path& p, const char* rows_name, const Rows& rows) {
  const Run ref = train(family, p, rows, kLean, false);
  // the reference must be worth matching: gradients mostly non-zero, and training moves the loss
  size_t nonzero = 0;
  for (double g : ref.grads[0]) nonzero += g != 0.0;
  MT_CHECK(nonzero > ref.grads[0].size() / 2, "%s %s %s: only %zu of %zu gradients non-zero", family.c_str(), p.name,
           rows_name, nonzero, ref.grads[0].size());
  MT_CHECK(ref.loss[kSteps - 1] != ref.loss[0], "%s %s %s: the loss did not move over %d steps", family.c_str(), p.name,
           rows_name, kSteps);
  Run by_mode[3];
  for (int deferred = 0; deferred < 2; deferred++)
    for (Mode mode : {kLean, kKeepH, kKeepAll}) {
      if (mode == kLean && !deferred) {
        by_mode[mode] = ref;
        continue;
      }
      const Run r = train(family, p, rows, mode, deferred == 1);
      const char* how = deferred ? ", side work at the join" : "";
      for (int s = 0; s < kSteps; s++) {
        MT_CHECK(r.loss[size_t(s)] == ref.loss[size_t(s)], "%s %s %s, %s%s step %d: loss %.17g vs %.17g lean",
                 family.c_str(), p.name, rows_name, kModeName[mode], how, s + 1, r.loss[size_t(s)], ref.loss[size_t(s)]);
        size_t differ = 0, first = 0;
        for (size_t i = 0; i < r.grads[size_t(s)].size(); i++)
          if (r.grads[size_t(s)][i] != ref.grads[size_t(s)][i] && differ++ == 0) first = i;
        MT_CHECK(differ == 0, "%s %s %s, %s%s step %d: %zu of %zu gradients differ (first at %zu: %.9g vs %.9g)",
                 family.c_str(), p.name, rows_name, kModeName[mode], how, s + 1, differ, r.grads[size_t(s)].size(),
                 first, r.grads[size_t(s)][first], ref.grads[size_t(s)][first]);
      }
      MT_CHECK(r.eval == ref.eval, "%s %s %s, %s%s: eval loss %.17g vs %.17g", family.c_str(), p.name, rows_name,
               kModeName[mode], how, r.eval, ref.eval);
      if (deferred) MT_CHECK(r.deferred > 0, "%s %s: no side work was deferred", family.c_str(), p.name);
      if (!deferred) by_mode[mode] = r;
    }
  // Memory: L own h buffers instead of one shared, each N × input_ld(down) (F, plus r columns of down's xa when
  // folded) activations rounded up by the CPU allocator (64 bytes).
  const ModelConfig cfg = tiny_config(family);
  const bool folded = p.fold && p.dropout == 0;
  const size_t h_raw = size_t(rows.B) * rows.T * (cfg.intermediate_size + (folded ? 2 : 0)) * sizeof(float);
  const size_t lean = by_mode[kLean].held, keep_h = by_mode[kKeepH].held, keep_all = by_mode[kKeepAll].held;
  if (p.ckpt) {
    MT_CHECK(keep_h == lean && keep_all == lean, "%s %s %s: with checkpointing the options changed the bytes (%zu, "
             "%zu vs %zu)", family.c_str(), p.name, rows_name, keep_h, keep_all, lean);
  } else {
    const size_t extra = keep_h - lean, per_h = extra / (kLayers - 1);
    MT_CHECK(keep_h > lean && extra % (kLayers - 1) == 0 && per_h >= h_raw && per_h < h_raw + 64,
             "%s %s %s: keep_mlp_input holds %zu bytes more than lean, expected %d h buffers of %zu (+ rounding)",
             family.c_str(), p.name, rows_name, extra, kLayers - 1, h_raw);
    MT_CHECK(keep_all > keep_h, "%s %s %s: keeping every group input holds no more than h alone (%zu vs %zu)",
             family.c_str(), p.name, rows_name, keep_all, keep_h);
  }
  std::fprintf(stderr, "  %-6s %-28s %-6s losses %.6f → %.6f, %zu gradients × %d steps bit-identical in 5 runs; "
               "bytes lean %zu, keep h %zu, keep all %zu\n", family.c_str(), p.name, rows_name, ref.loss[0],
               ref.loss[kSteps - 1], ref.grads[0].size(), kSteps, lean, keep_h, keep_all);
}

}  // namespace

int main() {
  const Path paths[] = {
      {"folded", 0.0, true, false},
      {"unfolded (fold_lora off)", 0.0, false, false},
      {"dropout 0.1 (unfolded)", 0.1, true, false},
      {"checkpointing (no effect)", 0.0, true, true},
  };
  for (const char* family : {"llama", "qwen2", "gemma"})
    for (const Path& p : paths) {
      compare(family, p, "single", single_rows());
      compare(family, p, "packed", packed_rows());
    }
  return mt::finish("test_keep_mlp_input");
}
