// test_gradcheck.cpp — whole-model checks of src/model/transformer.cpp in double precision (make_cpu_backend_f64):
//   1. LoRA gradients vs central finite differences of the loss, for a tiny model of each family:
//      llama (GQA, tied head), qwen2 (q/k/v bias, untied head), gemma (embed·√C, RMSNorm (1+w), GeGLU tanh,
//      head_dim from config), with multi-chunk cross-entropy, with and without LoRA dropout.
//   2. Gradient checkpointing gives bit-identical gradients.
//   3. Packed documents: one row holding two documents gives the same loss and gradients as the documents alone.
//   4. Trainable token rows (LoraSpec::token_indices): their embedding and lm_head rows' gradients vs finite
//      differences, tied (llama, the head's and the embedding's gradients meet in one row) and untied (qwen2), with
//      gemma's embedding scale, across vocabulary chunks.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include "math_test_util.h"
#include "tiny_models.h"
#include "model/transformer.h"
#include "util/json.h"

using namespace nxft;

namespace {

void randomize_lora(Backend& be, Transformer& m, uint64_t seed) {
  mt::Rng rng(seed);
  auto p = rng.normals(m.num_lora_params(), 0.3);
  be.upload(m.lora_params(), p.data(), p.size());
}

// Two rows of T=7: row 0 packs two documents (4 + 3 tokens), row 1 is one document ending in padding.
Rows sample_rows(int V) {
  Rows r;
  r.B = 2;
  r.T = 7;
  r.tokens = {1, 5, 9, 2, 1, 7, 3, /**/ 1, 4, 4, 11, 12, 0, 0};
  r.targets = {5, 9, 2, -100, 7, 3, 8, /**/ -100, 4, 11, 12, -100, -100, -100};
  r.positions = {0, 1, 2, 3, 0, 1, 2, /**/ 0, 1, 2, 3, 4, 0, 1};
  for (int32_t& t : r.targets)
    if (t >= V) t = V - 1;
  return r;
}

// targets: empty = all seven. A subset leaves holes in the input groups (q|k|v, gate|up) whose LoRA products
// the model computes as one GEMM per group.
// fold: TransformerOptions::fold_lora (applies only without dropout and NF4).
// mlp_chunk: TransformerOptions::mlp_chunk_tokens (with ckpt and no dropout, chunks of that many of the 14 tokens).
void gradcheck_family(const std::string& family, double dropout, bool ckpt, bool nf4 = false,
                      const std::vector<std::string>& targets = {}, bool fold = true, int mlp_chunk = 0,
                      const std::vector<int>& tokens = {}) {
  auto be = make_cpu_backend_f64(2);
  ModelConfig cfg = tiny_config(family);
  ModelWeights w = random_weights(cfg, 7);
  LoraSpec spec = all_targets(dropout);
  if (!targets.empty()) spec.targets = targets;
  spec.token_indices = tokens;
  TransformerOptions opt;
  opt.gradient_checkpointing = ckpt;
  opt.quantize_nf4 = nf4;       // QLoRA: frozen linear weights stored as NF4, dequantized inside matmul
  opt.fold_lora = fold;
  opt.mlp_chunk_tokens = mlp_chunk;
  opt.ce_vocab_chunk = 5;      // 13 = 5 + 5 + 3: exercises the multi-chunk path
  opt.ce_max_logits = 5 * 6;   // 6 rows per chunk: exercises row chunking (N = 14)
  Transformer m(*be, w, &spec, opt);
  randomize_lora(*be, m, 3);
  Rows rows = sample_rows(cfg.vocab_size);
  const uint64_t seed = 1234;
  m.zero_grads();
  m.forward_backward(rows.batch(), 1.0f, seed);
  const size_t n = m.num_lora_params();
  auto grads = mt::download(*be, m.lora_grads(), n);
  auto params = mt::download(*be, m.lora_params(), n);
  // loss as a function of parameter i (forward_backward with the same seed = the same dropout masks)
  auto loss_at = [&](size_t i, double value) {
    be->upload(m.lora_params(), &value, 1, i);
    double l = m.forward_backward(rows.batch(), 1.0f, seed);
    be->upload(m.lora_params(), &params[i], 1, i);
    return l;
  };
  const double h = 1e-5;
  double worst = 0;
  size_t worst_i = 0, nonzero = 0;
  for (size_t i = 0; i < n; i++) {
    double num = (loss_at(i, params[i] + h) - loss_at(i, params[i] - h)) / (2 * h);
    double err = std::fabs(num - grads[i]) / std::max(1.0, std::fabs(num));
    if (std::fabs(grads[i]) > 1e-6) nonzero++;
    if (err > worst) worst = err, worst_i = i;
    if (getenv("GC_DEBUG") && err > 1e-6) std::fprintf(stderr, "    param %zu num %.9g analytic %.9g\n", i, num, grads[i]);
  }
  MT_CHECK(worst < 1e-6, "%s (dropout %.1f, ckpt %d, nf4 %d): LoRA gradient vs finite differences: err %.3g at param %zu",
           family.c_str(), dropout, int(ckpt), int(nf4), worst, worst_i);
  MT_CHECK(nonzero > n / 2, "%s: only %zu of %zu gradients are non-zero", family.c_str(), nonzero, n);
  if (!tokens.empty()) {   // the token rows are the last params: each must have a gradient, except the embedding
    // row of the last token (12 ends its document without a target, so its input is never used) when the head is
    // untied: that row's gradient is exactly zero
    const size_t C = size_t(cfg.hidden_size), rows = tokens.size() * C * (cfg.tie_word_embeddings ? 1 : 2);
    size_t tok_nonzero = 0;
    for (size_t i = n - rows; i < n; i++) tok_nonzero += std::fabs(grads[i]) > 1e-9;
    const size_t want = cfg.tie_word_embeddings ? rows : rows - C;
    MT_CHECK(tok_nonzero == want, "%s: %zu of %zu trainable token row gradients are non-zero, expected %zu", family.c_str(),
             tok_nonzero, rows, want);
  }
  std::fprintf(stderr, "  %s dropout=%.1f ckpt=%d nf4=%d targets=%zu fold=%d tokens=%zu: %zu params, max FD err %.2g\n",
               family.c_str(), dropout, int(ckpt), int(nf4), spec.targets.size(), int(fold), tokens.size(), n, worst);
}

std::vector<double> grads_of(Backend& be, Transformer& m, const Rows& r, double* loss) {
  m.zero_grads();
  *loss = m.forward_backward(r.batch(), 1.0f, 77);
  return mt::download(be, m.lora_grads(), m.num_lora_params());
}

// Gradient checkpointing (its recompute skips the down GEMM), checkpointing with the layer inputs offloaded
// to host memory (two device slots) and keeping every layer's group inputs (keep_group_inputs, instead of the
// default lean sets that backward refills) give bit-identical losses and gradients, with and without LoRA dropout
// (the unfolded and the folded paths); offloading holds fewer backend bytes, and lean sets fewer than kept inputs.
// The MLP in token chunks (mlp_chunk_tokens 4 of 14 tokens: 4 + 4 + 4 + 2, with and without offload) gives the
// same loss and gradients up to the order of the LoRA weight gradients' sums over tokens, and holds fewer bytes;
// with dropout it is off.
void checkpointing_identical(const std::string& family, bool nf4 = false) {
  ModelConfig cfg = tiny_config(family);
  cfg.num_layers = 5;   // odd, and deep enough that both offload slots are reused
  ModelWeights w = random_weights(cfg, 11);
  Rows rows = sample_rows(cfg.vocab_size);
  for (double dropout : {0.1, 0.0}) {
    LoraSpec spec = all_targets(dropout);
    std::vector<double> g[6];
    double loss[6], eval[6];
    size_t held[6];
    // 0 plain (lean sets), 1 checkpointing, 2 checkpointing + offload, 3 checkpointing + MLP chunks, 4 … + offload,
    // 5 plain with every layer's group inputs kept
    for (int v = 0; v < 6; v++) {
      auto be = make_cpu_backend(2);
      {
        TransformerOptions opt;
        opt.gradient_checkpointing = v >= 1 && v <= 4;
        opt.offload_checkpoints = v == 2 || v == 4;
        opt.mlp_chunk_tokens = v == 3 || v == 4 ? 4 : 0;
        opt.keep_group_inputs = v == 5;
        opt.quantize_nf4 = opt.double_quant = nf4;   // QLoRA: checkpoint offload and MLP chunks with NF4 weights
        Transformer m(*be, w, &spec, opt);
        randomize_lora(*be, m, 5);
        g[v] = grads_of(*be, m, rows, &loss[v]);
        g[v] = grads_of(*be, m, rows, &loss[v]);   // a second step reuses the buffers
        held[v] = be->bytes_in_use();
        eval[v] = m.forward_loss(rows.batch());
        m.reset_cache(4);   // generation buffers too
        std::vector<float> lg(static_cast<size_t>(cfg.vocab_size));
        m.decode(rows.tokens.data(), 3, lg.data());
      }
      MT_CHECK(be->bytes_in_use() == 0, "%s: Transformer leaked %zu backend bytes", family.c_str(), be->bytes_in_use());
    }
    for (int v : {1, 2, 5})
      MT_CHECK(loss[v] == loss[0] && g[v] == g[0] && eval[v] == eval[0],
               "%s (dropout %.1f): %s changed the loss or gradients", family.c_str(), dropout,
               v == 1 ? "gradient checkpointing" : v == 2 ? "offloading the checkpoints" : "keeping the group inputs");
    MT_CHECK(held[2] < held[1], "%s: offloading did not lower the backend bytes (%zu vs %zu)", family.c_str(), held[2],
             held[1]);
    MT_CHECK(held[0] < held[5], "%s: lean activation sets did not lower the backend bytes (%zu vs %zu)", family.c_str(),
             held[0], held[5]);
    for (int v = 3; v < 5; v++) {
      double worst = 0, scale = 0;
      for (size_t i = 0; i < g[0].size(); i++) {
        worst = std::max(worst, std::fabs(g[v][i] - g[0][i]));
        scale = std::max(scale, std::fabs(g[0][i]));
      }
      const bool same = dropout > 0 ? loss[v] == loss[0] && g[v] == g[0] && eval[v] == eval[0]
                                    : std::fabs(loss[v] - loss[0]) <= 1e-6 * std::fabs(loss[0]) && worst <= 1e-5 * scale &&
                                          std::fabs(eval[v] - eval[0]) <= 1e-6 * std::fabs(eval[0]);
      MT_CHECK(same, "%s (dropout %.1f): MLP chunks%s changed the loss (%.9g vs %.9g) or gradients (max diff %.3g of %.3g)",
               family.c_str(), dropout, v == 4 ? " + offload" : "", loss[v], loss[0], worst, scale);
      if (dropout == 0)
        MT_CHECK(held[v] < held[v - 2], "%s: MLP chunks did not lower the backend bytes (%zu vs %zu)", family.c_str(),
                 held[v], held[v - 2]);
    }
  }
}

void packed_documents(const std::string& family) {
  auto be = make_cpu_backend_f64(2);
  ModelConfig cfg = tiny_config(family);
  ModelWeights w = random_weights(cfg, 21);
  LoraSpec spec = all_targets(0.0);
  TransformerOptions opt;
  Transformer m(*be, w, &spec, opt);
  randomize_lora(*be, m, 9);
  Rows packed;
  packed.B = 1;
  packed.T = 9;
  packed.tokens = {1, 5, 9, 2, 6, 1, 7, 3, 10};
  packed.targets = {5, 9, 2, 6, -100, 7, 3, 10, 4};
  packed.positions = {0, 1, 2, 3, 4, 0, 1, 2, 3};
  Rows a, b;
  a.B = b.B = 1;
  a.T = 5;
  b.T = 4;
  a.tokens.assign(packed.tokens.begin(), packed.tokens.begin() + 5);
  a.targets.assign(packed.targets.begin(), packed.targets.begin() + 5);
  a.positions.assign(packed.positions.begin(), packed.positions.begin() + 5);
  b.tokens.assign(packed.tokens.begin() + 5, packed.tokens.end());
  b.targets.assign(packed.targets.begin() + 5, packed.targets.end());
  b.positions.assign(packed.positions.begin() + 5, packed.positions.end());
  double lp, la, lb;
  auto gp = grads_of(*be, m, packed, &lp);
  auto ga = grads_of(*be, m, a, &la);
  auto gb = grads_of(*be, m, b, &lb);
  MT_CHECK(std::fabs(lp - (la + lb)) < 1e-12 * std::fabs(lp), "%s: packed loss %.15g != %.15g + %.15g", family.c_str(), lp,
           la, lb);
  double worst = 0;
  for (size_t i = 0; i < gp.size(); i++) worst = std::max(worst, std::fabs(gp[i] - (ga[i] + gb[i])));
  MT_CHECK(worst < 1e-12, "%s: packed gradients differ from the documents alone by %.3g", family.c_str(), worst);
  // and a mask that leaked across documents would be visible: doc b shifted into the first doc's context differs
  Rows leaked = packed;
  leaked.positions = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  double ll;
  grads_of(*be, m, leaked, &ll);
  MT_CHECK(std::fabs(ll - lp) > 1e-6, "%s: one-document row gave the same loss as two packed documents", family.c_str());
}

}  // namespace

int main() {
  for (const char* fam : {"llama", "qwen2", "gemma"}) {
    gradcheck_family(fam, 0.0, false);
    packed_documents(fam);
    checkpointing_identical(fam);
  }
  checkpointing_identical("llama", true);
  gradcheck_family("llama", 0.3, false);
  gradcheck_family("gemma", 0.3, true);
  gradcheck_family("qwen2", 0.0, false, true);
  gradcheck_family("llama", 0.0, false, false, {"v_proj", "o_proj", "up_proj"});
  gradcheck_family("qwen2", 0.3, true, false, {"k_proj", "v_proj", "gate_proj", "down_proj"});
  gradcheck_family("qwen2", 0.0, true, false, {}, false);
  gradcheck_family("llama", 0.0, false, false, {"q_proj", "v_proj", "up_proj", "down_proj"}, false);
  // the MLP in token chunks: folded, unfolded with holes in gate|up, NF4 (never folded)
  gradcheck_family("llama", 0.0, true, false, {}, true, 4);
  gradcheck_family("gemma", 0.0, true, false, {"q_proj", "up_proj", "down_proj"}, false, 5);
  gradcheck_family("qwen2", 0.0, true, true, {}, true, 3);
  // trainable tokens 3 (vocabulary chunk 0) and 11, 12 (one run in chunk 2), all inputs and targets of sample_rows
  gradcheck_family("llama", 0.0, false, false, {"q_proj", "v_proj"}, true, 0, {3, 11, 12});
  gradcheck_family("qwen2", 0.0, true, false, {"q_proj", "v_proj"}, true, 0, {3, 11, 12});
  gradcheck_family("gemma", 0.3, false, false, {"v_proj"}, true, 0, {3, 11, 12});
  return mt::finish("test_gradcheck");
}
