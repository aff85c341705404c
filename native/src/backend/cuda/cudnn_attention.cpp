// cudnn_attention.cpp — cuDNN SDPA forward/backward through the cudnn-frontend graph API (native.md §1.4, §6.3).
// Graphs are built once per shape and layout and cached (building is slow); q/k/v/o are read in their token-major
// (B,T,H,HD) layout through strides, with each tensor's own row pitch (q|k|v as column blocks of one projection
// output: cuDNN's "interleaved" layout), so no permute or copy kernels run.
#include "backend/cuda/cudnn_attention.h"
#include <cudnn_frontend.h>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include "backend/cuda/cuda_common.cuh"
#include "util/events.h"

namespace nxft {
namespace cuda {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

namespace {

// Offsets and lengths of a ragged (packed-document) graph; all null for plain causal rows.
struct RaggedTensors {
  TensorPtr seq_q, seq_kv;                          // (n_seq) document lengths (one buffer bound to both)
  TensorPtr q, k, v, o, stats, dO, dq, dk, dv;      // (n_seq + 1) element offsets of each operand
};
struct FwdGraph {
  std::shared_ptr<fe::graph::Graph> g;
  TensorPtr q, k, v, o, stats;
  RaggedTensors off;
  int64_t workspace = 0;
  int64_t plan = -1;   // the plan to run: -1 = the graph's own candidate (heuristics' first, or autotune's fastest)
  bool tuned = false;
};
struct BwdGraph {
  std::shared_ptr<fe::graph::Graph> g;
  TensorPtr q, k, v, o, dO, stats, dq, dk, dv;
  RaggedTensors off;
  int64_t workspace = 0;
  int64_t plan = -1;
  bool tuned = false;
};

// One call's shape: plain causal rows (docs == nullptr: B rows of T tokens) or packed documents (B = n_seq
// sequences of at most T = max_len tokens, placed by docs' offsets).
struct Shape {
  int B, T, NH, NKV, HD;
  AttnLd ld;
  const RaggedDocs* docs;
};

// (B, H, T, HD) view of a token-major (B, T, H, HD) buffer whose token rows are ld elements apart (ld ≥ H·HD).
// With ragged offsets cuDNN places sequence b at its offset and ignores the batch stride.
std::vector<int64_t> bthd_strides(int T, int HD, int ld) {
  return {(int64_t)T * ld, (int64_t)HD, (int64_t)ld, 1};
}

// cuDNN's SDPA kernels load 16-byte vectors: every head row must start 16-byte aligned, i.e. an aligned base
// pointer, a row pitch of a multiple of 8 bf16 and (checked by the callers) HD % 8 == 0 for the head offsets.
bool vec_ok(const void* p, int ld) { return is_aligned(p, 16) && ld % 8 == 0; }

class CudnnAttentionImpl : public CudnnAttention {
 public:
  CudnnAttentionImpl(cudaStream_t stream, DevicePool* pool) : stream_(stream), pool_(pool) {
    const char* at = std::getenv("NXFT_CUDNN_AUTOTUNE");
    autotune_ = !(at && std::string(at) == "0");
  }
  ~CudnnAttentionImpl() override {
    if (workspace_) pool_->release(workspace_);
    if (handle_) cudnnDestroy(handle_);
  }
  bool init(std::string* why) {
    cudnnStatus_t st = cudnnCreate(&handle_);
    if (st != CUDNN_STATUS_SUCCESS) {
      *why = std::string("cudnnCreate failed: ") + cudnnGetErrorString(st);
      handle_ = nullptr;
      return false;
    }
    cudnnSetStream(handle_, stream_);
    return true;
  }
  std::string version() const override { return std::to_string(cudnnGetVersion()); }

  bool forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int NH, int NKV,
               int HD, const AttnLd& ld) override {
    return run_forward({B, T, NH, NKV, HD, ld, nullptr}, out, lse, q, k, v);
  }
  bool forward_ragged(void* out, float* lse, const void* q, const void* k, const void* v, const RaggedDocs& docs,
                      int NH, int NKV, int HD, const AttnLd& ld) override {
    return run_forward({docs.n_seq, docs.max_len, NH, NKV, HD, ld, &docs}, out, lse, q, k, v);
  }
  bool backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v,
                const void* out, const float* lse, int B, int T, int NH, int NKV, int HD, const AttnLd& ld) override {
    return run_backward({B, T, NH, NKV, HD, ld, nullptr}, dq, dk, dv, dout, q, k, v, out, lse);
  }
  bool backward_ragged(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v,
                       const void* out, const float* lse, const RaggedDocs& docs, int NH, int NKV, int HD,
                       const AttnLd& ld) override {
    return run_backward({docs.n_seq, docs.max_len, NH, NKV, HD, ld, &docs}, dq, dk, dv, dout, q, k, v, out, lse);
  }

 private:
  // B, T, NH, NKV, HD, the row pitches q, kv, out, dout, dq, dkv (the last three 0 for forward graphs), then the
  // token count of a ragged graph (0 for plain rows). The graph bakes in strides and sizes, so all are the key.
  using Key = std::array<int, 12>;
  static Key key_of(const Shape& s, bool backward) {
    const AttnLd& l = s.ld;
    return {s.B, s.T, s.NH, s.NKV, s.HD, l.q, l.kv, l.out, backward ? l.dout : 0, backward ? l.dq : 0,
            backward ? l.dkv : 0, s.docs ? s.docs->tokens : 0};
  }
  static bool layout_ok(const Shape& s, std::initializer_list<std::pair<const void*, int>> ptr_ld) {
    if (s.HD % 8 != 0) return false;
    for (auto& [p, ld] : ptr_ld)
      if (!vec_ok(p, ld)) return false;
    return true;
  }

  bool run_forward(const Shape& s, void* out, float* lse, const void* q, const void* k, const void* v) {
    if (!layout_ok(s, {{q, s.ld.q}, {k, s.ld.kv}, {v, s.ld.kv}, {out, s.ld.out}})) return false;
    const Key key = key_of(s, false);
    if (fwd_failed_.count(key)) return false;  // no engine for this shape: don't rebuild on every call
    auto it = fwd_.find(key);
    if (it == fwd_.end()) {
      FwdGraph fg;
      if (!build_forward(fg, s)) {
        fwd_failed_.insert(key);
        return false;
      }
      it = fwd_.emplace(key, fg).first;
    }
    FwdGraph& fg = it->second;
    if (!ensure_workspace(fg.workspace)) return false;
    std::unordered_map<TensorPtr, void*> pack = {{fg.q, const_cast<void*>(q)}, {fg.k, const_cast<void*>(k)},
                                                 {fg.v, const_cast<void*>(v)}, {fg.o, out},
                                                 {fg.stats, lse}};
    if (s.docs) {
      const RaggedDocs& d = *s.docs;
      bind(pack, {{fg.off.seq_q, d.seq_len}, {fg.off.seq_kv, d.seq_len}, {fg.off.q, d.q}, {fg.off.k, d.kv},
                  {fg.off.v, d.kv}, {fg.off.o, d.out}, {fg.off.stats, d.lse}});
    }
    if (!fg.tuned) tune(*fg.g, pack, work_of(s), &fg.workspace, &fg.plan, "forward", &fg.tuned);
    auto err = execute(*fg.g, pack, fg.plan);
    if (err.is_bad()) throw EngineError("cuDNN SDPA forward failed: " + err.get_message());
    return true;
  }

  bool run_backward(const Shape& s, void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                    const void* v, const void* out, const float* lse) {
    const AttnLd& ld = s.ld;
    if (!layout_ok(s, {{q, ld.q}, {k, ld.kv}, {v, ld.kv}, {out, ld.out}, {dout, ld.dout}, {dq, ld.dq}, {dk, ld.dkv},
                       {dv, ld.dkv}}))
      return false;
    const Key key = key_of(s, true);
    if (bwd_failed_.count(key)) return false;
    auto it = bwd_.find(key);
    if (it == bwd_.end()) {
      BwdGraph bg;
      if (!build_backward(bg, s)) {
        bwd_failed_.insert(key);
        return false;
      }
      it = bwd_.emplace(key, bg).first;
    }
    BwdGraph& bg = it->second;
    if (!ensure_workspace(bg.workspace)) return false;
    std::unordered_map<TensorPtr, void*> pack = {
        {bg.q, const_cast<void*>(q)},       {bg.k, const_cast<void*>(k)},     {bg.v, const_cast<void*>(v)},
        {bg.o, const_cast<void*>(out)},     {bg.dO, const_cast<void*>(dout)}, {bg.stats, const_cast<float*>(lse)},
        {bg.dq, dq},                        {bg.dk, dk},                      {bg.dv, dv}};
    if (s.docs) {
      const RaggedDocs& d = *s.docs;
      bind(pack, {{bg.off.seq_q, d.seq_len}, {bg.off.seq_kv, d.seq_len}, {bg.off.q, d.q}, {bg.off.k, d.kv},
                  {bg.off.v, d.kv}, {bg.off.o, d.out}, {bg.off.stats, d.lse}, {bg.off.dO, d.dout},
                  {bg.off.dq, d.dq}, {bg.off.dk, d.dkv}, {bg.off.dv, d.dkv}});
    }
    if (!bg.tuned) tune(*bg.g, pack, work_of(s), &bg.workspace, &bg.plan, "backward", &bg.tuned);
    auto err = execute(*bg.g, pack, bg.plan);
    if (err.is_bad()) throw EngineError("cuDNN SDPA backward failed: " + err.get_message());
    return true;
  }

  static void bind(std::unordered_map<TensorPtr, void*>& pack,
                   std::initializer_list<std::pair<TensorPtr, const int32_t*>> index_tensors) {
    for (auto& [t, p] : index_tensors) {
      if (!p) throw EngineError("internal: a ragged attention offset array is missing");
      pack[t] = const_cast<int32_t*>(p);
    }
  }

  static bool ok(fe::error_t e, const char* what) {
    if (e.is_bad()) {
      fprintf(stderr, "[cuda] cuDNN SDPA %s: %s\n", what, e.get_message().c_str());
      return false;
    }
    return true;
  }
  std::shared_ptr<fe::graph::Graph> new_graph() {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    return g;
  }
  // An int32 index tensor of n entries: document lengths (n_seq) or ragged offsets (n_seq + 1).
  static TensorPtr index_tensor(fe::graph::Graph& g, const char* name, int64_t n) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_dim({n, 1, 1, 1})
                        .set_stride({1, 1, 1, 1})
                        .set_data_type(fe::DataType_t::INT32));
  }
  static TensorPtr ragged(fe::graph::Graph& g, const Shape& s, const char* name) {
    return s.docs ? index_tensor(g, name, (int64_t)s.B + 1) : nullptr;
  }
  // q/k/v/o-like operand: (B, H, T, HD) over token-major rows of pitch ld, ragged when off is set.
  static void place(const TensorPtr& t, int B, int H, int T, int HD, int ld, const TensorPtr& off) {
    t->set_dim({B, H, T, HD}).set_stride(bthd_strides(T, HD, ld));
    if (off) t->set_ragged_offset(off);
  }
  TensorPtr tensor(fe::graph::Graph& g, const char* name, int B, int H, int T, int HD, int ld, const TensorPtr& off) {
    auto t = g.tensor(fe::graph::Tensor_attributes().set_name(name));
    place(t, B, H, T, HD, ld, off);
    return t;
  }
  // The logsumexp: (B, NH, T) head-major for plain rows (the engine's layout), token-major (tokens, NH) with
  // ragged offsets for packed documents (what cuDNN's ragged kernels take; the backend converts).
  static void place_stats(const TensorPtr& t, const Shape& s, const TensorPtr& off) {
    t->set_data_type(fe::DataType_t::FLOAT).set_dim({s.B, s.NH, s.T, 1});
    if (off) t->set_stride({(int64_t)s.T * s.NH, 1, s.NH, 1}).set_ragged_offset(off);
    else t->set_stride({(int64_t)s.NH * s.T, (int64_t)s.T, 1, 1});
  }
  // Plain rows: causal. Packed documents: causal within each document, and lengths for the padding mask.
  template <typename Attrs> void mask(Attrs& a, fe::graph::Graph& g, const Shape& s, RaggedTensors& off) {
    a.set_causal_mask(true);
    if (!s.docs) return;
    off.seq_q = index_tensor(g, "seq_len_q", s.B);
    off.seq_kv = index_tensor(g, "seq_len_kv", s.B);
    a.set_padding_mask(true).set_seq_len_q(off.seq_q).set_seq_len_kv(off.seq_kv);
  }
  bool finalize(fe::graph::Graph& g, int64_t* ws) {
    if (!ok(g.validate(), "validate")) return false;
    if (!ok(g.build_operation_graph(handle_), "build_operation_graph")) return false;
    // With autotuning, ask every heuristic mode for candidates (A is quick, B more thorough); tune() keeps the
    // fastest. Without, A's first choice.
    if (!ok(g.create_execution_plans(autotune_ ? std::vector<fe::HeurMode_t>{fe::HeurMode_t::A, fe::HeurMode_t::B}
                                               : std::vector<fe::HeurMode_t>{fe::HeurMode_t::A}),
            "create_execution_plans"))
      return false;
    if (!ok(g.check_support(handle_), "check_support")) return false;
    // With autotuning, build every plan the heuristics offer; tune() times them on the first real call.
    if (!ok(g.build_plans(handle_, autotune_ ? fe::BuildPlanPolicy_t::ALL : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE),
            "build_plans"))
      return false;
    if (!ok(g.get_workspace_size(*ws), "workspace")) return false;
    return true;
  }
  fe::error_t execute(fe::graph::Graph& g, std::unordered_map<TensorPtr, void*>& pack, int64_t plan) {
    return plan < 0 ? g.execute(handle_, pack, workspace_) : g.execute_plan_at_index(handle_, pack, workspace_, plan);
  }
  // Multiply-adds of one call, B·NH·T²·HD (causal halves it; only the size matters here).
  static double work_of(const Shape& s) { return double(s.B) * s.NH * double(s.T) * s.T * s.HD; }
  // Calls this large take 0.1 s and more each (one 1×32K row and up): one timed run per plan tells them apart.
  static constexpr double kLongCallWork = 4e12;

  // The heuristics' first plan is not always the fastest (as with cuBLASLt's skinny GEMMs): time every built
  // plan once per shape on the real operands (outputs are written, never read) and keep the fastest.
  // Ordinary calls use the frontend's autotune (a warm-up and at least two timed runs per plan). Long-context
  // calls would spend minutes there (at 400K tokens one forward call takes seconds), so they run each plan once.
  void tune(fe::graph::Graph& g, std::unordered_map<TensorPtr, void*>& pack, double work, int64_t* ws,
            int64_t* plan, const char* what, bool* tuned) {
    *tuned = true;
    if (!autotune_ || g.get_execution_plan_count() < 2) return;
    const int64_t need = g.get_autotune_workspace_size();
    if (!ensure_workspace(need, true)) return;   // no room under the memory cap: cuDNN's first plan
    if (work >= kLongCallWork) {
      time_each_plan_once(g, pack, ws, plan, what);
      return;
    }
    auto err = g.autotune(handle_, pack, workspace_);
    if (err.is_bad()) {
      fprintf(stderr, "[cuda] cuDNN SDPA %s autotune skipped: %s\n", what, err.get_message().c_str());
      return;
    }
    if (!ok(g.get_workspace_size(*ws), "workspace")) return;
    if (!ensure_workspace(*ws)) return;
    fprintf(stderr, "[cuda] cuDNN SDPA %s: autotuned over %lld plans\n", what, (long long)g.get_execution_plan_count());
  }
  void time_each_plan_once(fe::graph::Graph& g, std::unordered_map<TensorPtr, void*>& pack, int64_t* ws,
                           int64_t* plan, const char* what) {
    cudaEvent_t start, stop;
    CUDA_CHECK(cudaEventCreate(&start));
    CUDA_CHECK(cudaEventCreate(&stop));
    const int64_t n = g.get_execution_plan_count();
    int64_t best = -1;
    float best_ms = 0, first_ms = 0;
    for (int64_t i = 0; i < n; i++) {
      CUDA_CHECK(cudaEventRecord(start, stream_));
      auto err = g.execute_plan_at_index(handle_, pack, workspace_, i);
      CUDA_CHECK(cudaEventRecord(stop, stream_));
      CUDA_CHECK(cudaEventSynchronize(stop));
      if (err.is_bad()) continue;
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (i == 0) first_ms = ms;
      if (best < 0 || ms < best_ms) best = i, best_ms = ms;
    }
    CUDA_CHECK(cudaEventDestroy(start));
    CUDA_CHECK(cudaEventDestroy(stop));
    int64_t best_ws = 0;
    if (best < 0 || g.get_workspace_size_plan_at_index(best, best_ws).is_bad()) return;   // the candidate stays
    *plan = best;
    *ws = best_ws;
    fprintf(stderr, "[cuda] cuDNN SDPA %s (long call): timed %lld plans once each, plan %lld %.0f ms (first %.0f ms)\n",
            what, (long long)n, (long long)best, best_ms, first_ms);
  }
  // What forward and backward graphs share: the offsets of q, k, v, o and stats (ragged graphs only) and the
  // q, k, v inputs.
  void qkv_inputs(fe::graph::Graph& g, const Shape& s, RaggedTensors& off, TensorPtr* q, TensorPtr* k, TensorPtr* v) {
    off.q = ragged(g, s, "q_offsets");
    off.k = ragged(g, s, "k_offsets");
    off.v = ragged(g, s, "v_offsets");
    off.o = ragged(g, s, "o_offsets");
    off.stats = ragged(g, s, "stats_offsets");
    *q = tensor(g, "q", s.B, s.NH, s.T, s.HD, s.ld.q, off.q);
    *k = tensor(g, "k", s.B, s.NKV, s.T, s.HD, s.ld.kv, off.k);
    *v = tensor(g, "v", s.B, s.NKV, s.T, s.HD, s.ld.kv, off.v);
  }
  bool build_forward(FwdGraph& fg, const Shape& s) {
    fg.g = new_graph();
    auto& g = *fg.g;
    const AttnLd& ld = s.ld;
    RaggedTensors& off = fg.off;
    qkv_inputs(g, s, off, &fg.q, &fg.k, &fg.v);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(true)
                    .set_attn_scale(1.0f / sqrtf((float)s.HD));
    mask(opts, g, s, off);
    auto [o, stats] = g.sdpa(fg.q, fg.k, fg.v, opts);
    o->set_output(true);
    place(o, s.B, s.NH, s.T, s.HD, ld.out, off.o);
    stats->set_output(true);
    place_stats(stats, s, off.stats);
    fg.o = o;
    fg.stats = stats;
    return finalize(g, &fg.workspace);
  }
  bool build_backward(BwdGraph& bg, const Shape& s) {
    bg.g = new_graph();
    auto& g = *bg.g;
    const AttnLd& ld = s.ld;
    RaggedTensors& off = bg.off;
    qkv_inputs(g, s, off, &bg.q, &bg.k, &bg.v);
    off.dO = ragged(g, s, "dO_offsets");
    off.dq = ragged(g, s, "dq_offsets");
    off.dk = ragged(g, s, "dk_offsets");
    off.dv = ragged(g, s, "dv_offsets");
    bg.o = tensor(g, "o", s.B, s.NH, s.T, s.HD, ld.out, off.o);
    bg.dO = tensor(g, "dO", s.B, s.NH, s.T, s.HD, ld.dout, off.dO);
    bg.stats = g.tensor(fe::graph::Tensor_attributes().set_name("stats"));
    place_stats(bg.stats, s, off.stats);
    auto opts = fe::graph::SDPA_backward_attributes()
                    .set_name("sdpa_backward")
                    .set_attn_scale(1.0f / sqrtf((float)s.HD));
    mask(opts, g, s, off);
    // Packed documents: size the fp32 dQ accumulator and softmax sums by the real token count, not by
    // n_seq · max_len (which would be many times larger).
    if (s.docs) opts.set_max_total_seq_len_q(s.docs->tokens).set_max_total_seq_len_kv(s.docs->tokens);
    auto [dq, dk, dv] = g.sdpa_backward(bg.q, bg.k, bg.v, bg.o, bg.dO, bg.stats, opts);
    dq->set_output(true);
    dk->set_output(true);
    dv->set_output(true);
    place(dq, s.B, s.NH, s.T, s.HD, ld.dq, off.dq);
    place(dk, s.B, s.NKV, s.T, s.HD, ld.dkv, off.dk);
    place(dv, s.B, s.NKV, s.T, s.HD, ld.dkv, off.dv);
    bg.dq = dq;
    bg.dk = dk;
    bg.dv = dv;
    return finalize(g, &bg.workspace);
  }
  // The workspace comes from the backend's pool (counted against its memory cap). Out of memory throws, or
  // returns false when `optional` (autotuning, which may do without).
  bool ensure_workspace(int64_t bytes, bool optional = false) {
    if ((size_t)bytes <= workspace_bytes_) return true;
    if (workspace_) {
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      pool_->release(workspace_);
    }
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    try {
      workspace_ = pool_->get(size_t(bytes), "the cuDNN attention workspace");
    } catch (const EngineError&) {
      if (optional) return false;
      throw;
    }
    workspace_bytes_ = bytes;
    return true;
  }

  cudaStream_t stream_;
  DevicePool* pool_;
  bool autotune_ = true;
  cudnnHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, FwdGraph> fwd_;
  std::map<Key, BwdGraph> bwd_;
  std::set<Key> fwd_failed_, bwd_failed_;  // shapes and layouts cuDNN has no engine for
};

}  // namespace

std::unique_ptr<CudnnAttention> make_cudnn_attention(cudaStream_t stream, DevicePool* pool, std::string* why) {
  auto a = std::make_unique<CudnnAttentionImpl>(stream, pool);
  if (!a->init(why)) return nullptr;
  return a;
}

}  // namespace cuda
}  // namespace nxft
