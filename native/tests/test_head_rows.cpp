// test_head_rows.cpp — the LM head over the rows that have a target only (Transformer::head_loss): the cross-entropy
// runs on the M rows whose target is not -100, gathered into compact rows, and d(xf) is scattered back with zero rows
// for the others. Against the same model with TransformerOptions::head_all_rows (the head over all N rows), on the
// fp32 CPU backend:
//   1. loss and every gradient are bit-identical (same per-row arithmetic; the sums only skip exact zeros), for batches
//      with prompt tokens, padding and a whole row without targets, for a tied (llama) and an untied (qwen2) head,
//      folded and unfolded LoRA (dropout), gradient checkpointing, trainable token rows; eval losses too, including
//      an eval-only model (its own compact buffer);
//   2. with several row blocks of logits the trainable lm_head rows' gradients sum the same products in other
//      groups (row blocks of compact rows): equal within fp32 rounding, everything else still bit-identical;
//   3. a batch without any target: loss 0, every gradient exactly 0, and no head GEMM; a batch where every row has a
//      target runs without gather or scatter;
//   4. the head's GEMMs really run over M rows (a counting backend wraps the CPU backend), or over M with the last
//      row block padded up to TransformerOptions::head_row_granule (zero rows without a target: same results).
#include <algorithm>
#include <cmath>
#include <cstdio>
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

// The CPU backend, recording the head's work: gather_rows calls (rows each) and the largest row
// count of a logits GEMM (trans_b, N = a vocabulary chunk, K = hidden size, B = the head).
class HeadCounter : public ForwardingBackend {
 public:
  HeadCounter(Backend& inner, int vocab_chunk, int hidden) : ForwardingBackend(inner), vc_(vocab_chunk), C_(hidden) {}
  std::vector<int> gathers;   // n of each gather_rows call
  int logits_gemms = 0, max_logits_rows = 0;
  void reset() { gathers.clear(), logits_gemms = 0, max_logits_rows = 0; }

  void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K, bool ta,
                 bool tb, float alpha, float beta, int lda, int ldb, int ldd) override {
    if (!ta && tb && K == C_ && N <= vc_ && b.ptr >= head_lo_ && b.ptr < head_hi_) {
      logits_gemms++;
      max_logits_rows = std::max(max_logits_rows, M);
    }
    b_.matmul_ex(d, c, a, b, M, N, K, ta, tb, alpha, beta, lda, ldb, ldd);
  }
  void gather_rows(const Tensor& out, const Tensor& src, const Tensor& rows, int n, int C) override {
    gathers.push_back(n);
    b_.gather_rows(out, src, rows, n, C);
  }
  // The head weight: the (V, C) table the logits GEMMs read (its address range, found from weight_tensors()).
  void set_head(const Tensor& head) {
    head_lo_ = head.ptr;
    head_hi_ = static_cast<const char*>(head.ptr) + head.n * dtype_size(head.dtype);
  }

 private:
  int vc_, C_;
  const void* head_lo_ = nullptr;
  const void* head_hi_ = nullptr;
};

// Three rows of T = 8 (N = 24, M = 7): row 0 a prompt (3 tokens without targets), a response and padding; row 1
// nothing but prompt (no target at all); row 2 two packed documents, each a prompt then a response.
Rows mixed_rows() {
  Rows r;
  r.B = 3, r.T = 8;
  r.tokens = {1, 6, 3, 9, 2, 12, 0, 0, /**/ 1, 4, 8, 8, 5, 7, 10, 2, /**/ 1, 3, 11, 4, 1, 9, 6, 5};
  r.targets = {-100, -100, 9, 2, 12, -100, -100, -100, /**/ -100, -100, -100, -100, -100, -100, -100, -100,
               /**/ -100, 11, 4, -100, -100, -100, 5, 3};
  r.positions = {0, 1, 2, 3, 4, 5, 0, 0, /**/ 0, 1, 2, 3, 4, 5, 6, 7, /**/ 0, 1, 2, 3, 0, 1, 2, 3};
  return r;
}
Rows none_rows() {   // every target -100: M = 0
  Rows r = mixed_rows();
  for (int32_t& t : r.targets) t = -100;
  return r;
}
Rows all_rows() {    // every row has a target: M = N
  Rows r = mixed_rows();
  for (size_t i = 0; i < r.targets.size(); i++) r.targets[i] = int32_t((r.tokens[i] * 5 + int(i)) % 13);
  return r;
}

struct Variant {
  const char* name;
  double dropout;          // > 0: the unfolded LoRA path
  bool ckpt;               // gradient checkpointing
  int vocab_chunk;         // TransformerOptions::ce_vocab_chunk
  int64_t max_logits;      // TransformerOptions::ce_max_logits
  bool tokens;             // trainable token rows (LoraSpec::token_indices)
  int granule = 1;         // TransformerOptions::head_row_granule
};

struct Result {
  std::vector<double> loss, eval;           // per batch of the sequence
  std::vector<std::vector<double>> grads;   // per batch
};

// One model, the batches mixed, none, all, mixed in a row (buffers reused across batches): forward_backward with
// zeroed gradients, then forward_loss, each; the counter checks the head's work per batch.
Result run_sequence(const std::string& family, const Variant& v, bool all_rows_head) {
  auto cpu = make_cpu_backend(2);
  ModelConfig cfg = tiny_config(family);
  HeadCounter be(*cpu, v.vocab_chunk, cfg.hidden_size);
  ModelWeights w = random_weights(cfg, 21);
  LoraSpec spec;
  spec.r = 2;
  spec.alpha = 3;
  spec.dropout = v.dropout;
  spec.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  if (v.tokens) spec.token_indices = {2, 3, 9};   // targets 9, 2 in the mixed batch; 3 only as a target of row 2
  TransformerOptions opt;
  opt.gradient_checkpointing = v.ckpt;
  opt.ce_vocab_chunk = v.vocab_chunk;
  opt.ce_max_logits = v.max_logits;
  opt.head_all_rows = all_rows_head;
  opt.head_row_granule = v.granule;
  Result res;
  {
    Transformer m(be, w, &spec, opt);
    for (const auto& [name, t] : m.weight_tensors())
      if (name == (cfg.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight")) be.set_head(t);
    mt::Rng rng(5);
    auto p = rng.normals(m.num_lora_params(), 0.3);
    cpu->upload(m.lora_params(), p.data(), p.size());
    const Rows batches[4] = {mixed_rows(), none_rows(), all_rows(), mixed_rows()};
    for (int i = 0; i < 4; i++) {
      const Rows& r = batches[i];
      const int N = r.B * r.T, M = r.with_target();
      m.zero_grads();
      be.reset();
      res.loss.push_back(m.forward_backward(r.batch(), 1.0f / float(std::max(M, 1)), 77));
      res.grads.push_back(mt::download(*cpu, m.lora_grads(), m.num_lora_params()));
      // the head's work: gather M + scatter N when compacted (M < N), none otherwise; logits GEMMs over ≤ M rows
      const int want_rows = all_rows_head ? N : M;
      const std::vector<int> want_gathers = all_rows_head || M == N || M == 0 ? std::vector<int>{} : std::vector<int>{M, N};
      MT_CHECK(be.gathers == want_gathers, "%s %s%s batch %d: %zu gather_rows calls, expected %zu", family.c_str(),
               v.name, all_rows_head ? " (all rows)" : "", i, be.gathers.size(), want_gathers.size());
      const int block_rows = int(std::min<int64_t>(N, v.max_logits / std::min(cfg.vocab_size, v.vocab_chunk)));
      // compacted, the last block's rows are padded up to the granule: the GEMMs run over that many
      int run_rows = want_rows;
      if (!all_rows_head && M > 0 && M < N) {
        const int last = M - (M - 1) / block_rows * block_rows;
        run_rows = std::min(N, M - last + std::min(block_rows, (last + v.granule - 1) / v.granule * v.granule));
      }
      MT_CHECK(want_rows == 0 ? be.logits_gemms == 0 : be.max_logits_rows == std::min(run_rows, block_rows),
               "%s %s%s batch %d: head GEMMs over %d rows (%d GEMMs), expected %d rows", family.c_str(), v.name,
               all_rows_head ? " (all rows)" : "", i, be.max_logits_rows, be.logits_gemms, std::min(run_rows, block_rows));
      res.eval.push_back(m.forward_loss(r.batch()));
    }
  }
  MT_CHECK(cpu->bytes_in_use() == 0, "%s: Transformer leaked %zu backend bytes", family.c_str(), cpu->bytes_in_use());
  return res;
}

// An eval-only model (no training buffers: the compact rows get their own buffer) gives the same loss both ways.
void eval_only(const std::string& family) {
  double loss[2];
  for (int all = 0; all < 2; all++) {
    auto be = make_cpu_backend(2);
    ModelConfig cfg = tiny_config(family);
    ModelWeights w = random_weights(cfg, 21);
    TransformerOptions opt;
    opt.head_all_rows = all == 1;
    Transformer m(*be, w, nullptr, opt);
    loss[all] = m.forward_loss(mixed_rows().batch());
    MT_CHECK(m.forward_loss(none_rows().batch()) == 0.0, "%s eval-only: a batch without targets has a loss",
             family.c_str());
  }
  MT_CHECK(loss[0] == loss[1] && loss[0] > 0, "%s eval-only: loss %.17g compacted vs %.17g all rows", family.c_str(),
           loss[0], loss[1]);
}

void compare(const std::string& family, const Variant& v) {
  const Result a = run_sequence(family, v, false), b = run_sequence(family, v, true);
  // Trainable lm_head rows sum their gradient over row blocks of logits: other blocks when compacted (case 2).
  const ModelConfig cfg = tiny_config(family);
  const int V = cfg.vocab_size;
  const bool one_block = v.max_logits / std::min(V, v.vocab_chunk) >= 24;
  const size_t n = a.grads[0].size();
  const size_t tok_head_rows = v.tokens ? size_t(3) * cfg.hidden_size : 0;   // the last rows (tied: the embedding's)
  size_t rounded = 0;   // token lm_head gradients within rounding (case 2)
  for (size_t i = 0; i < a.loss.size(); i++) {
    MT_CHECK(a.loss[i] == b.loss[i], "%s %s batch %zu: loss %.17g compacted vs %.17g all rows", family.c_str(), v.name, i,
             a.loss[i], b.loss[i]);
    MT_CHECK(a.eval[i] == b.eval[i], "%s %s batch %zu: eval loss %.17g vs %.17g", family.c_str(), v.name, i, a.eval[i],
             b.eval[i]);
    size_t differ = 0, worst_at = 0;
    double worst = 0;
    for (size_t j = 0; j < n; j++) {
      if (a.grads[i][j] == b.grads[i][j]) continue;
      const bool token_row = j >= n - tok_head_rows;
      const double rel = std::fabs(a.grads[i][j] - b.grads[i][j]) / std::max(1e-6, std::fabs(b.grads[i][j]));
      if (one_block || !token_row || rel > 1e-5) differ++;
      else rounded++;
      if (rel > worst) worst = rel, worst_at = j;
    }
    MT_CHECK(differ == 0, "%s %s batch %zu: %zu of %zu gradients differ (worst rel %.3g at %zu)", family.c_str(), v.name,
             i, differ, n, worst, worst_at);
    size_t nonzero = 0;
    for (double g : a.grads[i]) nonzero += g != 0.0;
    if (i == 1)   // no target anywhere: nothing to learn
      MT_CHECK(nonzero == 0 && a.loss[i] == 0.0, "%s %s: a batch without targets gave loss %g, %zu non-zero gradients",
               family.c_str(), v.name, a.loss[i], nonzero);
    else
      MT_CHECK(nonzero > n / 2, "%s %s batch %zu: only %zu of %zu gradients non-zero", family.c_str(), v.name, i, nonzero, n);
  }
  std::fprintf(stderr, "  %s %-38s losses %.6f (mixed) %.6f (all rows), %zu gradients bit-identical, %zu within fp32 "
               "rounding\n", family.c_str(), v.name, a.loss[0], a.loss[2], 4 * n - rounded, rounded);
}

}  // namespace

int main() {
  const Variant variants[] = {
      {"folded, one logits block", 0.0, false, 1 << 18, int64_t(1) << 25, true},
      {"folded, 3 vocab chunks x 4-row blocks", 0.0, false, 5, 5 * 4, true},
      {"dropout (unfolded), one block", 0.1, false, 1 << 18, int64_t(1) << 25, true},
      {"checkpointing, 5-row blocks", 0.0, true, 1 << 18, 13 * 5, false},
      {"checkpointing + dropout, 3 chunks", 0.1, true, 5, 5 * 24, true},
      // the compact head's last block padded with target-less zero rows: 7 targets → 8 rows, and 4 + 3 → 4 + 4
      {"folded, one block padded to 4s", 0.0, false, 1 << 18, int64_t(1) << 25, true, 4},
      {"dropout, 4-row blocks padded to 2s", 0.1, false, 5, 5 * 4, true, 2},
  };
  for (const char* family : {"llama", "qwen2"}) {
    for (const Variant& v : variants) compare(family, v);
    eval_only(family);
  }
  return mt::finish("test_head_rows");
}
