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
// "+lora" is scale·(x·Aᵀ)·Bᵀ. Projections reading the same input (an input group: q|k|v, o, gate|up, down) are
// computed together: with plain (not NF4) weights the group's weights are stacked by rows in one matrix, so q|k|v
// is ONE GEMM into one (N, qd + 2·kvd) buffer (q, k, v are its column blocks) and gate|up one GEMM into (N, 2F);
// backward, dq|dk|dv and dgate|dup live side by side too, so each group's input gradient is one GEMM. The group
// shares one x·Aᵀ GEMM; with fold_lora the up-projection rides in the base GEMM as extra K columns and the LoRA
// input gradient in the dX GEMM as extra K rows (TransformerOptions, group_forward, group_backward).
#pragma once
#include <algorithm>
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
  // With gradient_checkpointing: the saved layer inputs live in host memory (page-locked on CUDA) and only two
  // are on the device. Layer l's input goes out while layer l runs; in backward, layer l−1's comes back while
  // layer l's backward runs (double-buffered, async). Saves (L − 1)·N·C activations of device memory.
  bool offload_checkpoints = false;
  bool quantize_nf4 = false;            // QLoRA: store the seven linear weights of every layer as NF4
  // With quantize_nf4 on a 16-bit base: double-quantize the absmax as bitsandbytes' bnb_4bit_use_double_quant does
  // (model/quant4.h), so the weights are those of a double-quantized checkpoint of the same base.
  bool double_quant = false;
  // The token embedding (when not tied to the head) in host memory on a device backend (Backend::alloc_gather_table):
  // −1 GiB of device memory at Llama-3-8B for a PCIe read of the batch's rows each step.
  bool embedding_in_host_memory = false;
  // Fold the LoRA of every adapted input group into its base GEMMs. The group weight is kept as
  //   W_ext = [ W   | s·B_blk ]   (out + g·r, in + g·r): B_blk holds each projection's s·B_t in its own r columns,
  //           [ A_g |    0    ]   A_g the group's stacked A (g·r, in),
  // the input as [x | xa] and the output gradient as [dy | dxa], so forward y = [x | xa]·W_ext[:out]ᵀ and backward
  // dx = [dy | dxa]·W_ext[:, :in] are one GEMM each: the memory-bound "y += s·xa·Bᵀ" and "dx += dxa·A" passes
  // (a full write of y / dx each) disappear. Needs plain (not NF4) weights and LoRA dropout 0 (the base input
  // and the LoRA input must be the same x); otherwise the unfolded path runs.
  bool fold_lora = true;
  // Training without checkpointing keeps every layer's activations, but not the inputs of the q|k|v, gate|up and
  // down groups (xn1, xn2, h: 2·C + F of a layer's ≈ 7·C + 3·F values per token, a third of them): all layers write
  // those into one shared set and backward recomputes them from what is kept (layer input, res_mid, gate|up) with
  // two rmsnorms, one GLU and the folded groups' x·Aᵀ — about 1% of a layer's FLOPs, and the same values as the
  // forward's (same kernels, same inputs). true keeps them per layer instead (A/B benchmarks).
  bool keep_group_inputs = false;
  // Without checkpointing and with keep_group_inputs false: each layer keeps its own h (the down group's input,
  // with down's folded xa in its tail columns) while xn1 and xn2 stay shared and recomputed. h is F of the 2·C + F
  // values and most of the recompute's time: the GLU forward and the skinny down x·Aᵀ GEMM that reads all of h;
  // xn1/xn2 are two cheap rmsnorms. At 8B 2×2048 on an H200 keeping all three ran 17,386 tok/s at 33.74 GiB
  // against 17,025 at 28.38 GiB lean; h alone costs (L − 1)·N·F·2 bytes more than lean (3.4 GiB there), so it
  // should buy most of that 2% for well under the 5.36 GiB of keeping everything. Same values either way.
  bool keep_mlp_input = false;
  // With gradient_checkpointing and LoRA dropout 0: the MLP (gate|up → act → down) runs over this many tokens at a
  // time, forward and backward (it is token-wise), so gate|up, h and their gradients exist for one chunk, not for
  // all N tokens: at long context they were most of the activation memory (6F of the ~11C + 6F values per token).
  // 0 = whole micro-batch. Chunks of 16K tokens keep every GEMM large.
  int mlp_chunk_tokens = 16384;
  // The vocabulary rows embed_tokens / lm_head have in the checkpoint, when the model's vocab_size is larger (an
  // adapter with trainable tokens beyond the base's vocabulary, LoraSpec::token_indices): load_weights fills the
  // rows past it with the mean of the checkpoint's rows, as transformers' resize_token_embeddings does. 0 = same.
  int checkpoint_vocab_size = 0;
  // Cross-entropy head: logits are computed for (rows × vocab chunk) at a time, never (N × V).
  // V ≤ ce_vocab_chunk (every vocabulary up to Gemma's 256K by default) → one fused pass per row block (loss and
  // dlogits from the same buffer); bigger V → online logsumexp over chunks plus a recompute pass.
  int64_t ce_max_logits = int64_t(1) << 25;   // elements of the logits buffer (rows × vocab chunk)
  int ce_vocab_chunk = 1 << 18;               // vocabulary columns per chunk
  // The head runs over the rows that have a target (≠ -100) only, gathered into M compact rows: with SFT on responses
  // only, prompt and padding rows are ~45% of a batch and the two V-wide GEMMs per row are the step's largest.
  // true runs it over all N rows as before (ignored rows give loss 0 and gradient 0): the A/B reference of
  // test_head_rows and benchmarks. Same loss and gradients either way.
  bool head_all_rows = false;
  // The compact head's last row block is padded to a multiple of this many rows (rows with no target: loss 0,
  // gradient 0, and their final-norm rows are zeros). Its size is the batch's target count modulo the block, a new
  // GEMM shape on most steps; on a GPU some of those shapes got a poor cuBLASLt kernel (the 90×4096×128256 d(xf)
  // product took 2.9 ms where 523 rows take 0.8; session 11's profile). With 64 there are at most 9 shapes.
  // 1 (the default, and the CPU's) pads nothing.
  int head_row_granule = 1;
};

// The memory-first settings of QLoRA and of checkpoint offload (both are chosen to fit a card, not for speed):
// the token embedding in host memory, and logits blocks of 256 rows (128K vocabulary: 64 MB instead of 0.5 GB).
// docs/qlora-memory.md has the arithmetic. `train`, cuda_train_bench and memory_plan_test apply it alike.
inline void apply_memory_saving(TransformerOptions& o) {
  if (!o.quantize_nf4 && !o.offload_checkpoints) return;
  o.embedding_in_host_memory = true;
  o.ce_max_logits = std::min<int64_t>(o.ce_max_logits, int64_t(256) * 131072);
}

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
  // The frozen weights by HF name, in load order (NF4 tensors appear once set). A plain weight is a view of its
  // rows inside its group matrix, stored with a wider row when the group is folded (TransformerOptions::fold_lora).
  std::vector<std::pair<std::string, Tensor>> weight_tensors() const;
  void set_weight(size_t index, const std::vector<float>& values);   // index into weight_tensors()
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  const ModelConfig& config() const { return cfg_; }
  Backend& backend() { return be_; }

  // ---- LoRA parameters: one flat fp32 buffer. Per layer: the A of every adapted target in target order
  // (q, k, v, o, gate, up, down), then their B. So the A of projections that share an input (q|k|v, gate|up)
  // are one contiguous (g·r, in) matrix: one GEMM computes all their x·Aᵀ and one their dA.
  // Then, with trainable tokens (LoraSpec::token_indices, K rows): their embed_tokens rows (K, C), then their
  // lm_head rows (K, C) unless the head is tied (a tied head's rows are the embedding's: one parameter, both
  // gradients). Before each forward these rows are written over the frozen embed_tokens / lm_head rows. ----
  size_t num_lora_params() const { return n_params_; }
  const Tensor& lora_params() const { return params_; }
  const Tensor& lora_grads() const { return grads_; }
  void set_lora(const LoraAdapter& adapter);   // upload; the adapter must match the spec (shapes checked)
  void get_lora(LoraAdapter& adapter);          // download into an adapter with the same pairs
  void zero_grads();
  // Trainable token rows start as the model's current rows of embed_tokens / lm_head (call after the weights are
  // loaded: PEFT's TrainableTokensLayer copies the base rows at init). No-op without trainable tokens.
  void init_token_rows_from_weights();
  // Elements [first, first + count) of lora_grads() that hold layer l's gradients (a layer's pairs are
  // contiguous in the layout above); count 0 for a layer without adapted projections.
  std::pair<size_t, size_t> lora_layer_range(int layer) const;
  // Called by forward_backward right after layer l's backward has been issued, layers L−1 … 0: from then on
  // nothing writes layer l's gradients in this micro-batch. Data-parallel training starts the layer's
  // all-reduce here, so it overlaps the backward of the layers below (dist/collective.h). Empty: no call.
  void set_layer_grads_hook(std::function<void(int layer)> hook) { layer_grads_hook_ = std::move(hook); }

  // ---- training ----
  // Forward + backward of one micro-batch. Accumulates LoRA gradients of (Σ token losses)·grad_scale and
  // returns Σ token losses (double) over targets != -100. dropout_seed selects the LoRA dropout masks.
  double forward_backward(const Batch& batch, float grad_scale, uint64_t dropout_seed);
  // Forward only (eval): Σ token losses; no dropout.
  double forward_loss(const Batch& batch);
  // Sizes the activation buffers for micro-batches of up to N tokens now. `train` cuts rows after their last target,
  // so its micro-batches vary in length: reserving the run's largest cut batch at the start (train.cpp,
  // largest_batch_tokens) keeps the first step's memory the run's, so a run that does not fit fails at step 1, not
  // when its longest example comes along.
  void reserve_tokens(int N, bool training) { ensure_buffers(N, training); }

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
    // Plain weights: each input group's projections stacked by rows in one matrix (then the group's A rows when
    // folded); wq … wd are row-block views into it. NF4 weights are separate tensors and group_w stays empty.
    Tensor group_w[4];
    Tensor bqkv;         // qwen2's q|k|v biases side by side; bq, bk, bv are views
    Tensor& proj(int target) {   // the weight of LoRA target index (q_proj 0 … down_proj 6)
      Tensor* w[7] = {&wq, &wk, &wv, &wo, &wg, &wu, &wd};
      return *w[target];
    }
    const Tensor& proj(int target) const { return const_cast<LayerW*>(this)->proj(target); }
  };
  struct WeightSlot {  // one frozen tensor: HF name, where it lives, shape (rows 1 = vector), NF4 or not
    std::string name;
    Tensor* t;
    int rows, cols;
    int ld;              // stored row pitch: cols, or cols + g·r for a folded projection ([W | LoRA columns])
    bool nf4;
    bool view;           // a row block of LayerW::group_w or bqkv (not freed on its own)
  };
  struct LoraSlot {   // one adapted projection
    int layer = 0, target = 0, in = 0, out = 0;
    size_t off_a = 0, off_b = 0;   // offsets into params_/grads_
    int col = 0;                   // first column of its x·Aᵀ inside its input group's (N, g·r) buffer
  };
  // Projections that read the same input form a group: q|k|v read xn1, o reads att, gate|up read xn2, down
  // reads h. Their LoRA down-projections x·Aᵀ live side by side in one (N, g·r) buffer per group.
  enum Group { kGroupQKV = 0, kGroupO = 1, kGroupGateUp = 2, kGroupDown = 3 };
  struct LayerActs {  // what backward needs from a layer's forward; one set per layer, or one reused set
    // xn1, att, xn2, h: the inputs of the four groups (with their xa as tail columns when folded);
    // qkv (N, qd + 2·kvd): q | k | v side by side; gu (N, 2F): gate | up side by side.
    Tensor xn1, rstd1, qkv, att, lse, res_mid, xn2, rstd2, gu, h;
    Tensor xa[4];     // (N, g·r) LoRA down-projections of the unfolded input groups (see Group)
  };
  struct AttnCtx {    // what the queries see: training reads k/v in qkv; generation appends them to the KV cache
    Tensor k_cache, v_cache;   // (Tk_stride, kvd) cache rows of this layer, or empty in training
    int Tk = 0, Tk_stride = 0, q_offset = 0;
  };

  Backend& be_;
  ModelConfig cfg_;
  TransformerOptions opt_;
  Glu glu_;   // the MLP's activation, from config.hidden_act (silu → SwiGLU, else GeGLU-tanh)
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
  bool fold_[4] = {false, false, false, false};   // input groups whose LoRA rides in the base GEMMs (fold_lora)
  bool merged_ = false;                           // plain weights: one GEMM per input group (see LayerW)
  std::vector<Backend::ColumnBlockWrite> fold_jobs_;     // where each folded s·B goes in its W_ext
  std::vector<Backend::ColumnBlockWrite> fold_a_jobs_;   // where each folded group's A goes (W_ext's last rows)
  size_t n_params_ = 0;
  Tensor params_, grads_;
  // trainable tokens: K rows at off_tok_embed_ (and off_tok_head_ when untied) inside params_/grads_
  int n_tok_ = 0;
  size_t off_tok_embed_ = 0, off_tok_head_ = 0;
  std::vector<Backend::ColumnBlockWrite> token_jobs_;    // each trainable row → its embed_tokens / lm_head row
  Tensor tok_onehot_;                                    // (N, K) Activation: 1 where token t is trainable row k
  std::function<void(int)> layer_grads_hook_;

  // activation buffers for the current N
  int cap_n_ = 0;
  std::vector<Tensor> res_;        // L+1 residual streams (N, C); 2 device slots when offloading (see res())
  void* res_host_ = nullptr;       // offload: layer inputs 0 … L−2 in host memory, cap_n_·C elements each
  std::vector<LayerActs> acts_;    // L (or 1 scratch set when checkpointing / eval)
  // Lean per-layer sets (keep_group_inputs false): the one xn1, xn2, h that every set's own point to (h only when
  // keep_mlp_input is false).
  LayerActs shared_inputs_;
  bool lean_acts() const { return acts_.size() > 1 && !opt_.keep_group_inputs; }   // per-layer sets share them
  bool lean_h() const { return lean_acts() && !opt_.keep_mlp_input; }               // … and share h too
  Tensor ids_, targets_, positions_, doc_start_;
  Tensor xf_, rstdf_;              // final norm output (N, C), rstd (N)
  // dres_: d(residual stream) with spare columns for o/down's dxa when folded (row pitch group_dy_ld(kGroupO));
  // dqkv_: dq | dk | dv (+ dxa of q|k|v); dgu_: dgate | dup (+ dxa of gate|up); row pitches group_dy_ld().
  Tensor dres_, dxn_, dqkv_, datt_, dh_, dgu_, dxa_, scratch_in_, scratch_dx_;
  Tensor logits_, ce_max_, ce_sum_, ce_tl_, ce_loss_, ce_lse_;
  int ce_rows_ = 0, ce_vc_ = 0;
  // The head's rows (head_loss): head_m_ of the batch's N rows have a target. When the head is compacted
  // (head_compact(N)), targets_ holds their M targets, head_rows_ (M) their row numbers and head_row_of_ (N) each
  // row's position among them or -1; the compact final-norm rows (M, C) live in head_xf() and the compact gradient
  // rows in xf_ (free once gathered).
  int head_m_ = 0;
  int head_run_ = 0;   // rows the compact head runs: head_m_, its last block padded (head_row_granule)
  Tensor head_rows_, head_row_of_;
  Tensor xf_rows_;   // (N, C) compact rows when no dxn_ exists (an eval-only model); training uses dxn_
  bool head_compact(int N) const { return !opt_.head_all_rows && head_m_ < N; }
  // dxn_ is free from the end of the previous backward until the head's backward scatters d(xf) into it.
  const Tensor& head_xf() const { return dxn_.empty() ? xf_rows_ : dxn_; }

  // generation cache
  int cache_cap_ = 0, cache_len_ = 0;
  std::vector<Tensor> k_cache_, v_cache_;

  void ensure_buffers(int N, bool training);
  int mlp_rows_ = 0;   // rows of the MLP chunk buffers (TransformerOptions::mlp_chunk_tokens); 0 = not chunked
  // The MLP of a layer over chunks of mlp_rows_ tokens: forward writes x_next; backward recomputes gate|up, h and
  // down's xa per chunk, then back-propagates d(x_next) in dres_ into dxn_ (the norm's backward follows).
  void mlp_forward_chunked(int l, LayerActs& a, const Tensor& x_next, int N, uint64_t seed);
  void mlp_backward_chunked(int l, LayerActs& a, int N, uint64_t seed);
  Tensor mlp_xa(LayerActs& a, int group, int r0, int* ld) const;   // rows [r0, …) of gate|up's or down's xa
  bool offloading() const { return opt_.gradient_checkpointing && opt_.offload_checkpoints; }
  // The residual stream entering layer l (l = L: the final norm's input). Offloading keeps two device slots,
  // l even / l odd: layer l reads slot l % 2 and writes slot (l + 1) % 2.
  const Tensor& res(int l) const { return res_[offloading() ? size_t(l % 2) : size_t(l)]; }
  size_t res_bytes() const { return size_t(cap_n_) * cfg_.hidden_size * dtype_size(be_.dtype_of(Role::Activation)); }
  void* res_host(int l) const { return static_cast<char*>(res_host_) + size_t(l) * res_bytes(); }
  void alloc_layer_acts(LayerActs& a, int N, bool own_norm_outputs = true, bool own_h = true);
  void free_layer_acts(LayerActs& a);
  void recompute_group_inputs(int l, const Tensor& x, LayerActs& a, int N, uint64_t seed);
  void upload_batch(const Batch& batch);
  void release(Tensor& t);

  // The input of group g in `a` (xn1, att, xn2, h) and its row pitch; its (N, g·r) LoRA down-projections
  // and their row pitch (the tail columns of the input when folded, else a.xa[g]).
  int input_width(int group) const;
  int input_ld(int group) const { return input_width(group) + (fold_[group] ? group_width_[group] : 0); }
  int out_width(int group) const;      // Σ out of the group's projections: qd + 2·kvd, C, 2F, C
  int out_of(int target) const;        // one projection's out features
  int col_of(int target) const;        // its first column in the group output (= first row in the group weight)
  // Row pitch of a group's output gradient as the model stores it: out_width, plus g·r spare columns for dxa
  // when folded (the residual gradient dres_ serves o and down: its pitch covers both).
  int group_dy_ld(int group) const;
  int first_slot(int layer, int group) const;   // the group's first adapted projection (its A starts the group's A)
  Tensor xa_of(const LayerActs& a, int group, int* ld) const;
  // Write s·B and A of every folded group into its W_ext, and the trainable token rows into embed_tokens /
  // lm_head (after params change).
  void refresh_folded_lora();
  // d(trainable lm_head rows) += dlogitsᵀ·xf for the rows inside vocabulary chunk [v0, v0+vc) (head_loss).
  void token_head_grads(const Tensor& dlogits, const Tensor& xf, int n, int v0, int vc);
  // y (N, out_width) with row pitch ld_y WRITES c_in + x·W_gᵀ + LoRA (+ the q|k|v bias); c_in may be null.
  // need_y = false computes only the LoRA down-projections xa (checkpointing's recompute of down: backward
  // reads xa but not the layer's output).
  void group_forward(int layer, int group, const Tensor& x, int N, const Tensor& y, int ld_y, const Tensor* c_in,
                     const Tensor& xa, int ld_xa, uint64_t seed, bool need_y = true);
  // dx (N, in) WRITES the input gradient from dy (N, out_width) with row pitch ld_dy; accumulates dA, dB.
  // need_dx = false skips the input gradient (layer 0's q/k/v: the frozen embedding needs none).
  // dA and dB are side work (Backend::side_begin): they read dy, x and xa until the next side_join().
  void group_backward(int layer, int group, const Tensor& dx, const Tensor& x, int N, const Tensor& dy, int ld_dy,
                      const Tensor& xa, int ld_xa, uint64_t seed, bool need_dx);
  // recompute = true (checkpointing, in backward) refills `a` and leaves x_next alone: the down GEMM that
  // writes x_next is skipped, only down's xa is computed.
  void layer_forward(int l, const Tensor& x, const Tensor& x_next, LayerActs& a, const AttnCtx& ctx, int B, int T,
                     const Tensor& positions, const Tensor& doc_start, uint64_t seed, bool recompute = false);
  void layer_backward(int l, const Tensor& x, LayerActs& a, int B, int T, uint64_t seed);
  double head_loss(int N, bool backward, float grad_scale);
  // The chunked cross-entropy over n rows: xf (n, C) and targets_[0, n); backward writes dxf (n, C).
  double head_ce(const Tensor& xf, const Tensor& dxf, int n_rows, bool backward, float grad_scale);
  double run(const Batch& batch, bool backward, float grad_scale, uint64_t seed);
  uint64_t lora_seed(uint64_t seed, int layer, int target) const;
  float dropout_p() const { return has_lora_ ? float(spec_.dropout) : 0.0f; }
};

// Target name → index in kLoraTargets (q_proj 0 … down_proj 6), -1 when unknown.
int lora_target_index(const std::string& name);

}  // namespace nxft
