// transformer.cpp — see transformer.h. One explicit layer loop forward, the same list in reverse backward
// (llm.c style); every op is a Backend call, so the CPU and CUDA backends share this file.
#include "model/transformer.h"
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include "backend/packed_documents.h"
#include "io/safetensors.h"
#include "model/quant4.h"
#include "model/validate.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/parallel.h"

namespace nxft {

namespace {
enum Target { kQ = 0, kK = 1, kV = 2, kO = 3, kGate = 4, kUp = 5, kDown = 6 };
// target → input group (Transformer::Group): q,k,v → 0, o → 1, gate,up → 2, down → 3
constexpr int kGroupOf[7] = {0, 0, 0, 1, 2, 2, 3};
// the targets of each input group, in the order their outputs sit side by side (-1 ends a list)
constexpr int kGroupTargets[4][4] = {{kQ, kK, kV, -1}, {kO, -1, -1, -1}, {kGate, kUp, -1, -1}, {kDown, -1, -1, -1}};

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
    : be_(be), cfg_(config), opt_(opt), glu_(config.hidden_act == "silu" ? Glu::SwiGLU : Glu::GeGLUTanh) {
  const ModelConfig& c = cfg_;
  const int C = c.hidden_size, F = c.intermediate_size, HD = c.head_dim, V = c.vocab_size;
  const int qd = c.num_heads * HD, kvd = c.num_kv_heads * HD;
  if (c.num_heads % c.num_kv_heads != 0)
    throw EngineError("num_attention_heads must be a multiple of num_key_value_heads", "config.json",
                      "num_key_value_heads");
  tied_ = c.tie_word_embeddings;
  layers_.resize(size_t(c.num_layers));
  // LoRA targets first: folding (TransformerOptions::fold_lora) decides the row pitch of the adapted weights.
  bool wanted[7] = {false, false, false, false, false, false, false};
  if (lora) {
    for (const std::string& t : lora->targets) {
      int i = lora_target_index(t);
      if (i < 0) throw EngineError("unknown LoRA target \"" + t + "\"", "", "lora.targets");
      wanted[i] = true;
    }
    for (int t = 0; t < 7; t++)
      if (wanted[t]) group_width_[kGroupOf[t]] += lora->r;
    const bool fold = opt_.fold_lora && !opt_.quantize_nf4 && lora->dropout == 0;
    for (int g = 0; g < 4; g++) fold_[g] = fold && group_width_[g] > 0;
  }
  merged_ = !opt_.quantize_nf4;
  // The frozen weights, by HF name (filled by set_weight / load_weights; NF4 applies to the linear ones).
  // Plain linear weights are row blocks of their group matrix (row pitch input_ld), biases of bqkv.
  auto slot = [&](const std::string& name, Tensor* t, int rows, int cols, bool linear, int target = -1,
                  bool bias = false) {
    const bool view = (target >= 0 && merged_) || bias;
    const int ld = target >= 0 && merged_ ? input_ld(kGroupOf[target]) : cols;
    slots_w_.push_back(WeightSlot{name, t, rows, cols, ld, linear && opt_.quantize_nf4, view});
  };
  slot("model.embed_tokens.weight", &embed_, V, C, false);
  if (!tied_) slot("lm_head.weight", &head_, V, C, false);
  slot("model.norm.weight", &final_norm_, 1, C, false);
  for (int l = 0; l < c.num_layers; l++) {
    LayerW& L = layers_[size_t(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    slot(p + "input_layernorm.weight", &L.attn_norm, 1, C, false);
    slot(p + "self_attn.q_proj.weight", &L.wq, qd, C, true, kQ);
    slot(p + "self_attn.k_proj.weight", &L.wk, kvd, C, true, kK);
    slot(p + "self_attn.v_proj.weight", &L.wv, kvd, C, true, kV);
    slot(p + "self_attn.o_proj.weight", &L.wo, C, qd, true, kO);
    if (c.attention_bias) {
      slot(p + "self_attn.q_proj.bias", &L.bq, 1, qd, false, -1, true);
      slot(p + "self_attn.k_proj.bias", &L.bk, 1, kvd, false, -1, true);
      slot(p + "self_attn.v_proj.bias", &L.bv, 1, kvd, false, -1, true);
    }
    slot(p + "post_attention_layernorm.weight", &L.mlp_norm, 1, C, false);
    slot(p + "mlp.gate_proj.weight", &L.wg, F, C, true, kGate);
    slot(p + "mlp.up_proj.weight", &L.wu, F, C, true, kUp);
    slot(p + "mlp.down_proj.weight", &L.wd, C, F, true, kDown);
  }
  // Plain weights are allocated now (so a caller may also fill them on the backend); NF4 ones at set_weight.
  // A folded group matrix starts at zero: each projection's own s·B block and the A rows are written by
  // refresh_folded_lora(), the blocks of the group's other projections stay zero.
  for (WeightSlot& w : slots_w_) {
    if (w.nf4 || w.view) continue;
    const size_t n = size_t(w.rows) * w.ld;
    // The embedding stays on the device when trainable token rows are written into it each step (LoraSpec::token_indices).
    const bool host_table = w.t == &embed_ && !tied_ && opt_.embedding_in_host_memory && !(lora && !lora->token_indices.empty());
    *w.t = host_table ? be_.alloc_gather_table(n) : be_.alloc(n, Role::Weight);
  }
  for (LayerW& L : layers_) {
    if (merged_) {
      for (int g = 0; g < 4; g++) {
        const size_t ld = size_t(input_ld(g)), rows = size_t(out_width(g) + (fold_[g] ? group_width_[g] : 0));
        L.group_w[g] = be_.alloc(rows * ld, Role::Weight);
        if (fold_[g]) be_.fill(L.group_w[g], 0.0f, rows * ld);
      }
      for (int t = 0; t < 7; t++) {
        const size_t ld = size_t(input_ld(kGroupOf[t]));
        L.proj(t) = L.group_w[kGroupOf[t]].slice(size_t(col_of(t)) * ld, size_t(out_of(t)) * ld);
      }
    }
    if (c.attention_bias) {
      L.bqkv = be_.alloc(size_t(qd + 2 * kvd), Role::Weight);
      L.bq = L.bqkv.slice(0, size_t(qd));
      L.bk = L.bqkv.slice(size_t(qd), size_t(kvd));
      L.bv = L.bqkv.slice(size_t(qd + kvd), size_t(kvd));
    }
  }
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
    const int r = spec_.r;
    int col[4] = {0, 0, 0, 0};
    for (int l = 0; l < c.num_layers; l++) {
      // all A of the layer (target order), then all B: the A of one input group are contiguous
      for (int t = 0; t < 7; t++) {
        if (!wanted[t]) continue;
        LoraSlot s;
        s.layer = l;
        s.target = t;
        s.in = (t == kO) ? qd : (t == kDown ? F : C);
        s.out = (t == kQ) ? qd : (t == kK || t == kV) ? kvd : (t == kGate || t == kUp) ? F : C;
        s.off_a = n_params_;
        n_params_ += size_t(r) * s.in;
        s.col = col[kGroupOf[t]];
        col[kGroupOf[t]] += r;
        slot_of_[size_t(l)][size_t(t)] = int(slots_.size());
        slots_.push_back(s);
      }
      for (int t = 0; t < 7; t++) {
        if (!wanted[t]) continue;
        LoraSlot& s = slots_[size_t(slot_of_[size_t(l)][size_t(t)])];
        s.off_b = n_params_;
        n_params_ += size_t(s.out) * r;
      }
      for (int& cg : col) cg = 0;
    }
    n_tok_ = int(spec_.token_indices.size());
    if (n_tok_ > 0) {
      check_token_indices(spec_.token_indices, "lora: ");
      if (spec_.token_indices.back() >= V)
        throw EngineError("trainable token " + std::to_string(spec_.token_indices.back()) + " is beyond the model's " +
                          std::to_string(V) + " vocabulary rows");
      off_tok_embed_ = n_params_;
      n_params_ += size_t(n_tok_) * C;
      off_tok_head_ = tied_ ? off_tok_embed_ : n_params_;
      if (!tied_) n_params_ += size_t(n_tok_) * C;
    }
    if (n_params_ > 0) {
      params_ = be_.alloc(n_params_, Role::Param);
      grads_ = be_.alloc(n_params_, Role::Param);
      be_.fill(params_, 0.0f, n_params_);
      be_.fill(grads_, 0.0f, n_params_);
    }
    // B_t (out, r) → columns [in + col, in + col + r) of W_ext (out, in + g·r), scaled by s
    for (const LoraSlot& s : slots_) {
      const int g = kGroupOf[s.target];
      if (!fold_[g]) continue;
      Backend::ColumnBlockWrite job;
      job.dst = layers_[size_t(s.layer)].proj(s.target);
      job.ld = s.in + group_width_[g];
      job.col0 = s.in + s.col;
      job.src = params_.slice(s.off_b, size_t(s.out) * r);
      job.rows = s.out;
      job.cols = r;
      fold_jobs_.push_back(job);
    }
    // trainable token row k → row token_indices[k] of embed_tokens (and of an untied lm_head)
    for (int k = 0; k < n_tok_; k++) {
      const size_t row = size_t(spec_.token_indices[size_t(k)]);
      for (int head = 0; head < (tied_ ? 1 : 2); head++) {
        Backend::ColumnBlockWrite job;
        job.dst = (head ? head_ : embed_).slice(row * C, size_t(C));
        job.ld = C;
        job.col0 = 0;
        job.src = params_.slice((head ? off_tok_head_ : off_tok_embed_) + size_t(k) * C, size_t(C));
        job.rows = 1;
        job.cols = C;
        token_jobs_.push_back(job);
      }
    }
    // A_g (g·r, in) → the last g·r rows of W_ext, columns [0, in)
    for (int l = 0; l < c.num_layers; l++)
      for (int g = 0; g < 4; g++) {
        if (!fold_[g]) continue;
        const int rg = group_width_[g], in = input_width(g), ld = input_ld(g);
        Backend::ColumnBlockWrite job;
        job.dst = layers_[size_t(l)].group_w[g].slice(size_t(out_width(g)) * ld, size_t(rg) * ld);
        job.ld = ld;
        job.col0 = 0;
        job.src = params_.slice(slots_[size_t(first_slot(l, g))].off_a, size_t(rg) * in);
        job.rows = rg;
        job.cols = in;
        fold_a_jobs_.push_back(job);
      }
  }
}

void Transformer::refresh_folded_lora() {
  if (!fold_jobs_.empty()) be_.write_column_blocks(fold_jobs_.data(), int(fold_jobs_.size()), lora_scale_);
  if (!fold_a_jobs_.empty()) be_.write_column_blocks(fold_a_jobs_.data(), int(fold_a_jobs_.size()), 1.0f);
  if (!token_jobs_.empty()) be_.write_column_blocks(token_jobs_.data(), int(token_jobs_.size()), 1.0f);
}

void Transformer::init_token_rows_from_weights() {
  const int C = cfg_.hidden_size;
  std::vector<float> row(static_cast<size_t>(C));
  for (int k = 0; k < n_tok_; k++) {
    const size_t r = size_t(spec_.token_indices[size_t(k)]);
    be_.download(embed_, row.data(), size_t(C), r * C);
    be_.upload(params_, row.data(), size_t(C), off_tok_embed_ + size_t(k) * C);
    if (!tied_) {
      be_.download(head_, row.data(), size_t(C), r * C);
      be_.upload(params_, row.data(), size_t(C), off_tok_head_ + size_t(k) * C);
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
    // bitsandbytes' quantize_4bit (+ double quantization of the absmax): by the backend, the CPU over all cores,
    // CUDA on the device.
    if (!w.t->empty()) be_.free(*w.t);
    *w.t = be_.upload_nf4(v.data(), w.rows, w.cols, opt_.double_quant);
  } else if (w.ld == w.cols) {
    be_.upload(*w.t, v.data(), n);
  } else {   // folded: rows of [W | zeros]; run() writes the LoRA columns
    std::vector<float> padded(size_t(w.rows) * w.ld, 0.0f);
    for (int r = 0; r < w.rows; r++)
      std::memcpy(padded.data() + size_t(r) * w.ld, v.data() + size_t(r) * w.cols, size_t(w.cols) * sizeof(float));
    be_.upload(*w.t, padded.data(), padded.size());
  }
}

void Transformer::load_weights(const std::string& dir, const std::function<void(size_t, size_t)>& on_progress) {
  std::unique_ptr<SafetensorsModel> st = SafetensorsModel::open_dir(dir);
  const int ckpt_vocab = opt_.checkpoint_vocab_size > 0 ? opt_.checkpoint_vocab_size : cfg_.vocab_size;
  if (ckpt_vocab > cfg_.vocab_size) throw EngineError("internal: checkpoint_vocab_size beyond the model's vocab_size");
  ModelConfig ckpt_cfg = cfg_;
  ckpt_cfg.vocab_size = ckpt_vocab;
  validate_checkpoint(ckpt_cfg, *st, dir);
  std::vector<float> buf;
  auto shape_error = [&](const WeightSlot& w, const std::vector<int64_t>& got_shape, const std::vector<int64_t>& want) {
    std::string got;
    for (int64_t d : got_shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
    throw EngineError(dir + ": tensor " + w.name + " has shape [" + got + "], config.json implies [" +
                          std::to_string(want[0]) + (want.size() > 1 ? ", " + std::to_string(want[1]) : "") + "]",
                      path_join(dir, st->shard_of(w.name)), w.name);
  };
  for (size_t i = 0; i < slots_w_.size(); i++) {
    const WeightSlot& w = slots_w_[i];
    if (ckpt_vocab < cfg_.vocab_size && (w.t == &embed_ || w.t == &head_)) {
      // A grown vocabulary (trainable tokens beyond the base's): the checkpoint's rows, then their mean in every
      // new row (transformers' resize_token_embeddings with mean_resizing, without its 1e-9·covariance noise).
      const TensorView& tv = st->get(w.name);
      const std::vector<int64_t> want{ckpt_vocab, w.cols};
      if (tv.shape != want) shape_error(w, tv.shape, want);
      const size_t C = size_t(w.cols), old_n = size_t(tv.numel());
      buf.resize(size_t(w.rows) * C);
      convert_to_f32(tv.data, tv.dtype, buf.data(), old_n);
      check_finite(buf.data(), old_n, path_join(dir, st->shard_of(w.name)), w.name);
      std::vector<double> mean(C, 0.0);
      for (size_t r = 0; r < size_t(ckpt_vocab); r++)
        for (size_t c = 0; c < C; c++) mean[c] += buf[r * C + c];
      for (size_t r = size_t(ckpt_vocab); r < size_t(w.rows); r++)
        for (size_t c = 0; c < C; c++) buf[r * C + c] = float(mean[c] / double(ckpt_vocab));
      set_weight(i, buf);
      st->release(w.name);
      if (on_progress) on_progress(i + 1, slots_w_.size());
      continue;
    }
    const std::vector<int64_t> want = w.rows == 1 ? std::vector<int64_t>{w.cols} : std::vector<int64_t>{w.rows, w.cols};
    // A pre-quantized bitsandbytes weight: kept 4-bit when the slot is (QLoRA), else dequantized like bitsandbytes.
    if (std::optional<Bnb4bitWeight> q = bnb_4bit_weight(*st, w.name)) {
      if (q->shape != want) shape_error(w, q->shape, want);
      if (w.nf4) {
        if (!w.t->empty()) be_.free(*w.t);
        const Quant quant = q->fp4 ? Quant::FP4 : Quant::NF4;
        if (q->nested && q->blocksize == 64 && q->nested_blocksize == 256 && q->nested_map_is_dynamic) {
          // QLoRA's usual double-quantized checkpoint: kept so (the CUDA backend holds 1 absmax byte per 64 values)
          *w.t = be_.upload_4bit_nested(q->packed, q->absmax_q, q->nested_absmax, q->nested_offset, quant, w.rows, w.cols);
        } else {
          const std::vector<float> absmax = bnb_absmax_per64(*q);
          *w.t = be_.upload_4bit(q->packed, absmax.data(), quant, w.rows, w.cols);
        }
      } else {
        buf.resize(size_t(q->numel));
        parallel_ranges(buf.size(), 1 << 16, [&](size_t a, size_t b) { bnb_dequantize(*q, int64_t(a), int64_t(b - a), buf.data() + a); });
        set_weight(i, buf);
      }
      st->release(w.name);
      if (on_progress) on_progress(i + 1, slots_w_.size());
      continue;
    }
    const TensorView& tv = st->get(w.name);
    if (tv.shape != want) shape_error(w, tv.shape, want);
    const std::string file = path_join(dir, st->shard_of(w.name));
    if (tv.dtype == DType::BF16 && !w.nf4) {
      // bf16 checkpoint: no fp32 copy on the host (an 8B base would be 32 GB of it); the backend converts if
      // its weights are not bf16. Non-finite values (all-ones exponent) are found on the bits.
      const uint16_t* bits = reinterpret_cast<const uint16_t*>(tv.data);
      std::atomic<bool> finite{true};
      parallel_ranges(size_t(tv.numel()), 1 << 20, [&](size_t a, size_t b) {
        for (size_t k = a; k < b; k++)
          if ((bits[k] & 0x7F80u) == 0x7F80u) { finite = false; return; }
      });
      if (!finite) {  // the shared error, naming the file and tensor
        buf.resize(size_t(tv.numel()));
        convert_to_f32(tv.data, tv.dtype, buf.data(), buf.size());
        check_finite(buf.data(), buf.size(), file, w.name);
      }
      be_.upload_bf16_rows(*w.t, bits, w.rows, w.cols, w.ld);
    } else {
      // One tensor at a time in host fp32 (never the whole model).
      buf.resize(size_t(tv.numel()));
      const size_t es = dtype_size(tv.dtype);
      // converted and checked on all cores (quantize_base "nf4" on an 8B base: 7 G values); the shared error names
      // the file, tensor and index when a block holds a non-finite value
      std::atomic<bool> finite{true};
      parallel_ranges(buf.size(), 1 << 16, [&](size_t a, size_t b) {
        convert_to_f32(tv.data + a * es, tv.dtype, buf.data() + a, b - a);
        for (size_t k = a; k < b; k++)
          if (!std::isfinite(buf[k])) { finite = false; return; }
      });
      if (!finite) check_finite(buf.data(), buf.size(), file, w.name);
      set_weight(i, buf);
    }
    st->release(w.name);  // its mapped pages are dropped once uploaded
    if (on_progress) on_progress(i + 1, slots_w_.size());
  }
}

void Transformer::release(Tensor& t) {
  if (!t.empty()) be_.free(t);
  t = Tensor();
}

void Transformer::free_layer_acts(LayerActs& a) {
  if (&a != &shared_inputs_) {   // the shared inputs of a lean set (h may be its own): freed once, with shared_inputs_
    if (a.xn1.ptr == shared_inputs_.xn1.ptr) a.xn1 = Tensor();
    if (a.xn2.ptr == shared_inputs_.xn2.ptr) a.xn2 = Tensor();
    if (a.h.ptr == shared_inputs_.h.ptr) a.h = Tensor();
  }
  for (Tensor* t : {&a.xn1, &a.rstd1, &a.qkv, &a.att, &a.lse, &a.res_mid, &a.xn2, &a.rstd2, &a.gu, &a.h})
    release(*t);
  for (Tensor& t : a.xa) release(t);
}

Transformer::~Transformer() {
  for (LayerActs& a : acts_) free_layer_acts(a);
  free_layer_acts(shared_inputs_);
  for (Tensor& t : res_) release(t);
  if (res_host_) be_.free_host(res_host_);
  for (Tensor* t : {&ids_, &targets_, &positions_, &doc_start_, &xf_, &rstdf_, &dres_, &dxn_, &dqkv_, &datt_, &dh_,
                    &dgu_, &dxa_, &scratch_in_, &scratch_dx_, &logits_, &ce_max_, &ce_sum_, &ce_tl_, &ce_loss_,
                    &ce_lse_, &head_rows_, &head_row_of_, &xf_rows_, &tok_onehot_, &params_, &grads_, &inv_freq_})
    release(*t);
  for (Tensor& t : k_cache_) release(t);
  for (Tensor& t : v_cache_) release(t);
  for (WeightSlot& w : slots_w_)   // embed_ once even when the head is tied to it
    if (!w.view) release(*w.t);
  for (LayerW& L : layers_) {
    for (Tensor& t : L.group_w) release(t);
    release(L.bqkv);
  }
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
  if (n_tok_ > 0 && !adapter.embed_rows.empty()) {   // empty: a fresh adapter (init_token_rows_from_weights)
    const size_t n = size_t(n_tok_) * cfg_.hidden_size;
    if (adapter.spec.token_indices != spec_.token_indices || adapter.embed_rows.size() != n ||
        adapter.head_rows.size() != (tied_ ? 0 : n))
      throw EngineError("adapter's trainable token rows do not match the model (" + std::to_string(n_tok_) + " rows, " +
                        (tied_ ? "tied" : "untied") + " lm_head)");
    be_.upload(params_, adapter.embed_rows.data(), n, off_tok_embed_);
    if (!tied_) be_.upload(params_, adapter.head_rows.data(), n, off_tok_head_);
  }
  refresh_folded_lora();
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
  adapter.spec.token_indices = spec_.token_indices;
  const size_t n = size_t(n_tok_) * cfg_.hidden_size;
  adapter.embed_rows.resize(n);
  adapter.head_rows.resize(tied_ ? 0 : n);
  if (n > 0) be_.download(params_, adapter.embed_rows.data(), n, off_tok_embed_);
  if (n > 0 && !tied_) be_.download(params_, adapter.head_rows.data(), n, off_tok_head_);
}

std::pair<size_t, size_t> Transformer::lora_layer_range(int layer) const {
  size_t first = n_params_, last = 0;
  for (const LoraSlot& s : slots_) {
    if (s.layer != layer) continue;
    first = std::min({first, s.off_a, s.off_b});
    last = std::max({last, s.off_a + size_t(spec_.r) * s.in, s.off_b + size_t(s.out) * spec_.r});
  }
  return first < last ? std::make_pair(first, last - first) : std::make_pair(size_t(0), size_t(0));
}

void Transformer::zero_grads() {
  if (n_params_) be_.fill(grads_, 0.0f, n_params_);
}

uint64_t Transformer::lora_seed(uint64_t seed, int layer, int target) const {
  return splitmix64(splitmix64(seed) ^ (uint64_t(layer) * 8 + uint64_t(target) + 1));
}

// ---- buffers ------------------------------------------------------------------------------------------------

void Transformer::alloc_layer_acts(LayerActs& a, int N, bool own_norm_outputs, bool own_h) {
  const ModelConfig& c = cfg_;
  const int C = c.hidden_size, F = c.intermediate_size, qd = c.num_heads * c.head_dim,
            kvd = c.num_kv_heads * c.head_dim;
  // xn1, xn2 and h (2·C + F values per token): the LoRA backward of q/k/v, gate/up and down reads them. Their
  // own copies, or (lean sets, TransformerOptions::keep_group_inputs / keep_mlp_input) the shared ones that
  // backward refills (recompute_group_inputs).
  // A folded group's input has its LoRA down-projections as extra columns: [xn1 | xa_q xa_k xa_v] etc.
  const int mlp_rows = mlp_rows_ > 0 ? std::min(mlp_rows_, N) : N;   // gate|up and h: one MLP chunk
  if (own_norm_outputs) {
    a.xn1 = be_.alloc(size_t(N) * input_ld(kGroupQKV), Role::Activation);
    a.xn2 = be_.alloc(size_t(N) * input_ld(kGroupGateUp), Role::Activation);
  } else {
    a.xn1 = shared_inputs_.xn1;
    a.xn2 = shared_inputs_.xn2;
  }
  a.h = own_h ? be_.alloc(size_t(mlp_rows) * input_ld(kGroupDown), Role::Activation) : shared_inputs_.h;
  a.rstd1 = be_.alloc(size_t(N), Role::Stat);
  a.qkv = be_.alloc(size_t(N) * (qd + 2 * kvd), Role::Activation);
  a.att = be_.alloc(size_t(N) * input_ld(kGroupO), Role::Activation);
  a.lse = be_.alloc(size_t(N) * c.num_heads, Role::Stat);
  a.res_mid = be_.alloc(size_t(N) * C, Role::Activation);
  a.rstd2 = be_.alloc(size_t(N), Role::Stat);
  a.gu = be_.alloc(size_t(mlp_rows) * 2 * F, Role::Activation);
  if (has_lora_)
    for (int g = 0; g < 4; g++)   // every layer adapts the same projections
      if (group_width_[g] > 0 && !fold_[g]) a.xa[g] = be_.alloc(size_t(N) * group_width_[g], Role::Activation);
}

void Transformer::ensure_buffers(int N, bool training) {
  const ModelConfig& c = cfg_;
  const int L = c.num_layers, C = c.hidden_size, F = c.intermediate_size, qd = c.num_heads * c.head_dim,
            V = c.vocab_size;
  const size_t want_acts = (training && !opt_.gradient_checkpointing) ? size_t(L) : 1;
  const bool have_train = !dres_.empty();
  if (N <= cap_n_ && acts_.size() >= want_acts && (!training || have_train)) return;
  const int cap = std::max(N, cap_n_);
  // free everything sized by N, then allocate for `cap`
  for (LayerActs& a : acts_) free_layer_acts(a);
  acts_.clear();
  for (Tensor* t : {&shared_inputs_.xn1, &shared_inputs_.xn2, &shared_inputs_.h}) release(*t);
  for (Tensor& t : res_) release(t);
  res_.clear();
  if (res_host_) be_.free_host(res_host_);
  res_host_ = nullptr;
  for (Tensor* t : {&ids_, &targets_, &positions_, &doc_start_, &xf_, &rstdf_, &dres_, &dxn_, &dqkv_, &datt_, &dh_,
                    &dgu_, &dxa_, &scratch_in_, &scratch_dx_, &logits_, &ce_max_, &ce_sum_, &ce_tl_, &ce_loss_,
                    &ce_lse_, &head_rows_, &head_row_of_, &xf_rows_, &tok_onehot_})
    release(*t);
  cap_n_ = cap;
  const bool train_bufs = training || have_train;
  mlp_rows_ = opt_.gradient_checkpointing && opt_.mlp_chunk_tokens > 0 && dropout_p() == 0.0f && cap > opt_.mlp_chunk_tokens
                  ? opt_.mlp_chunk_tokens : 0;
  const int mlp_rows = mlp_rows_ > 0 ? mlp_rows_ : cap;
  const size_t n_acts = std::max(want_acts, (train_bufs && !opt_.gradient_checkpointing) ? size_t(L) : size_t(1));
  acts_.resize(n_acts);
  if (lean_acts()) {
    shared_inputs_.xn1 = be_.alloc(size_t(cap) * input_ld(kGroupQKV), Role::Activation);
    shared_inputs_.xn2 = be_.alloc(size_t(cap) * input_ld(kGroupGateUp), Role::Activation);
    if (lean_h()) shared_inputs_.h = be_.alloc(size_t(cap) * input_ld(kGroupDown), Role::Activation);
  }
  for (LayerActs& a : acts_) alloc_layer_acts(a, cap, !lean_acts(), !lean_h());
  res_.resize(offloading() ? 2 : size_t(L) + 1);
  for (Tensor& t : res_) t = be_.alloc(size_t(cap) * C, Role::Activation);
  if (offloading() && L > 1) {   // inputs of layers 0 … L−2 (layer L−1's stays in its device slot)
    res_host_ = be_.alloc_host(res_bytes() * size_t(L - 1));
  }
  ids_ = be_.alloc(size_t(cap), Role::Index);
  targets_ = be_.alloc(size_t(cap), Role::Index);
  positions_ = be_.alloc(size_t(cap), Role::Index);
  doc_start_ = be_.alloc(size_t(cap), Role::Index);
  xf_ = be_.alloc(size_t(cap) * C, Role::Activation);
  rstdf_ = be_.alloc(size_t(cap), Role::Stat);
  head_rows_ = be_.alloc(size_t(cap), Role::Index);
  head_row_of_ = be_.alloc(size_t(cap), Role::Index);
  // the compact head rows: training keeps them in dxn_ (head_xf); an eval-only model has no dxn_, so its own buffer
  if (!train_bufs) xf_rows_ = be_.alloc(size_t(cap) * C, Role::Activation);
  const int in_max = std::max(std::max(C, F), qd);
  // the masked inputs and input gradients of LoRA dropout (N·F each: 23 GB at 400K tokens of Llama-3-8B)
  if (dropout_p() > 0) scratch_in_ = be_.alloc(size_t(cap) * in_max, Role::Activation);
  if (train_bufs) {
    dres_ = be_.alloc(size_t(cap) * group_dy_ld(kGroupO), Role::Activation);
    dxn_ = be_.alloc(size_t(cap) * C, Role::Activation);
    dqkv_ = be_.alloc(size_t(cap) * group_dy_ld(kGroupQKV), Role::Activation);
    datt_ = be_.alloc(size_t(cap) * qd, Role::Activation);
    dh_ = be_.alloc(size_t(mlp_rows) * F, Role::Activation);
    dgu_ = be_.alloc(size_t(mlp_rows) * group_dy_ld(kGroupGateUp), Role::Activation);
    int widest = 0;   // dxa of the unfolded groups (a folded group keeps it in its dy's spare columns)
    for (int g = 0; g < 4; g++)
      if (!fold_[g]) widest = std::max(widest, group_width_[g]);
    if (widest > 0) dxa_ = be_.alloc(size_t(cap) * widest, Role::Activation);
    if (dropout_p() > 0) scratch_dx_ = be_.alloc(size_t(cap) * in_max, Role::Activation);
    if (n_tok_ > 0) tok_onehot_ = be_.alloc(size_t(cap) * n_tok_, Role::Activation);
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
  const std::vector<int32_t> ds = doc_start_of_positions(b.positions, b.B, b.T);
  be_.upload(ids_, b.tokens, size_t(N));
  // The head's rows (head_loss): those with a target. Compacted, targets_ gets only their targets.
  head_m_ = 0;
  if (b.targets) {
    for (int i = 0; i < N; i++) head_m_ += b.targets[i] != -100;
    if (!head_compact(N)) {
      be_.upload(targets_, b.targets, size_t(N));
    } else if (head_m_ > 0) {
      std::vector<int32_t> rows, row_of(static_cast<size_t>(N), -1), targets;
      for (int i = 0; i < N; i++)
        if (b.targets[i] != -100) {
          row_of[size_t(i)] = int32_t(rows.size());
          rows.push_back(i);
          targets.push_back(b.targets[i]);
        }
      // The last block of ce_rows_ padded up to the granule, within the N rows every head buffer holds.
      const int g = std::max(1, opt_.head_row_granule), last0 = (head_m_ - 1) / ce_rows_ * ce_rows_;
      head_run_ = std::min(N, last0 + std::min(ce_rows_, (head_m_ - last0 + g - 1) / g * g));
      targets.resize(size_t(head_run_), -100);
      be_.upload(targets_, targets.data(), targets.size());
      be_.upload(head_rows_, rows.data(), rows.size());
      be_.upload(head_row_of_, row_of.data(), row_of.size());
    }
  }
  be_.upload(positions_, b.positions, size_t(N));
  be_.upload(doc_start_, ds.data(), size_t(N));
  if (!tok_onehot_.empty()) {   // which inputs are trainable tokens: the embedding rows' gradient is onehotᵀ·dx₀
    std::vector<float> onehot(size_t(N) * n_tok_, 0.0f);
    for (int i = 0; i < N; i++) {
      auto it = std::lower_bound(spec_.token_indices.begin(), spec_.token_indices.end(), b.tokens[i]);
      if (it != spec_.token_indices.end() && *it == b.tokens[i]) onehot[size_t(i) * n_tok_ + size_t(it - spec_.token_indices.begin())] = 1.0f;
    }
    be_.upload(tok_onehot_, onehot.data(), onehot.size());
  }
}

// ---- linear + LoRA, one input group at a time ---------------------------------------------------------------
//
// Per adapted projection t of a group reading x (N, in):  y_t = c_in + x·W_tᵀ (+ bias) + scale·xa_t·B_tᵀ,
// xa_t = drop_t(x)·A_tᵀ (N, r). The group's outputs sit side by side in one buffer y (q|k|v, gate|up) and, with
// plain weights, its weights are stacked by rows in one matrix W_g, so the base part is ONE GEMM; without dropout
// the x·Aᵀ of the whole group is one GEMM too (A_q|A_k|A_v are contiguous), and so are its dA and its dx
// contribution. Folded groups also carry the up-projection (forward) and the dxa·A term (backward) inside the
// base GEMM (TransformerOptions::fold_lora). Residual projections (o, down) read the residual as the GEMM's C,
// so no copy of it is made.

int Transformer::input_width(int group) const {
  const int qd = cfg_.num_heads * cfg_.head_dim;
  return group == kGroupO ? qd : group == kGroupDown ? cfg_.intermediate_size : cfg_.hidden_size;
}

int Transformer::out_of(int target) const {
  const int qd = cfg_.num_heads * cfg_.head_dim, kvd = cfg_.num_kv_heads * cfg_.head_dim;
  return target == kQ ? qd : (target == kK || target == kV) ? kvd : (target == kGate || target == kUp)
                                                                        ? cfg_.intermediate_size
                                                                        : cfg_.hidden_size;
}

int Transformer::col_of(int target) const {
  const int qd = cfg_.num_heads * cfg_.head_dim, kvd = cfg_.num_kv_heads * cfg_.head_dim;
  return target == kK ? qd : target == kV ? qd + kvd : target == kUp ? cfg_.intermediate_size : 0;
}

int Transformer::out_width(int group) const {
  int w = 0;
  for (int t : kGroupTargets[group])
    if (t >= 0) w += out_of(t);
  return w;
}

int Transformer::group_dy_ld(int group) const {
  if (group == kGroupO || group == kGroupDown) {   // both read d(residual): one buffer, spare columns for either
    const int spare = std::max(fold_[kGroupO] ? group_width_[kGroupO] : 0, fold_[kGroupDown] ? group_width_[kGroupDown] : 0);
    return cfg_.hidden_size + spare;
  }
  return out_width(group) + (fold_[group] ? group_width_[group] : 0);
}

int Transformer::first_slot(int layer, int group) const {
  for (int t : kGroupTargets[group])
    if (t >= 0 && slot_of_[size_t(layer)][size_t(t)] >= 0) return slot_of_[size_t(layer)][size_t(t)];
  return -1;
}

Tensor Transformer::xa_of(const LayerActs& a, int group, int* ld) const {
  if (!fold_[group]) {
    *ld = group_width_[group];
    return a.xa[group];
  }
  const Tensor& in = group == kGroupQKV ? a.xn1 : group == kGroupO ? a.att : group == kGroupGateUp ? a.xn2 : a.h;
  *ld = input_ld(group);
  return in.from(size_t(input_width(group)));
}

void Transformer::group_forward(int layer, int group, const Tensor& x, int N, const Tensor& y, int ld_y,
                                const Tensor* c_in, const Tensor& xa, int ld_xa, uint64_t seed, bool need_y) {
  const int r = spec_.r, rg = group_width_[group], in = input_width(group), ld_x = input_ld(group);
  const float p = dropout_p();
  const bool drop = p > 0 && seed != 0;
  const LayerW& W = layers_[size_t(layer)];
  const float beta_in = c_in ? 1.0f : 0.0f;
  if (rg > 0 && !drop) {   // xa (N, g·r) = x · [A_t1; A_t2; …]ᵀ, A of the group's first adapted projection onward
    const LoraSlot& s0 = slots_[size_t(first_slot(layer, group))];
    be_.matmul_ex(xa, xa, x, params_.slice(s0.off_a, size_t(rg) * in), N, rg, in, false, true, 1.0f, 0.0f, ld_x, 0,
                  ld_xa);
  }
  if (!need_y) {   // only xa: with dropout each projection's x·Aᵀ reads its own masked x
    if (rg > 0 && drop)
      for (int t : kGroupTargets[group]) {
        const int si = t >= 0 ? slot_of_[size_t(layer)][size_t(t)] : -1;
        if (si < 0) continue;
        const LoraSlot& s = slots_[size_t(si)];
        be_.lora_dropout(scratch_in_, x, N, in, p, lora_seed(seed, layer, t));
        be_.matmul_ex(xa.from(size_t(s.col)), xa.from(size_t(s.col)), scratch_in_,
                      params_.slice(s.off_a, size_t(r) * in), N, r, in, false, true, 1.0f, 0.0f, 0, 0, ld_xa);
      }
    return;
  }
  if (merged_) {   // y = c_in + [x | xa]·W_ext[:out]ᵀ (folded: K = in + g·r) or c_in + x·W_gᵀ: one GEMM
    const int K = fold_[group] ? in + rg : in;
    be_.matmul_ex(y, c_in ? *c_in : y, x, W.group_w[group], N, out_width(group), K, false, true, 1.0f, beta_in, ld_x,
                  input_ld(group), ld_y);
  } else {         // NF4: one dequantizing GEMM per projection into its column block
    for (int t : kGroupTargets[group]) {
      if (t < 0) continue;
      const Tensor y_t = y.from(size_t(col_of(t)));
      be_.matmul_ex(y_t, c_in ? *c_in : y_t, x, W.proj(t), N, out_of(t), in, false, true, 1.0f, beta_in, ld_x, 0, ld_y);
    }
  }
  if (rg > 0 && !fold_[group]) {   // unfolded LoRA: y_t += scale·xa_t·B_tᵀ
    for (int t : kGroupTargets[group]) {
      const int si = t >= 0 ? slot_of_[size_t(layer)][size_t(t)] : -1;
      if (si < 0) continue;
      const LoraSlot& s = slots_[size_t(si)];
      const Tensor xa_t = xa.from(size_t(s.col));   // column block, row pitch ld_xa
      if (drop) {
        be_.lora_dropout(scratch_in_, x, N, in, p, lora_seed(seed, layer, t));
        be_.matmul_ex(xa_t, xa_t, scratch_in_, params_.slice(s.off_a, size_t(r) * in), N, r, in, false, true, 1.0f,
                      0.0f, 0, 0, ld_xa);
      }
      const Tensor y_t = y.from(size_t(col_of(t)));
      be_.matmul_ex(y_t, y_t, xa_t, params_.slice(s.off_b, size_t(s.out) * r), N, s.out, r, false, true, lora_scale_,
                    1.0f, ld_xa, 0, ld_y);
    }
  }
  if (group == kGroupQKV && cfg_.attention_bias) be_.add_bias(y, W.bqkv, N, out_width(group));   // ld_y = width
}

// dx (N, in) WRITES Σ_t dy_t·W_t + the LoRA input gradients; accumulates dA, dB of every adapted projection:
//   dxa_t = scale·dy_t·B_t,  dB_t += scale·dy_tᵀ·xa_t,  dA_t += dxa_tᵀ·drop_t(x),  dx += drop_t(dxa_t·A_t).
// Folded: dxa goes into dy's spare columns and dx = [dy | dxa]·W_ext[:, :in] is one GEMM. Unfolded: the LoRA
// part writes dx first and the compute-bound base GEMM accumulates into it.
void Transformer::group_backward(int layer, int group, const Tensor& dx, const Tensor& x, int N, const Tensor& dy,
                                 int ld_dy, const Tensor& xa, int ld_xa, uint64_t seed, bool need_dx) {
  const int r = spec_.r, rg = group_width_[group], in = input_width(group), ld_x = input_ld(group);
  const int out = out_width(group);
  const float p = dropout_p();
  const bool drop = p > 0 && seed != 0;
  const LayerW& W = layers_[size_t(layer)];
  const bool fold = fold_[group];
  const Tensor dxa = fold ? dy.from(size_t(out)) : dxa_;   // (N, g·r)
  const int ld_dxa = fold ? ld_dy : rg;
  bool dx_written = false;
  if (rg > 0) {
    // Folded: dxa_g = dy·[… s·B_t …] for the whole group in one GEMM, reading the block-diagonal s·B columns of
    // W_ext (the values the forward used); unfolded: one GEMM per projection from the fp32 B.
    if (fold) {
      be_.matmul_ex(dxa, dxa, dy, W.group_w[group].from(size_t(in)), N, rg, out,
                    false, false, 1.0f, 0.0f, ld_dy, input_ld(group), ld_dxa);
    } else {
      be_.side_join();   // dxa_ is shared by the unfolded groups: the previous group's side work reads it
      for (int t : kGroupTargets[group]) {
        const int si = t >= 0 ? slot_of_[size_t(layer)][size_t(t)] : -1;
        if (si < 0) continue;
        const LoraSlot& s = slots_[size_t(si)];
        be_.matmul_ex(dxa.from(size_t(s.col)), dxa.from(size_t(s.col)), dy.from(size_t(col_of(t))),
                      params_.slice(s.off_b, size_t(s.out) * r), N, r, s.out, false, false, lora_scale_, 0.0f, ld_dy,
                      0, ld_dxa);
      }
    }
    // The weight gradients are read by nothing but the optimizer: side work, beside the main path's GEMMs.
    be_.side_begin();
    for (int t : kGroupTargets[group]) {   // dB_t += scale·dy_tᵀ·xa_t
      const int si = t >= 0 ? slot_of_[size_t(layer)][size_t(t)] : -1;
      if (si < 0) continue;
      const LoraSlot& s = slots_[size_t(si)];
      const Tensor dB = grads_.slice(s.off_b, size_t(s.out) * r);
      be_.matmul_ex(dB, dB, dy.from(size_t(col_of(t))), xa.from(size_t(s.col)), s.out, r, N, true, false, lora_scale_,
                    1.0f, ld_dy, ld_xa, 0);
    }
    const LoraSlot& s0 = slots_[size_t(first_slot(layer, group))];
    if (!drop) {   // the whole group at once: dA_g (g·r, in) += dxa_gᵀ·x
      Tensor dA = grads_.slice(s0.off_a, size_t(rg) * in);
      be_.matmul_ex(dA, dA, dxa, x, rg, in, N, true, false, 1.0f, 1.0f, ld_dxa, ld_x, 0);
    }
    be_.side_end();
    if (!drop) {   // dx = dxa_g·A_g (folded: inside the dX GEMM below)
      if (need_dx && !fold) {
        be_.matmul_ex(dx, dx, dxa, params_.slice(s0.off_a, size_t(rg) * in), N, in, rg, false, false, 1.0f, 0.0f,
                      ld_dxa, 0, 0);
        dx_written = true;
      }
    } else {       // each projection has its own dropout mask (never folded: ld_x == in)
      for (int t : kGroupTargets[group]) {
        const int si = t >= 0 ? slot_of_[size_t(layer)][size_t(t)] : -1;
        if (si < 0) continue;
        const LoraSlot& s = slots_[size_t(si)];
        const uint64_t ls = lora_seed(seed, layer, t);
        const Tensor dxa_t = dxa.from(size_t(s.col));
        Tensor dA = grads_.slice(s.off_a, size_t(r) * in);
        be_.lora_dropout(scratch_in_, x, N, in, p, ls);
        be_.matmul_ex(dA, dA, dxa_t, scratch_in_, r, in, N, true, false, 1.0f, 1.0f, ld_dxa, 0, 0);
        if (!need_dx) continue;
        be_.matmul_ex(scratch_dx_, scratch_dx_, dxa_t, params_.slice(s.off_a, size_t(r) * in), N, in, r, false, false,
                      1.0f, 0.0f, ld_dxa, 0, 0);
        if (!dx_written) {
          be_.lora_dropout(dx, scratch_dx_, N, in, p, ls);
          dx_written = true;
        } else {
          be_.lora_dropout(scratch_in_, scratch_dx_, N, in, p, ls);
          be_.add(dx, scratch_in_, size_t(N) * in);
        }
      }
    }
  }
  if (!need_dx) return;
  if (merged_) {   // dx (+)= [dy | dxa]·W_ext[:, :in] (folded: K = out + g·r) or dy·W_g: one GEMM
    const int K = fold ? out + rg : out;
    be_.matmul_ex(dx, dx, dy, W.group_w[group], N, in, K, false, false, 1.0f, dx_written ? 1.0f : 0.0f, ld_dy,
                  input_ld(group), 0);
  } else {
    for (int t : kGroupTargets[group]) {
      if (t < 0) continue;
      const Tensor dy_t = dy.from(size_t(col_of(t)));
      be_.matmul_ex(dx, dx, dy_t, W.proj(t), N, in, out_of(t), false, false, 1.0f, dx_written ? 1.0f : 0.0f, ld_dy, 0, 0);
      dx_written = true;
    }
  }
}

// ---- one layer ----------------------------------------------------------------------------------------------

void Transformer::layer_forward(int l, const Tensor& x, const Tensor& x_next, LayerActs& a, const AttnCtx& ctx, int B,
                                int T, const Tensor& positions, const Tensor& doc_start, uint64_t seed, bool recompute) {
  const ModelConfig& c = cfg_;
  const LayerW& W = layers_[size_t(l)];
  const int N = B * T, C = c.hidden_size, F = c.intermediate_size, NH = c.num_heads, NKV = c.num_kv_heads,
            HD = c.head_dim, qd = NH * HD, kvd = NKV * HD, P = qd + 2 * kvd;
  const double eps = c.rms_norm_eps;
  const bool p1 = c.norm_plus_one;
  int ld_xa = 0;
  Tensor xa = xa_of(a, kGroupQKV, &ld_xa);
  be_.rmsnorm_forward(a.xn1, a.rstd1, x, W.attn_norm, N, C, eps, p1, input_ld(kGroupQKV));
  group_forward(l, kGroupQKV, a.xn1, N, a.qkv, P, nullptr, xa, ld_xa, seed);
  // q and k are the first NH + NKV heads of every qkv row: one rotation for both
  be_.rope_forward(a.qkv, positions, inv_freq_, N, NH + NKV, HD, P);
  const Tensor k = a.qkv.from(size_t(qd)), v = a.qkv.from(size_t(qd + kvd));
  Backend::AttnPitch pitch;
  pitch.q = P;
  pitch.out = input_ld(kGroupO);
  if (ctx.k_cache.empty()) {   // training / eval: the queries see this micro-batch's keys, read in place
    pitch.kv = P;
    be_.attention_forward(a.att, a.lse, a.qkv, k, v, doc_start, B, T, T, T, 0, NH, NKV, HD, pitch);
  } else {                     // generation: append the new keys/values to the cache, attend over all of it
    be_.copy_2d(ctx.k_cache.slice(size_t(ctx.q_offset) * kvd, size_t(N) * kvd), kvd, k, P, N, kvd);
    be_.copy_2d(ctx.v_cache.slice(size_t(ctx.q_offset) * kvd, size_t(N) * kvd), kvd, v, P, N, kvd);
    pitch.kv = kvd;
    be_.attention_forward(a.att, a.lse, a.qkv, ctx.k_cache, ctx.v_cache, doc_start, B, T, ctx.Tk, ctx.Tk_stride,
                          ctx.q_offset, NH, NKV, HD, pitch);
  }
  // res_mid = x + att·Woᵀ: the GEMM reads x as its C operand
  xa = xa_of(a, kGroupO, &ld_xa);
  group_forward(l, kGroupO, a.att, N, a.res_mid, C, &x, xa, ld_xa, seed);
  xa = xa_of(a, kGroupGateUp, &ld_xa);
  be_.rmsnorm_forward(a.xn2, a.rstd2, a.res_mid, W.mlp_norm, N, C, eps, p1, input_ld(kGroupGateUp));
  if (mlp_rows_ > 0) {   // chunked MLP: backward recomputes it chunk by chunk, so the recompute stops here
    if (!recompute) mlp_forward_chunked(l, a, x_next, N, seed);
    return;
  }
  group_forward(l, kGroupGateUp, a.xn2, N, a.gu, 2 * F, nullptr, xa, ld_xa, seed);
  be_.glu_forward(a.h, a.gu, a.gu.from(size_t(F)), N, F, glu_, input_ld(kGroupDown), 2 * F);
  xa = xa_of(a, kGroupDown, &ld_xa);
  group_forward(l, kGroupDown, a.h, N, x_next, C, &a.res_mid, xa, ld_xa, seed, !recompute);
}

// Lean sets (TransformerOptions::keep_group_inputs false): layer l's xn1, xn2 and h into the shared set, from the
// layer's kept input x, res_mid and gate|up (the rmsnorms rewrite rstd1/rstd2 with the values they hold); a
// folded group's xa (its input's tail columns) with the forward's x·Aᵀ GEMM. An unfolded group's xa is kept per layer (a.xa) and needs nothing.
// With keep_mlp_input, a.h is the layer's own (down's folded xa included), as its forward left it: only xn1 and
// xn2 are refilled.
void Transformer::recompute_group_inputs(int l, const Tensor& x, LayerActs& a, int N, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const LayerW& W = layers_[size_t(l)];
  const int C = c.hidden_size, F = c.intermediate_size;
  // The side work issued so far (layer l+1's LoRA weight gradients) reads the shared inputs: xn1 and xn2 always,
  // h unless each layer keeps its own. A layer's own h is written by its forward only and read by its backward
  // only (the main path's dh GEMM, the side stream's dB/dA of down), and the next write, the next step's forward,
  // comes after run()'s final side_join: h needs no join of its own, but xn1 is rewritten next, so the join stays.
  be_.side_join();
  int ld_xa = 0;
  Tensor xa;
  be_.rmsnorm_forward(a.xn1, a.rstd1, x, W.attn_norm, N, C, c.rms_norm_eps, c.norm_plus_one, input_ld(kGroupQKV));
  if (fold_[kGroupQKV]) {
    xa = xa_of(a, kGroupQKV, &ld_xa);
    group_forward(l, kGroupQKV, a.xn1, N, Tensor(), 0, nullptr, xa, ld_xa, seed, false);
  }
  be_.rmsnorm_forward(a.xn2, a.rstd2, a.res_mid, W.mlp_norm, N, C, c.rms_norm_eps, c.norm_plus_one,
                      input_ld(kGroupGateUp));
  if (fold_[kGroupGateUp]) {
    xa = xa_of(a, kGroupGateUp, &ld_xa);
    group_forward(l, kGroupGateUp, a.xn2, N, Tensor(), 0, nullptr, xa, ld_xa, seed, false);
  }
  if (!lean_h()) return;   // keep_mlp_input: h and down's xa are the layer's own
  be_.glu_forward(a.h, a.gu, a.gu.from(size_t(F)), N, F, glu_, input_ld(kGroupDown), 2 * F);
  if (fold_[kGroupDown]) {
    xa = xa_of(a, kGroupDown, &ld_xa);
    group_forward(l, kGroupDown, a.h, N, Tensor(), 0, nullptr, xa, ld_xa, seed, false);
  }
}

// dres_ holds d(x_next) on entry and d(x) on exit (not for layer 0, see below). Everything the layer's forward
// produced is still in `a` (per-layer sets, or the shared set that the checkpointing recompute has just filled).
void Transformer::layer_backward(int l, const Tensor& x, LayerActs& a, int B, int T, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const LayerW& W = layers_[size_t(l)];
  const int N = B * T, C = c.hidden_size, F = c.intermediate_size, NH = c.num_heads, NKV = c.num_kv_heads,
            HD = c.head_dim, qd = NH * HD, kvd = NKV * HD, P = qd + 2 * kvd;
  const bool p1 = c.norm_plus_one;
  // x_next = res_mid + h·Wdᵀ: d(res_mid) = dres (kept in dres_), dh = dres·Wd (+ LoRA)
  const int ld_dres = group_dy_ld(kGroupO);
  int ld_xa = 0;
  Tensor xa;
  if (mlp_rows_ > 0) {
    mlp_backward_chunked(l, a, N, seed);
  } else {
    xa = xa_of(a, kGroupDown, &ld_xa);
    group_backward(l, kGroupDown, dh_, a.h, N, dres_, ld_dres, xa, ld_xa, seed, true);
    const int ld_dgu = group_dy_ld(kGroupGateUp);
    // side_join() before each write of a buffer that the side work issued so far reads (dgu_, dres_, dqkv_)
    be_.side_join();
    be_.glu_backward(dgu_, dgu_.from(size_t(F)), dh_, a.gu, a.gu.from(size_t(F)), N, F, glu_, 2 * F, ld_dgu);
    xa = xa_of(a, kGroupGateUp, &ld_xa);
    group_backward(l, kGroupGateUp, dxn_, a.xn2, N, dgu_, ld_dgu, xa, ld_xa, seed, true);
  }
  be_.side_join();
  be_.rmsnorm_backward(dres_, dxn_, a.res_mid, W.mlp_norm, a.rstd2, N, C, p1, ld_dres);
  // res_mid = x + att·Woᵀ
  xa = xa_of(a, kGroupO, &ld_xa);
  group_backward(l, kGroupO, datt_, a.att, N, dres_, ld_dres, xa, ld_xa, seed, true);
  // dq | dk | dv land side by side in dqkv_, so q/k/v's input gradient is one GEMM
  const int ld_dqkv = group_dy_ld(kGroupQKV);
  Backend::AttnPitch pitch;
  pitch.q = pitch.kv = P;
  pitch.out = input_ld(kGroupO);
  pitch.dq = pitch.dkv = ld_dqkv;
  const Tensor k = a.qkv.from(size_t(qd)), v = a.qkv.from(size_t(qd + kvd));
  be_.side_join();
  be_.attention_backward(dqkv_, dqkv_.from(size_t(qd)),
                         dqkv_.from(size_t(qd + kvd)), datt_, a.qkv, k, v, a.att, a.lse,
                         doc_start_, B, T, NH, NKV, HD, pitch);
  be_.rope_backward(dqkv_, positions_, inv_freq_, N, NH + NKV, HD, ld_dqkv);
  // Layer 0's input is the frozen embedding: its gradient is never used, so q/k/v's dX GEMM and the norm's
  // backward are skipped there (their LoRA gradients do not depend on them) — unless token rows are trained.
  const bool need_dx = l > 0 || n_tok_ > 0;
  xa = xa_of(a, kGroupQKV, &ld_xa);
  group_backward(l, kGroupQKV, dxn_, a.xn1, N, dqkv_, ld_dqkv, xa, ld_xa, seed, need_dx);
  if (need_dx) {
    be_.side_join();
    be_.rmsnorm_backward(dres_, dxn_, x, W.attn_norm, a.rstd1, N, C, p1, ld_dres);
  }
}

// ---- the MLP in token chunks (TransformerOptions::mlp_chunk_tokens) ------------------------------------------
// The MLP is token-wise, so rows [r0, r0+n) go through gate|up → act → down on their own; the chunk buffers (a.gu,
// a.h, dh_, dgu_) hold n rows. LoRA weight gradients accumulate over the chunks (the GEMMs' beta = 1), the input
// gradient dxn_ and the output x_next are written row block by row block. Dropout is 0 here (its masks index the
// whole (N, in) input), so the seeds are only passed along.

Tensor Transformer::mlp_xa(LayerActs& a, int group, int r0, int* ld) const {
  // gate|up's xa lives beside xn2 (folded) or in a.xa (N rows); down's beside the chunk's h (folded: chunk rows)
  Tensor xa = xa_of(a, group, ld);
  return group == kGroupDown && fold_[group] ? xa : xa.from(size_t(r0) * *ld);
}

void Transformer::mlp_forward_chunked(int l, LayerActs& a, const Tensor& x_next, int N, uint64_t seed) {
  const int C = cfg_.hidden_size, F = cfg_.intermediate_size;
  for (int r0 = 0; r0 < N; r0 += mlp_rows_) {
    const int n = std::min(mlp_rows_, N - r0);
    int ld_xa = 0;
    Tensor xa = mlp_xa(a, kGroupGateUp, r0, &ld_xa);
    group_forward(l, kGroupGateUp, a.xn2.from(size_t(r0) * input_ld(kGroupGateUp)), n, a.gu, 2 * F, nullptr, xa, ld_xa, seed);
    be_.glu_forward(a.h, a.gu, a.gu.from(size_t(F)), n, F, glu_, input_ld(kGroupDown), 2 * F);
    xa = mlp_xa(a, kGroupDown, r0, &ld_xa);
    const Tensor res_mid = a.res_mid.from(size_t(r0) * C);
    group_forward(l, kGroupDown, a.h, n, x_next.from(size_t(r0) * C), C, &res_mid, xa, ld_xa, seed);
  }
}

void Transformer::mlp_backward_chunked(int l, LayerActs& a, int N, uint64_t seed) {
  const int C = cfg_.hidden_size, F = cfg_.intermediate_size;
  const int ld_dres = group_dy_ld(kGroupO), ld_dgu = group_dy_ld(kGroupGateUp), ld_xn2 = input_ld(kGroupGateUp);
  for (int r0 = 0; r0 < N; r0 += mlp_rows_) {
    const int n = std::min(mlp_rows_, N - r0);
    // the previous chunk's side work (LoRA weight gradients) reads a.gu, a.h and dgu_: done before they are rewritten
    be_.side_join();
    const Tensor xn2 = a.xn2.from(size_t(r0) * ld_xn2);
    int ld_xa_gu = 0, ld_xa_d = 0;
    const Tensor xa_gu = mlp_xa(a, kGroupGateUp, r0, &ld_xa_gu);
    group_forward(l, kGroupGateUp, xn2, n, a.gu, 2 * F, nullptr, xa_gu, ld_xa_gu, seed);   // recompute gate|up, h
    be_.glu_forward(a.h, a.gu, a.gu.from(size_t(F)), n, F, glu_, input_ld(kGroupDown), 2 * F);
    const Tensor xa_d = mlp_xa(a, kGroupDown, r0, &ld_xa_d);
    group_forward(l, kGroupDown, a.h, n, Tensor(), C, nullptr, xa_d, ld_xa_d, seed, false);  // down's xa only
    group_backward(l, kGroupDown, dh_, a.h, n, dres_.from(size_t(r0) * ld_dres), ld_dres, xa_d, ld_xa_d, seed, true);
    be_.side_join();
    be_.glu_backward(dgu_, dgu_.from(size_t(F)), dh_, a.gu, a.gu.from(size_t(F)), n, F, glu_, 2 * F, ld_dgu);
    group_backward(l, kGroupGateUp, dxn_.from(size_t(r0) * C), xn2, n, dgu_, ld_dgu, xa_gu, ld_xa_gu, seed, true);
  }
}

// ---- head: chunked cross-entropy ------------------------------------------------------------------------------

// Rows without a target (prompt tokens, padding: target -100) add 0 to the loss and 0 to every gradient, so the head
// runs over the M rows that have one: gather their final-norm rows into M compact rows, run the cross-entropy there,
// and scatter the compact d(xf) back into dxn_ with zero rows elsewhere. The per-row arithmetic is the same as over
// all N rows, and the sum skips only zeros. M = N runs in place; M = 0 runs no GEMM at all.
double Transformer::head_loss(int N, bool backward, float grad_scale) {
  const int C = cfg_.hidden_size;
  if (!head_compact(N)) return head_ce(xf_, dxn_, N, backward, grad_scale);
  const int M = head_m_;
  if (M == 0) {
    if (backward) be_.fill(dxn_, 0.0f, size_t(N) * C);
    return 0.0;
  }
  const Tensor& xf_rows = head_xf();
  be_.gather_rows(xf_rows, xf_, head_rows_, M, C);   // (M, C) ← xf_ rows head_rows_[0..M)
  if (head_run_ > M) be_.fill(xf_rows.slice(size_t(M) * C, size_t(head_run_ - M) * C), 0.0f, size_t(head_run_ - M) * C);
  // xf_ is not read again in this step (the final norm's backward reads res(L) and rstdf_): it takes the compact
  // d(xf), so no buffer beyond dxn_ is needed. The padding rows (head_run_ > M) add 0 and are never scattered.
  const double total = head_ce(xf_rows, xf_, head_run_, backward, grad_scale);
  if (backward) be_.gather_rows(dxn_, xf_, head_row_of_, N, C);   // (N, C) ← compact rows, zeros for no target
  return total;
}

double Transformer::head_ce(const Tensor& xf_all, const Tensor& dxf_all, int n_rows, bool backward, float grad_scale) {
  const int C = cfg_.hidden_size, V = cfg_.vocab_size;
  const int nvc = (V + ce_vc_ - 1) / ce_vc_;
  for (int r0 = 0; r0 < n_rows; r0 += ce_rows_) {
    const int n = std::min(ce_rows_, n_rows - r0);
    Tensor xf = xf_all.slice(size_t(r0) * C, size_t(n) * C);
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
    Tensor dxf = dxf_all.slice(size_t(r0) * C, size_t(n) * C);
    for (int vi = 0; vi < nvc; vi++) {
      const int v0 = vi * ce_vc_, vc = std::min(ce_vc_, V - v0);
      Tensor lg = logits_.slice(0, size_t(n) * vc);
      Tensor w = head_.slice(size_t(v0) * C, size_t(vc) * C);
      if (nvc > 1) be_.matmul(lg, xf, w, n, vc, C, false, true, 1.0f, 0.0f);   // recompute this chunk
      be_.ce_grad(lg, tg, ce_lse_, n, vc, v0, grad_scale);
      if (n_tok_ > 0) token_head_grads(lg, xf, n, v0, vc);
      be_.matmul(dxf, lg, w, n, C, vc, false, false, 1.0f, vi == 0 ? 0.0f : 1.0f);
    }
  }
  // one download per micro-batch (a GPU backend keeps running until here); double keeps the f64 backend's digits
  std::vector<double> loss_host(static_cast<size_t>(n_rows));
  be_.download(ce_loss_, loss_host.data(), size_t(n_rows));
  double total = 0;
  for (double x : loss_host) total += x;
  return total;
}

// Each run of consecutive trainable tokens inside the chunk is one GEMM: d rows (k, C) += dlogits[:, cols]ᵀ · xf,
// the columns read with the logits' row pitch vc. A tied head adds into the embedding rows' gradient.
void Transformer::token_head_grads(const Tensor& dlogits, const Tensor& xf, int n, int v0, int vc) {
  const int C = cfg_.hidden_size;
  const std::vector<int>& idx = spec_.token_indices;
  for (size_t k = 0; k < idx.size();) {
    if (idx[k] < v0 || idx[k] >= v0 + vc) { k++; continue; }
    size_t end = k + 1;
    while (end < idx.size() && idx[end] == idx[end - 1] + 1 && idx[end] < v0 + vc) end++;
    const int rows = int(end - k);
    Tensor d = grads_.slice(off_tok_head_ + k * C, size_t(rows) * C);
    be_.matmul_ex(d, d, dlogits.from(size_t(idx[k] - v0)), xf, rows, C, n, true, false, 1.0f, 1.0f, vc, 0, 0);
    k = end;
  }
}

// ---- whole model --------------------------------------------------------------------------------------------

double Transformer::run(const Batch& batch, bool backward, float grad_scale, uint64_t seed) {
  const ModelConfig& c = cfg_;
  const int B = batch.B, T = batch.T, N = B * T, C = c.hidden_size, L = c.num_layers;
  if (!batch.targets) throw EngineError("internal: batch without targets");
  ensure_buffers(N, backward);
  upload_batch(batch);
  refresh_folded_lora();   // the parameters may have changed since the last call (optimizer step, set_lora)
  const double emb_scale = c.scale_embeddings ? std::sqrt(double(C)) : 1.0;
  be_.embedding_forward(res(0), ids_, embed_, N, C, emb_scale);
  const bool per_layer = backward && !opt_.gradient_checkpointing;
  const bool offload = backward && offloading();
  for (int l = 0; l < L; l++) {
    LayerActs& a = per_layer ? acts_[size_t(l)] : acts_[0];
    if (offload) {   // layer l writes slot (l+1) % 2: wait for layer l−1's input to reach the host; send layer l's
      be_.wait_transfers();
      if (l < L - 1) be_.to_host_async(res_host(l), res(l), size_t(N) * C);
    }
    const AttnCtx ctx;
    layer_forward(l, res(l), res(l + 1), a, ctx, B, T, positions_, doc_start_, seed);
  }
  be_.rmsnorm_forward(xf_, rstdf_, res(L), final_norm_, N, C, c.rms_norm_eps, c.norm_plus_one, 0);
  const double loss = head_loss(N, backward, grad_scale);
  if (!backward) return loss;
  // dxn_ holds d(final norm output); dres_ becomes d(x_L).
  const int ld_dres = group_dy_ld(kGroupO);
  be_.fill(dres_, 0.0f, size_t(N) * ld_dres);
  be_.rmsnorm_backward(dres_, dxn_, res(L), final_norm_, rstdf_, N, C, c.norm_plus_one, ld_dres);
  for (int l = L - 1; l >= 0; l--) {
    LayerActs& a = per_layer ? acts_[size_t(l)] : acts_[0];
    if (offload) {   // layer l's input came back while layer l+1 ran; fetch layer l−1's into the other slot
      if (l < L - 1) be_.wait_transfers();
      if (l > 0) be_.from_host_async(res(l - 1), res_host(l - 1), size_t(N) * C);
    }
    if (!per_layer) {   // gradient checkpointing: recompute this layer's activations from its saved input
      be_.side_join();  // the last layer's side work still reads the shared activations
      const AttnCtx ctx;
      layer_forward(l, res(l), res(l + 1), a, ctx, B, T, positions_, doc_start_, seed, true);
    } else if (lean_acts()) {
      recompute_group_inputs(l, res(l), a, N, seed);
    }
    layer_backward(l, res(l), a, B, T, seed);
    if (layer_grads_hook_) layer_grads_hook_(l);
  }
  be_.side_join();   // the optimizer reads every gradient
  if (n_tok_ > 0) {  // dres_ now holds d(res(0)) = d(embedding output): rows of trainable tokens += scale·onehotᵀ·dres
    Tensor d = grads_.slice(off_tok_embed_, size_t(n_tok_) * C);
    be_.matmul_ex(d, d, tok_onehot_, dres_, n_tok_, C, N, true, false, float(emb_scale), 1.0f, 0, ld_dres, 0);
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
  const int C = c.hidden_size, L = c.num_layers, V = c.vocab_size;
  if (n <= 0) throw EngineError("internal: decode of zero tokens");
  if (cache_len_ + n > cache_cap_)
    throw EngineError("KV cache full: " + std::to_string(cache_len_ + n) + " > " + std::to_string(cache_cap_));
  ensure_buffers(n, false);
  if (cache_len_ == 0) refresh_folded_lora();   // parameters are fixed during one generation
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
  be_.embedding_forward(res(0), ids_, embed_, n, C, emb_scale);
  for (int l = 0; l < L; l++) {
    AttnCtx ctx;
    ctx.k_cache = k_cache_[size_t(l)];
    ctx.v_cache = v_cache_[size_t(l)];
    ctx.Tk = pos0 + n;
    ctx.Tk_stride = cache_cap_;
    ctx.q_offset = pos0;
    layer_forward(l, res(l), res(l + 1), acts_[0], ctx, 1, n, positions_, doc_start_, 0);
  }
  Tensor last = res(L).slice(size_t(n - 1) * C, size_t(C));
  be_.rmsnorm_forward(xf_, rstdf_, last, final_norm_, 1, C, c.rms_norm_eps, c.norm_plus_one, 0);
  for (int v0 = 0; v0 < V; v0 += ce_vc_) {
    const int vc = std::min(ce_vc_, V - v0);
    Tensor lg = logits_.slice(0, size_t(vc));
    be_.matmul(lg, xf_, head_.slice(size_t(v0) * C, size_t(vc) * C), 1, vc, C, false, true, 1.0f, 0.0f);
    be_.download(lg, logits_last + v0, size_t(vc));
  }
  cache_len_ += n;
}

}  // namespace nxft
