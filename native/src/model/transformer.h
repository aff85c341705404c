// transformer.h — the Llama-family decoder (llama, mistral, qwen2, gemma) with LoRA, written once against
// backend.h: forward, backward (LoRA gradients only — base weights are frozen), chunked cross-entropy head,
// optional per-layer gradient checkpointing, and a KV-cache decoder for generation.
//
// Shapes: B rows × T tokens per micro-batch, N = B·T; C hidden, F intermediate, NH/NKV heads, HD head_dim,
// V vocab, r LoRA rank. Layer l computes (HF order):
//   xn1 = rmsnorm(x)                        q = xn1·Wqᵀ (+bq) (+lora)   k, v likewise   rope(q), rope(k)
//   att = attention(q, k, v)                res_mid = x + att·Woᵀ (+lora)
//   xn2 = rmsnorm(res_mid)                  g = xn2·Wgᵀ (+lora), u = xn2·Wuᵀ (+lora), h = act(g)·u
//   x_next = res_mid + h·Wdᵀ (+lora)
// The head: logits = rmsnorm(x_L)·Wᵀ (W = lm_head or the tied embedding), consumed chunk by chunk.
// "+lora" is scale·(x·Aᵀ)·Bᵀ. Projections reading the same input (q|k|v, gate|up) share one x·Aᵀ GEMM; with
// fold_lora the up-projection rides in the base GEMM as extra K columns (TransformerOptions, group_forward).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>
#include "backend/backend.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/weights.h"

namespace nxft {

struct TransformerOptions {
  bool gradient_checkpointing = false;  // keep only each layer's input; recompute the layer in backward
  bool quantize_nf4 = false;            // QLoRA: store the seven linear weights of every layer as NF4
  // Fold the LoRA up-projection of q/k/v, gate/up and down into the base GEMM: the weight is kept as
  // W_ext = [W | s·B] (out, in + g·r) and the input as [x | xa], so y = [x | xa]·W_extᵀ is one GEMM and the
  // memory-bound "y += s·xa·Bᵀ" pass (a full write of y) disappears. Needs plain (not NF4) weights and LoRA
  // dropout 0 (the base input and the LoRA input must be the same x); otherwise the unfolded path runs.
  bool fold_lora = true;
  // Cross-entropy head: logits are computed for (rows × vocab chunk) at a time, never (N × V).
  // V ≤ ce_vocab_chunk (every vocabulary up to Gemma's 256K by default) → one fused pass per row block (loss and
  // dlogits from the same buffer); bigger V → online logsumexp over chunks plus a recompute pass.
  int64_t ce_max_logits = int64_t(1) << 25;   // elements of the logits buffer (rows × vocab chunk)
  int ce_vocab_chunk = 1 << 18;               // vocabulary columns per chunk
};

// One micro-batch in host memory: (B, T) int32 arrays, as in a token shard row.
struct Batch {
  const int32_t* tokens = nullptr;
  const int32_t* targets = nullptr;    // -100 = no loss
  const int32_t* positions = nullptr;  // 0 starts a document
  int B = 0, T = 0;
};

class Transformer {
 public:
  // Uploads the base weights (the caller may free `weights` afterwards). `lora` may be null (no adapter).
  Transformer(Backend& be, const ModelWeights& weights, const LoraSpec* lora, const TransformerOptions& opt);
  // Allocates the weights without values: fill them with load_weights(dir) (streams one tensor at a time from
  // an HF folder, so the host never holds the whole model), set_weight, or on the backend via weight_tensors().
  Transformer(Backend& be, const ModelConfig& config, const LoraSpec* lora, const TransformerOptions& opt);
  // Shapes checked against the config; errors name the tensor. on_progress(done, total) after each tensor.
  void load_weights(const std::string& hf_dir, const std::function<void(size_t, size_t)>& on_progress = nullptr);
  // The frozen weights by HF name, in load order (NF4 tensors appear once set). A folded projection's weight
  // is stored with a wider row (see TransformerOptions::fold_lora).
  std::vector<std::pair<std::string, Tensor>> weight_tensors() const;
  void set_weight(size_t index, const std::vector<float>& values);   // index into weight_tensors()
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return be_; }

  // ---- LoRA parameters: one flat fp32 buffer. Per layer: the A of every adapted target in target order
  // (q, k, v, o, gate, up, down), then their B. So the A of projections that share an input (q|k|v, gate|up)
  // are one contiguous (g·r, in) matrix: one GEMM computes all their x·Aᵀ and one their dA. ----
  size_t num_lora_params() const { return n_params_; }
  const Tensor& lora_params() const { return params_; }
  const Tensor& lora_grads() const { return grads_; }
  void set_lora(const LoraAdapter& adapter);   // upload; the adapter must match the spec (shapes checked)
  void get_lora(LoraAdapter& adapter);          // download into an adapter with the same pairs
  void zero_grads();

  // ---- training ----
  // Forward + backward of one micro-batch. Accumulates LoRA gradients of (Σ token losses)·grad_scale and
  // returns Σ token losses (double) over targets != -100. dropout_seed selects the LoRA dropout masks.
  double forward_backward(const Batch& batch, float grad_scale, uint64_t dropout_seed);
  // Forward only (eval): Σ token losses; no dropout.
  double forward_loss(const Batch& batch);

  // ---- generation (B = 1) ----
  void reset_cache(int max_tokens);             // allocate/clear the KV cache for up to max_tokens positions
  int cached_tokens() const { return cache_len_; }
  // Feed n tokens at positions cached_tokens()..+n-1; writes the last token's logits (V floats) to host.
  void decode(const int32_t* ids, int n, float* logits_last);

  // Bytes the backend holds (weights + activations + parameters).
  size_t backend_bytes() const { return be_.bytes_in_use(); }

 private:
  struct LayerW {
    Tensor attn_norm, wq, wk, wv, wo, bq, bk, bv, mlp_norm, wg, wu, wd;
  };
  struct WeightSlot {  // one frozen tensor: HF name, where it lives, shape (rows 1 = vector), NF4 or not
    std::string name;
    Tensor* t;
    int rows, cols;
    int ld;              // stored row pitch: cols, or cols + g·r for a folded projection ([W | LoRA columns])
    bool nf4;
  };
  struct LoraSlot {   // one adapted projection
    int layer = 0, target = 0, in = 0, out = 0;
    size_t off_a = 0, off_b = 0;   // offsets into params_/grads_
    int col = 0;                   // first column of its x·Aᵀ inside its input group's (N, g·r) buffer
  };
  // Projections that read the same input form a group: q|k|v read xn1, o reads att, gate|up read xn2, down
  // reads h. Their LoRA down-projections x·Aᵀ live side by side in one (N, g·r) buffer per group.
  enum Group { kGroupQKV = 0, kGroupO = 1, kGroupGateUp = 2, kGroupDown = 3 };
  struct Proj {       // one projection of a group, forward: y = c_in + x·Wᵀ (+ bias) (+ scale·xa_t·B_tᵀ)
    int target;
    const Tensor* y;
    const Tensor* w;
    const Tensor* bias;   // may be empty
    int out;
    const Tensor* c_in;   // residual added into y (o_proj, down_proj), or null
  };
  struct ProjGrad {   // one projection of a group, backward: dy → dx, dA, dB
    int target;
    const Tensor* dy;
    const Tensor* w;
    int out;
  };
  struct LayerActs {  // what backward needs from a layer's forward; one set per layer, or one reused set
    Tensor xn1, rstd1, q, k, v, att, lse, res_mid, xn2, rstd2, g, u, h;
    Tensor xa[4];     // (N, g·r) LoRA down-projections per input group (see Group)
  };
  struct AttnCtx {    // where k/v go and what the queries see
    Tensor k, v;      // (B, Tk_stride, NKV, HD) destinations for this chunk's keys/values (already offset)
    Tensor k_all, v_all;
    int Tk = 0, Tk_stride = 0, q_offset = 0;
  };

  Backend& be_;
  ModelConfig cfg_;
  TransformerOptions opt_;
  bool has_lora_ = false;
  LoraSpec spec_;
  float lora_scale_ = 1.0f;
  Tensor embed_, head_, final_norm_, inv_freq_;
  bool tied_ = false;
  std::vector<LayerW> layers_;
  std::vector<WeightSlot> slots_w_;
  std::vector<LoraSlot> slots_;
  std::vector<std::array<int, 7>> slot_of_;   // [layer][target] → index into slots_, -1 if not adapted
  int group_width_[4] = {0, 0, 0, 0};         // g·r columns of each input group (every layer adapts the same targets)
  bool fold_[4] = {false, false, false, false};   // input groups whose LoRA up-projection rides in the base GEMM
  std::vector<Backend::ColumnBlockWrite> fold_jobs_;   // where each folded s·B goes in its W_ext
  size_t n_params_ = 0;
  Tensor params_, grads_;

  // activation buffers for the current N
  int cap_n_ = 0;
  std::vector<Tensor> res_;        // L+1 residual streams (N, C)
  std::vector<LayerActs> acts_;    // L (or 1 scratch set when checkpointing / eval)
  Tensor ids_, targets_, positions_, doc_start_;
  Tensor xf_, rstdf_;              // final norm output (N, C), rstd (N)
  Tensor dres_, dxn_, dq_, dk_, dv_, datt_, dh_, dg_, du_, dxa_, scratch_in_, scratch_dx_;
  Tensor logits_, ce_max_, ce_sum_, ce_tl_, ce_loss_, ce_lse_;
  int ce_rows_ = 0, ce_vc_ = 0;

  // generation cache
  int cache_cap_ = 0, cache_len_ = 0;
  std::vector<Tensor> k_cache_, v_cache_;

  void ensure_buffers(int N, bool training);
  void alloc_layer_acts(LayerActs& a, int N);
  void free_layer_acts(LayerActs& a);
  void upload_batch(const Batch& batch);
  void release(Tensor& t);

  // The input of group g in `a` (xn1, att, xn2, h) and its row pitch; its (N, g·r) LoRA down-projections
  // and their row pitch (the tail columns of the input when folded, else a.xa[g]).
  int input_width(int group) const;
  int input_ld(int group) const { return input_width(group) + (fold_[group] ? group_width_[group] : 0); }
  Tensor xa_of(const LayerActs& a, int group, int* ld) const;
  void refresh_folded_lora();   // write s·B of every folded projection into its W_ext (after params change)
  void group_forward(int layer, int group, const Tensor& x, int N, const Tensor& xa, int ld_xa,
                     std::initializer_list<Proj> projs, uint64_t seed);
  // need_dx = false skips the input gradient (layer 0's q/k/v: the frozen embedding needs none).
  void group_backward(int layer, int group, const Tensor& dx, const Tensor& x, int N, const Tensor& xa, int ld_xa,
                      std::initializer_list<ProjGrad> projs, uint64_t seed, bool need_dx = true);
  void layer_forward(int l, const Tensor& x, const Tensor& x_next, LayerActs& a, const AttnCtx& ctx, int B, int T,
                     const Tensor& positions, const Tensor& doc_start, uint64_t seed);
  void layer_backward(int l, const Tensor& x, LayerActs& a, int B, int T, uint64_t seed);
  double head_loss(int N, bool backward, float grad_scale);
  double run(const Batch& batch, bool backward, float grad_scale, uint64_t seed);
  uint64_t lora_seed(uint64_t seed, int layer, int target) const;
  float dropout_p() const { return has_lora_ ? float(spec_.dropout) : 0.0f; }
};

// Target name → index in kLoraTargets (q_proj 0 … down_proj 6), -1 when unknown.
int lora_target_index(const std::string& name);

}  // namespace nxft
