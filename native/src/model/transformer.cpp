// transformer.cpp — see transformer.h. One explicit layer loop forward, the same list in reverse backward
// (llm.c style); every op is a Backend call, so the CPU and CUDA backends share this file.
#include "model/transformer.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include "io/safetensors.h"
#include "util/events.h"
#include "util/fs.h"

namespace nxft {

namespace {
enum Target { kQ = 0, kK = 1, kV = 2, kO = 3, kGate = 4, kUp = 5, kDown = 6 };

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

int lora_target_index(const std::string& name) {
  for (int i = 0; i < 7; i++)
    if (name == kLoraTargets[i]) return i;
  return -1;
}

Transformer::Transformer(Backend& be, const ModelWeights& w, const LoraSpec* lora, const TransformerOptions& opt)
    : Transformer(be, w.config, lora, opt) {
  // host fp32 vectors of ModelWeights, in the order of weight_slots()
  std::vector<const std::vector<float>*> src;
  src.push_back(&w.embed);
  if (!tied_) src.push_back(&w.lm_head);
  src.push_back(&w.final_norm);
  for (const LayerWeights& lw : w.layers) {
    for (const std::vector<float>* v : {&lw.attn_norm, &lw.wq, &lw.wk, &lw.wv, &lw.wo}) src.push_back(v);
    if (cfg_.attention_bias)
      for (const std::vector<float>* v : {&lw.bq, &lw.bk, &lw.bv}) src.push_back(v);
    for (const std::vector<float>* v : {&lw.mlp_norm, &lw.w_gate, &lw.w_up, &lw.w_down}) src.push_back(v);
  }
  if (src.size() != slots_w_.size()) throw EngineError("internal: weight list mismatch");
  for (size_t i = 0; i < src.size(); i++) set_weight(i, *src[i]);
}

Transformer::Transformer(Backend& be, const ModelConfig& config, const LoraSpec* lora, const TransformerOptions& opt)
    : be_(be), cfg_(config), opt_(opt) {
  const ModelConfig& c = cfg_;
  const int C = c.hidden_size, F = c.intermediate_size, HD = c.head_dim, V = c.vocab_size;
  const int qd = c.num_heads * HD, kvd = c.num_kv_heads * HD;
  if (c.num_heads % c.num_kv_heads != 0)
    throw EngineError("num_attention_heads must be a multiple of num_key_value_heads", "config.json",
                      "num_key_value_heads");
  tied_ = c.tie_word_embeddings;
  layers_.resize(size_t(c.num_layers));
  // The frozen weights, by HF name (filled by set_weight / load_weights; NF4 applies to the linear ones).
  auto slot = [&](const std::string& name, Tensor* t, int rows, int cols, bool linear) {
    slots_w_.push_back(WeightSlot{name, t, rows, cols, linear && opt_.quantize_nf4});
  };
  slot("model.embed_tokens.weight", &embed_, V, C, false);
  if (!tied_) slot("lm_head.weight", &head_, V, C, false);
  slot("model.norm.weight", &final_norm_, 1, C, false);
  for (int l = 0; l < c.num_layers; l++) {
    LayerW& L = layers_[size_t(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    slot(p + "input_layernorm.weight", &L.attn_norm, 1, C, false);
    slot(p + "self_attn.q_proj.weight", &L.wq, qd, C, true);
    slot(p + "self_attn.k_proj.weight", &L.wk, kvd, C, true);
    slot(p + "self_attn.v_proj.weight", &L.wv, kvd, C, true);
    slot(p + "self_attn.o_proj.weight", &L.wo, C, qd, true);
    if (c.attention_bias) {
      slot(p + "self_attn.q_proj.bias", &L.bq, 1, qd, false);
      slot(p + "self_attn.k_proj.bias", &L.bk, 1, kvd, false);
      slot(p + "self_attn.v_proj.bias", &L.bv, 1, kvd, false);
    }
    slot(p + "post_attention_layernorm.weight", &L.mlp_norm, 1, C, false);
    slot(p + "mlp.gate_proj.weight", &L.wg, F, C, true);
    slot(p + "mlp.up_proj.weight", &L.wu, F, C, true);
    slot(p + "mlp.down_proj.weight", &L.wd, C, F, true);
  }
  // Plain weights are allocated now (so a caller may also fill them on the backend); NF4 ones at set_weight.
  for (WeightSlot& w : slots_w_)
    if (!w.nf4) *w.t = be_.alloc(size_t(w.rows) * w.cols, Role::Weight);
  if (tied_) head_ = embed_;
  // fp32 backends get transformers' float32 inv_freq bit for bit; the f64 gradient-check backend the exact one.
  inv_freq_ = be_.alloc(size_t(HD / 2), Role::Stat);
  if (be_.dtype_of(Role::Stat) == DType::F64) {
    std::vector<double> inv = c.rope_inv_freq();
    be_.upload(inv_freq_, inv.data(), inv.size());
  } else {
    std::vector<float> inv = c.rope_inv_freq_f32();
    be_.upload(inv_freq_, inv.data(), inv.size());
  }

  slot_of_.assign(size_t(c.num_layers), {-1, -1, -1, -1, -1, -1, -1});
  if (lora) {
    has_lora_ = true;
    spec_ = *lora;
    lora_scale_ = float(spec_.scale());
    bool wanted[7] = {false, false, false, false, false, false, false};
    for (const std::string& t : spec_.targets) {
      int i = lora_target_index(t);
      if (i < 0) throw EngineError("unknown LoRA target \"" + t + "\"", "", "lora.targets");
      wanted[i] = true;
    }
    const int r = spec_.r;
    for (int l = 0; l < c.num_layers; l++)
      for (int t = 0; t < 7; t++) {
        if (!wanted[t]) continue;
        LoraSlot s;
        s.layer = l;
        s.target = t;
        s.in = (t == kO) ? qd : (t == kDown ? F : C);
        s.out = (t == kQ) ? qd : (t == kK || t == kV) ? kvd : (t == kGate || t == kUp) ? F : C;
        s.off_a = n_params_;
        n_params_ += size_t(r) * s.in;
        s.off_b = n_params_;
        n_params_ += size_t(s.out) * r;
        slot_of_[size_t(l)][size_t(t)] = int(slots_.size());
        slots_.push_back(s);
      }
    if (n_params_ > 0) {
      params_ = be_.alloc(n_params_, Role::Param);
      grads_ = be_.alloc(n_params_, Role::Param);
      be_.fill(params_, 0.0f, n_params_);
      be_.fill(grads_, 0.0f, n_params_);
    }
  }
}

std::vector<std::pair<std::string, Tensor>> Transformer::weight_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const WeightSlot& w : slots_w_) out.push_back({w.name, *w.t});
  return out;
}

void Transformer::set_weight(size_t i, const std::vector<float>& v) {
  WeightSlot& w = slots_w_[i];
  const size_t n = size_t(w.rows) * w.cols;
  if (v.size() != n)
    throw EngineError("weight " + w.name + " has " + std::to_string(v.size()) + " values, expected " + std::to_string(n));
  if (w.nf4) {
    if (!w.t->empty()) be_.free(*w.t);
    *w.t = be_.upload_nf4(v.data(), w.rows, w.cols);
  } else {
    be_.upload(*w.t, v.data(), n);
  }
}

void Transformer::load_weights(const std::string& dir, const std::function<void(size_t, size_t)>& on_progress) {
  std::unique_ptr<SafetensorsModel> st = SafetensorsModel::open_dir(dir);
  std::vector<float> buf;
  for (size_t i = 0; i < slots_w_.size(); i++) {
    const WeightSlot& w = slots_w_[i];
    const TensorView& tv = st->get(w.name);
    const std::vector<int64_t> want = w.rows == 1 ? std::vector<int64_t>{w.cols} : std::vector<int64_t>{w.rows, w.cols};
    if (tv.shape != want) {
      std::string got;
      for (int64_t d : tv.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
      throw EngineError(dir + ": tensor " + w.name + " has shape [" + got + "], config.json implies [" +
                            std::to_string(want[0]) + (want.size() > 1 ? ", " + std::to_string(want[1]) : "") + "]",
                        path_join(dir, st->shard_of(w.name)), w.name);
    }
    buf.resize(size_t(tv.numel()));
    convert_to_f32(tv.data, tv.dtype, buf.data(), buf.size());
    set_weight(i, buf);
    if (on_progress) on_progress(i + 1, slots_w_.size());
  }
}

void Transformer::release(Tensor& t) {
  if (!t.empty()) be_.free(t);
  t = Tensor();
}

void Transformer::free_layer_acts(LayerActs& a) {
  for (Tensor* t : {&a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.res_mid, &a.rstd2, &a.g, &a.u}) release(*t);
  a.xn1 = a.xn2 = a.h = Tensor();   // shared buffers (xn_, h_), released by ensure_buffers / the destructor
  for (Tensor& t : a.xa) release(t);
}

Transformer::~Transformer() {
  for (LayerActs& a : acts_) free_layer_acts(a);
  for (Tensor& t : res_) release(t);
  for (Tensor* t : {&xn_, &h_, &ids_, &targets_, &positions_, &doc_start_, &xf_, &rstdf_, &dres_, &dxn_, &dq_, &dk_, &dv_, &datt_,
                    &dh_, &dg_, &du_, &dxa_, &scratch_in_, &scratch_dx_, &logits_, &ce_max_, &ce_sum_, &ce_tl_,
                    &ce_loss_, &ce_lse_, &params_, &grads_, &inv_freq_})
    release(*t);
  for (Tensor& t : k_cache_) release(t);
  for (Tensor& t : v_cache_) release(t);
  for (WeightSlot& w : slots_w_) release(*w.t);   // embed_ once even when the head is tied to it
}

// ---- LoRA parameters ----------------------------------------------------------------------------------------

void Transformer::set_lora(const LoraAdapter& adapter) {
  if (!has_lora_) throw EngineError("internal: set_lora on a model built without LoRA");
  for (const LoraSlot& s : slots_) {
    const LoraPair* p = adapter.find(s.layer, kLoraTargets[s.target]);
    const size_t na = size_t(spec_.r) * s.in, nb = size_t(s.out) * spec_.r;
    if (!p || p->A.size() != na || p->B.size() != nb)
      throw EngineError("adapter has no matching pair for layer " + std::to_string(s.layer) + " " +
                        kLoraTargets[s.target] + " (r=" + std::to_string(spec_.r) + ")");
    be_.upload(params_, p->A.data(), na, s.off_a);
    be_.upload(params_, p->B.data(), nb, s.off_b);
  }
}

void Transformer::get_lora(LoraAdapter& adapter) {
  for (const LoraSlot& s : slots_) {
    LoraPair* p = adapter.find(s.layer, kLoraTargets[s.target]);
    if (!p) throw EngineError("internal: adapter is missing a pair in get_lora");
    p->A.resize(size_t(spec_.r) * s.in);
    p->B.resize(size_t(s.out) * spec_.r);
    be_.download(params_, p->A.data(), p->A.size(), s.off_a);
    be_.download(params_, p->B.data(), p->B.size(), s.off_b);
  }
}

void Transformer::zero_grads() {
  if (n_params_) be_.fill(grads_, 0.0f, n_params_);
}

uint64_t Transformer::lora_seed(uint64_t seed, int layer, int target) const {
  return splitmix64(splitmix64(seed) ^ (uint64_t(layer) * 8 + uint64_t(target) + 1));
}

// ---- buffers ------------------------------------------------------------------------------------------------

void Transformer::alloc_layer_acts(LayerActs& a, int N) {
  const ModelConfig& c = cfg_;
  const int C = c.hidden_size, F = c.intermediate_size, qd = c.num_heads * c.head_dim,
            kvd = c.num_kv_heads * c.head_dim;
  a.xn1 = a.xn2 = xn_;   // not kept per layer: recomputed in backward (see layer_backward)
  a.rstd1 = be_.alloc(size_t(N), Role::Stat);
  a.q = be_.alloc(size_t(N) * qd, Role::Activation);
  a.k = be_.alloc(size_t(N) * kvd, Role::Activation);
  a.v = be_.alloc(size_t(N) * kvd, Role::Activation);
  a.att = be_.alloc(size_t(N) * qd, Role::Activation);
  a.lse = be_.alloc(size_t(N) * c.num_heads, Role::Stat);
  a.res_mid = be_.alloc(size_t(N) * C, Role::Activation);
  a.rstd2 = be_.alloc(size_t(N), Role::Stat);
  a.g = be_.alloc(size_t(N) * F, Role::Activation);
  a.u = be_.alloc(size_t(N) * F, Role::Activation);
  a.h = h_;
  if (has_lora_)
    for (int t = 0; t < 7; t++)   // every layer adapts the same projections
      if (slot_of_[0][size_t(t)] >= 0) a.xa[t] = be_.alloc(size_t(N) * spec_.r, Role::Activation);
}

void Transformer::ensure_buffers(int N, bool training) {
  const ModelConfig& c = cfg_;
  const int L = c.num_layers, C = c.hidden_size, F = c.intermediate_size, qd = c.num_heads * c.head_dim,
            kvd = c.num_kv_heads * c.head_dim, V = c.vocab_size;
  const size_t want_acts = (training && !opt_.gradient_checkpointing) ? size_t(L) : 1;
  const bool have_train = !dres_.empty();
  if (N <= cap_n_ && acts_.size() >= want_acts && (!training || have_train)) return;
  const int cap = std::max(N, cap_n_);
  // free everything sized by N, then allocate for `cap`
  for (LayerActs& a : acts_) free_layer_acts(a);
  acts_.clear();
  for (Tensor& t : res_) release(t);
  res_.clear();
  for (Tensor* t : {&xn_, &h_, &ids_, &targets_, &positions_, &doc_start_, &xf_, &rstdf_, &dres_, &dxn_, &dq_, &dk_, &dv_, &datt_,
                    &dh_, &dg_, &du_, &dxa_, &scratch_in_, &scratch_dx_, &logits_, &ce_max_, &ce_sum_, &ce_tl_,
                    &ce_loss_, &ce_lse_})
    release(*t);
  cap_n_ = cap;
  const bool train_bufs = training || have_train;
  const size_t n_acts = std::max(want_acts, (train_bufs && !opt_.gradient_checkpointing) ? size_t(L) : size_t(1));
  xn_ = be_.alloc(size_t(cap) * C, Role::Activation);
  h_ = be_.alloc(size_t(cap) * F, Role::Activation);
  acts_.resize(n_acts);
  for (LayerActs& a : acts_) alloc_layer_acts(a, cap);
  res_.resize(size_t(L) + 1);
  for (Tensor& t : res_) t = be_.alloc(size_t(cap) * C, Role::Activation);
  ids_ = be_.alloc(size_t(cap), Role::Index);
  targets_ = be_.alloc(size_t(cap), Role::Index);
  positions_ = be_.alloc(size_t(cap), Role::Index);
  doc_start_ = be_.alloc(size_t(cap), Role::Index);
  xf_ = be_.alloc(size_t(cap) * C, Role::Activation);
  rstdf_ = be_.alloc(size_t(cap), Role::Stat);
  const int in_max = std::max(std::max(C, F), qd);
  scratch_in_ = be_.alloc(size_t(cap) * in_max, Role::Activation);
  if (train_bufs) {
    dres_ = be_.alloc(size_t(cap) * C, Role::Activation);
    dxn_ = be_.alloc(size_t(cap) * C, Role::Activation);
    dq_ = be_.alloc(size_t(cap) * qd, Role::Activation);
    dk_ = be_.alloc(size_t(cap) * kvd, Role::Activation);
    dv_ = be_.alloc(size_t(cap) * kvd, Role::Activation);
    datt_ = be_.alloc(size_t(cap) * qd, Role::Activation);
    dh_ = be_.alloc(size_t(cap) * F, Role::Activation);
    dg_ = be_.alloc(size_t(cap) * F, Role::Activation);
    du_ = be_.alloc(size_t(cap) * F, Role::Activation);
    if (has_lora_) dxa_ = be_.alloc(size_t(cap) * spec_.r, Role::Activation);
    scratch_dx_ = be_.alloc(size_t(cap) * in_max, Role::Activation);
  }
  ce_vc_ = std::min(V, std::max(1, opt_.ce_vocab_chunk));
  ce_rows_ = int(std::max<int64_t>(1, std::min<int64_t>(cap, opt_.ce_max_logits / ce_vc_)));
  logits_ = be_.alloc(size_t(ce_rows_) * ce_vc_, Role::Activation);
  ce_max_ = be_.alloc(size_t(ce_rows_), Role::Stat);
  ce_sum_ = be_.alloc(size_t(ce_rows_), Role::Stat);
  ce_tl_ = be_.alloc(size_t(ce_rows_), Role::Stat);
  ce_loss_ = be_.alloc(size_t(cap), Role::Stat);   // per-token losses of the whole micro-batch
  ce_lse_ = be_.alloc(size_t(ce_rows_), Role::Stat);
}

void Transformer::upload_batch(const Batch& b) {
  const int N = b.B * b.T;
  const int V = cfg_.vocab_size;
  for (int i = 0; i < N; i++) {
    if (b.tokens[i] < 0 || b.tokens[i] >= V)
      throw EngineError("token id " + std::to_string(b.tokens[i]) + " out of range [0, " + std::to_string(V) + ")");
    if (b.targets && b.targets[i] != -100 && (b.targets[i] < 0 || b.targets[i] >= V))
      throw EngineError("target id " + std::to_string(b.targets[i]) + " out of range [0, " + std::to_string(V) + ")");
  }
  // doc_start: the key index where each query's document begins (position 0 starts a document; so does the row).
  std::vector<int32_t> ds(static_cast<size_t>(N));
  for (int r = 0; r < b.B; r++) {
    int start = 0;
    for (int t = 0; t < b.T; t++) {
      if (b.positions[size_t(r) * b.T + t] == 0) start = t;
      ds[size_t(r) * b.T + t] = start;
    }
  }
  be_.upload(ids_, b.tokens, size_t(N));
  if (b.targets) be_.upload(targets_, b.targets, size_t(N));
  be_.upload(positions_, b.positions, size_t(N));
  be_.upload(doc_start_, ds.data(), size_t(N));
}

// ---- linear + LoRA ------------------------------------------------------------------------------------------

// y (N,out) = beta·y + x (N,in)·Wᵀ (+ bias) (+ scale·(drop(x)·Aᵀ)·Bᵀ); xa (N,r) keeps x·Aᵀ for backward.
void Transformer::linear_forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias, int N, int in,
                                 int out, int layer, int target, const Tensor& xa, uint64_t seed, float beta) {
  be_.matmul(y, x, w, N, out, in, false, true, 1.0f, beta);
  if (!bias.empty()) be_.add_bias(y, bias, N, out);
  const int si = slot_of_[size_t(layer)][size_t(target)];
  if (si < 0) return;
  const LoraSlot& s = slots_[size_t(si)];
  const int r = spec_.r;
  Tensor A = params_.slice(s.off_a, size_t(r) * in), Bm = params_.slice(s.off_b, size_t(out) * r);
  Tensor xin = x;
  const float p = dropout_p();
  if (p > 0 && seed != 0) {
    be_.lora_dropout(scratch_in_, x, N, in, p, lora_seed(seed, layer, target));
    xin = scratch_in_;
  }
  be_.matmul(xa, xin, A, N, r, in, false, true, 1.0f, 0.0f);
  be_.matmul(y, xa, Bm, N, out, r, false, true, lora_scale_, 1.0f);
}

// Given dy (N,out) of an adapted projection: dB += scale·dyᵀ·xa, dA += dxaᵀ·drop(x), dx += drop(dxa·A).
void Transformer::lora_backward(const Tensor& dx, const Tensor& dy, const Tensor& x, const Tensor& xa, int N, int layer,
                                int target, uint64_t seed) {
  const int si = slot_of_[size_t(layer)][size_t(target)];
  if (si < 0) return;
  const LoraSlot& s = slots_[size_t(si)];
  const int r = spec_.r, in = s.in, out = s.out;
  Tensor A = params_.slice(s.off_a, size_t(r) * in), Bm = params_.slice(s.off_b, size_t(out) * r);
  Tensor dA = grads_.slice(s.off_a, size_t(r) * in), dB = grads_.slice(s.off_b, size_t(out) * r);
  const float p = dropout_p();
  const bool drop = p > 0 && seed != 0;
  const uint64_t ls = lora_seed(seed, layer, target);
  Tensor xin = x;
  if (drop) {
    be_.lora_dropout(scratch_in_, x, N, in, p, ls);
    xin = scratch_in_;
  }
  be_.matmul(dB, dy, xa, out, r, N, true, false, lora_scale_, 1.0f);
  be_.matmul(dxa_, dy, Bm, N, r, out, false, false, lora_scale_, 0.0f);
  be_.matmul(dA, dxa_, xin, r, in, N, true, false, 1.0f, 1.0f);
  if (!drop) {
    be_.matmul(dx, dxa_, A, N, in, r, false, false, 1.0f, 1.0f);
  } else {
    be_.matmul(scratch_dx_, dxa_, A, N, in, r, false, false, 1.0f, 0.0f);
    be_.lora_dropout(scratch_in_, scratch_dx_, N, in, p, ls);
    be_.add(dx, scratch_in_, size_t(N) * in);
  }
}

// ---- one layer ----------------------------------------------------------------------------------------------

void Transformer::layer_forward(int l, const Tensor& x, const Tensor& x_next, LayerActs& a, const AttnCtx& ctx, int B,
                                int T, const Tensor& positions, const Tensor& doc_start, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const LayerW& W = layers_[size_t(l)];
  const int N = B * T, C = c.hidden_size, F = c.intermediate_size, NH = c.num_heads, NKV = c.num_kv_heads,
            HD = c.head_dim, qd = NH * HD, kvd = NKV * HD;
  const double eps = c.rms_norm_eps;
  const bool p1 = c.norm_plus_one;
  be_.rmsnorm_forward(a.xn1, a.rstd1, x, W.attn_norm, N, C, eps, p1);
  linear_forward(a.q, a.xn1, W.wq, W.bq, N, C, qd, l, kQ, a.xa[kQ], seed, 0.0f);
  linear_forward(ctx.k, a.xn1, W.wk, W.bk, N, C, kvd, l, kK, a.xa[kK], seed, 0.0f);
  linear_forward(ctx.v, a.xn1, W.wv, W.bv, N, C, kvd, l, kV, a.xa[kV], seed, 0.0f);
  be_.rope_forward(a.q, positions, inv_freq_, N, NH, HD);
  be_.rope_forward(ctx.k, positions, inv_freq_, N, NKV, HD);
  be_.attention_forward(a.att, a.lse, a.q, ctx.k_all, ctx.v_all, doc_start, B, T, ctx.Tk, ctx.Tk_stride, ctx.q_offset,
                        NH, NKV, HD);
  be_.copy(a.res_mid, x, size_t(N) * C);   // res_mid = x + o_proj(att): the GEMM accumulates into the copy
  linear_forward(a.res_mid, a.att, W.wo, Tensor(), N, qd, C, l, kO, a.xa[kO], seed, 1.0f);
  be_.rmsnorm_forward(a.xn2, a.rstd2, a.res_mid, W.mlp_norm, N, C, eps, p1);
  linear_forward(a.g, a.xn2, W.wg, Tensor(), N, C, F, l, kGate, a.xa[kGate], seed, 0.0f);
  linear_forward(a.u, a.xn2, W.wu, Tensor(), N, C, F, l, kUp, a.xa[kUp], seed, 0.0f);
  const Glu act = c.hidden_act == "silu" ? Glu::SwiGLU : Glu::GeGLUTanh;
  be_.glu_forward(a.h, a.g, a.u, N, F, act);
  be_.copy(x_next, a.res_mid, size_t(N) * C);
  linear_forward(x_next, a.h, W.wd, Tensor(), N, F, C, l, kDown, a.xa[kDown], seed, 1.0f);
}

// dres_ holds d(x_next) on entry and d(x) on exit.
void Transformer::layer_backward(int l, const Tensor& x, LayerActs& a, int B, int T, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const LayerW& W = layers_[size_t(l)];
  const int N = B * T, C = c.hidden_size, F = c.intermediate_size, NH = c.num_heads, NKV = c.num_kv_heads,
            HD = c.head_dim, qd = NH * HD, kvd = NKV * HD;
  const bool p1 = c.norm_plus_one;
  const Glu act = c.hidden_act == "silu" ? Glu::SwiGLU : Glu::GeGLUTanh;
  // xn1, xn2 and h are not kept per layer (they would cost 2·C + F values per token per layer): the LoRA
  // backward of the projections they feed recomputes them here from what is kept (x, res_mid, g, u), bit for bit.
  const std::array<int, 7>& adapted = slot_of_[size_t(l)];
  // x_next = res_mid + h·Wdᵀ: d(res_mid) = dres (kept in dres_), dh = dres·Wd
  if (adapted[kDown] >= 0) be_.glu_forward(a.h, a.g, a.u, N, F, act);
  be_.matmul(dh_, dres_, W.wd, N, F, C, false, false, 1.0f, 0.0f);
  lora_backward(dh_, dres_, a.h, a.xa[kDown], N, l, kDown, seed);
  be_.glu_backward(dg_, du_, dh_, a.g, a.u, N, F, act);
  if (adapted[kGate] >= 0 || adapted[kUp] >= 0)
    be_.rmsnorm_forward(a.xn2, a.rstd2, a.res_mid, W.mlp_norm, N, C, c.rms_norm_eps, p1);
  be_.matmul(dxn_, dg_, W.wg, N, C, F, false, false, 1.0f, 0.0f);
  lora_backward(dxn_, dg_, a.xn2, a.xa[kGate], N, l, kGate, seed);
  be_.matmul(dxn_, du_, W.wu, N, C, F, false, false, 1.0f, 1.0f);
  lora_backward(dxn_, du_, a.xn2, a.xa[kUp], N, l, kUp, seed);
  be_.rmsnorm_backward(dres_, dxn_, a.res_mid, W.mlp_norm, a.rstd2, N, C, p1);
  // res_mid = x + att·Woᵀ
  be_.matmul(datt_, dres_, W.wo, N, qd, C, false, false, 1.0f, 0.0f);
  lora_backward(datt_, dres_, a.att, a.xa[kO], N, l, kO, seed);
  be_.attention_backward(dq_, dk_, dv_, datt_, a.q, a.k, a.v, a.att, a.lse, doc_start_, B, T, NH, NKV, HD);
  be_.rope_backward(dq_, positions_, inv_freq_, N, NH, HD);
  be_.rope_backward(dk_, positions_, inv_freq_, N, NKV, HD);
  if (adapted[kQ] >= 0 || adapted[kK] >= 0 || adapted[kV] >= 0)
    be_.rmsnorm_forward(a.xn1, a.rstd1, x, W.attn_norm, N, C, c.rms_norm_eps, p1);
  be_.matmul(dxn_, dq_, W.wq, N, C, qd, false, false, 1.0f, 0.0f);
  lora_backward(dxn_, dq_, a.xn1, a.xa[kQ], N, l, kQ, seed);
  be_.matmul(dxn_, dk_, W.wk, N, C, kvd, false, false, 1.0f, 1.0f);
  lora_backward(dxn_, dk_, a.xn1, a.xa[kK], N, l, kK, seed);
  be_.matmul(dxn_, dv_, W.wv, N, C, kvd, false, false, 1.0f, 1.0f);
  lora_backward(dxn_, dv_, a.xn1, a.xa[kV], N, l, kV, seed);
  be_.rmsnorm_backward(dres_, dxn_, x, W.attn_norm, a.rstd1, N, C, p1);
}

// ---- head: chunked cross-entropy ------------------------------------------------------------------------------

double Transformer::head_loss(int N, bool backward, float grad_scale) {
  const int C = cfg_.hidden_size, V = cfg_.vocab_size;
  const int nvc = (V + ce_vc_ - 1) / ce_vc_;
  for (int r0 = 0; r0 < N; r0 += ce_rows_) {
    const int n = std::min(ce_rows_, N - r0);
    Tensor xf = xf_.slice(size_t(r0) * C, size_t(n) * C);
    Tensor tg = targets_.slice(size_t(r0), size_t(n));
    be_.fill(ce_max_, -std::numeric_limits<float>::infinity(), size_t(n));
    be_.fill(ce_sum_, 0.0f, size_t(n));
    be_.fill(ce_tl_, 0.0f, size_t(n));
    for (int vi = 0; vi < nvc; vi++) {
      const int v0 = vi * ce_vc_, vc = std::min(ce_vc_, V - v0);
      Tensor lg = logits_.slice(0, size_t(n) * vc);
      be_.matmul(lg, xf, head_.slice(size_t(v0) * C, size_t(vc) * C), n, vc, C, false, true, 1.0f, 0.0f);
      be_.ce_stats(lg, tg, ce_max_, ce_sum_, ce_tl_, n, vc, v0);
    }
    be_.ce_finish(ce_loss_.slice(size_t(r0), size_t(n)), ce_lse_, ce_max_, ce_sum_, ce_tl_, tg, n);
    if (!backward) continue;
    Tensor dxf = dxn_.slice(size_t(r0) * C, size_t(n) * C);
    for (int vi = 0; vi < nvc; vi++) {
      const int v0 = vi * ce_vc_, vc = std::min(ce_vc_, V - v0);
      Tensor lg = logits_.slice(0, size_t(n) * vc);
      Tensor w = head_.slice(size_t(v0) * C, size_t(vc) * C);
      if (nvc > 1) be_.matmul(lg, xf, w, n, vc, C, false, true, 1.0f, 0.0f);   // recompute this chunk
      be_.ce_grad(lg, tg, ce_lse_, n, vc, v0, grad_scale);
      be_.matmul(dxf, lg, w, n, C, vc, false, false, 1.0f, vi == 0 ? 0.0f : 1.0f);
    }
  }
  // one download per micro-batch (a GPU backend keeps running until here); double keeps the f64 backend's digits
  std::vector<double> loss_host(static_cast<size_t>(N));
  be_.download(ce_loss_, loss_host.data(), size_t(N));
  double total = 0;
  for (double x : loss_host) total += x;
  return total;
}

// ---- whole model --------------------------------------------------------------------------------------------

double Transformer::run(const Batch& batch, bool backward, float grad_scale, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const int B = batch.B, T = batch.T, N = B * T, C = c.hidden_size, L = c.num_layers;
  if (!batch.targets) throw EngineError("internal: batch without targets");
  ensure_buffers(N, backward);
  upload_batch(batch);
  const double emb_scale = c.scale_embeddings ? std::sqrt(double(C)) : 1.0;
  be_.embedding_forward(res_[0], ids_, embed_, N, C, emb_scale);
  const bool per_layer = backward && !opt_.gradient_checkpointing;
  for (int l = 0; l < L; l++) {
    LayerActs& a = per_layer ? acts_[size_t(l)] : acts_[0];
    AttnCtx ctx;
    ctx.k = ctx.k_all = a.k;
    ctx.v = ctx.v_all = a.v;
    ctx.Tk = ctx.Tk_stride = T;
    layer_forward(l, res_[size_t(l)], res_[size_t(l) + 1], a, ctx, B, T, positions_, doc_start_, seed);
  }
  be_.rmsnorm_forward(xf_, rstdf_, res_[size_t(L)], final_norm_, N, C, c.rms_norm_eps, c.norm_plus_one);
  const double loss = head_loss(N, backward, grad_scale);
  if (!backward) return loss;
  // dxn_ holds d(final norm output); dres_ becomes d(x_L).
  be_.fill(dres_, 0.0f, size_t(N) * C);
  be_.rmsnorm_backward(dres_, dxn_, res_[size_t(L)], final_norm_, rstdf_, N, C, c.norm_plus_one);
  for (int l = L - 1; l >= 0; l--) {
    LayerActs& a = per_layer ? acts_[size_t(l)] : acts_[0];
    if (!per_layer) {   // gradient checkpointing: recompute this layer's activations from its saved input
      AttnCtx ctx;
      ctx.k = ctx.k_all = a.k;
      ctx.v = ctx.v_all = a.v;
      ctx.Tk = ctx.Tk_stride = T;
      layer_forward(l, res_[size_t(l)], res_[size_t(l) + 1], a, ctx, B, T, positions_, doc_start_, seed);
    }
    layer_backward(l, res_[size_t(l)], a, B, T, seed);
  }
  return loss;
}

double Transformer::forward_backward(const Batch& batch, float grad_scale, uint64_t dropout_seed) {
  // seed 0 means "no dropout" inside; map a caller's 0 to a fixed non-zero seed
  return run(batch, true, grad_scale, dropout_seed == 0 ? 0x5EEDull : dropout_seed);
}

double Transformer::forward_loss(const Batch& batch) { return run(batch, false, 1.0f, 0); }

// ---- generation ---------------------------------------------------------------------------------------------

void Transformer::reset_cache(int max_tokens) {
  const int kvd = cfg_.num_kv_heads * cfg_.head_dim;
  if (max_tokens > cache_cap_) {
    for (Tensor& t : k_cache_) release(t);
    for (Tensor& t : v_cache_) release(t);
    k_cache_.assign(size_t(cfg_.num_layers), Tensor());
    v_cache_.assign(size_t(cfg_.num_layers), Tensor());
    for (int l = 0; l < cfg_.num_layers; l++) {
      k_cache_[size_t(l)] = be_.alloc(size_t(max_tokens) * kvd, Role::Activation);
      v_cache_[size_t(l)] = be_.alloc(size_t(max_tokens) * kvd, Role::Activation);
    }
    cache_cap_ = max_tokens;
  }
  cache_len_ = 0;
}

void Transformer::decode(const int32_t* ids, int n, float* logits_last) {
  const ModelConfig& c = cfg_;
  const int C = c.hidden_size, L = c.num_layers, V = c.vocab_size, kvd = c.num_kv_heads * c.head_dim;
  if (n <= 0) throw EngineError("internal: decode of zero tokens");
  if (cache_len_ + n > cache_cap_)
    throw EngineError("KV cache full: " + std::to_string(cache_len_ + n) + " > " + std::to_string(cache_cap_));
  ensure_buffers(n, false);
  const int pos0 = cache_len_;
  std::vector<int32_t> pos(static_cast<size_t>(n)), ds(static_cast<size_t>(n), 0);
  for (int i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= V)
      throw EngineError("token id " + std::to_string(ids[i]) + " out of range [0, " + std::to_string(V) + ")");
    pos[size_t(i)] = pos0 + i;
  }
  be_.upload(ids_, ids, size_t(n));
  be_.upload(positions_, pos.data(), size_t(n));
  be_.upload(doc_start_, ds.data(), size_t(n));
  const double emb_scale = c.scale_embeddings ? std::sqrt(double(C)) : 1.0;
  be_.embedding_forward(res_[0], ids_, embed_, n, C, emb_scale);
  for (int l = 0; l < L; l++) {
    AttnCtx ctx;
    ctx.k = k_cache_[size_t(l)].slice(size_t(pos0) * kvd, size_t(n) * kvd);
    ctx.v = v_cache_[size_t(l)].slice(size_t(pos0) * kvd, size_t(n) * kvd);
    ctx.k_all = k_cache_[size_t(l)];
    ctx.v_all = v_cache_[size_t(l)];
    ctx.Tk = pos0 + n;
    ctx.Tk_stride = cache_cap_;
    ctx.q_offset = pos0;
    layer_forward(l, res_[size_t(l)], res_[size_t(l) + 1], acts_[0], ctx, 1, n, positions_, doc_start_, 0);
  }
  Tensor last = res_[size_t(L)].slice(size_t(n - 1) * C, size_t(C));
  be_.rmsnorm_forward(xf_, rstdf_, last, final_norm_, 1, C, c.rms_norm_eps, c.norm_plus_one);
  for (int v0 = 0; v0 < V; v0 += ce_vc_) {
    const int vc = std::min(ce_vc_, V - v0);
    Tensor lg = logits_.slice(0, size_t(vc));
    be_.matmul(lg, xf_, head_.slice(size_t(v0) * C, size_t(vc) * C), 1, vc, C, false, true, 1.0f, 0.0f);
    be_.download(lg, logits_last + v0, size_t(vc));
  }
  cache_len_ += n;
}

}  // namespace nxft
