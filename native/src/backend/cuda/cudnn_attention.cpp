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
#include "util/events.h"

namespace nxft {
namespace cuda {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

namespace {

struct FwdGraph {
  std::shared_ptr<fe::graph::Graph> g;
  TensorPtr q, k, v, o, stats;
  int64_t workspace = 0;
  bool tuned = false;
};
struct BwdGraph {
  std::shared_ptr<fe::graph::Graph> g;
  TensorPtr q, k, v, o, dO, stats, dq, dk, dv;
  int64_t workspace = 0;
  bool tuned = false;
};

// (B, H, T, HD) view of a token-major (B, T, H, HD) buffer whose token rows are ld elements apart (ld ≥ H·HD).
std::vector<int64_t> bthd_strides(int T, int HD, int ld) {
  return {(int64_t)T * ld, (int64_t)HD, (int64_t)ld, 1};
}

// cuDNN's SDPA kernels load 16-byte vectors: every head row must start 16-byte aligned, i.e. an aligned base
// pointer, a row pitch of a multiple of 8 bf16 and (checked by the callers) HD % 8 == 0 for the head offsets.
bool vec_ok(const void* p, int ld) { return is_aligned(p, 16) && ld % 8 == 0; }

class CudnnAttentionImpl : public CudnnAttention {
 public:
  explicit CudnnAttentionImpl(cudaStream_t stream) : stream_(stream) {
    const char* at = std::getenv("NXFT_CUDNN_AUTOTUNE");
    autotune_ = !(at && std::string(at) == "0");
  }
  ~CudnnAttentionImpl() override {
    if (workspace_) cudaFree(workspace_);
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
    if (HD % 8 != 0 || !vec_ok(q, ld.q) || !vec_ok(k, ld.kv) || !vec_ok(v, ld.kv) || !vec_ok(out, ld.out))
      return false;
    // The graph bakes in the strides, so every pitch is part of the key (backward-only pitches are 0 here).
    const Key key = {B, T, NH, NKV, HD, ld.q, ld.kv, ld.out, 0, 0, 0};
    if (fwd_failed_.count(key)) return false;  // no engine for this shape: don't rebuild on every call
    auto it = fwd_.find(key);
    if (it == fwd_.end()) {
      FwdGraph fg;
      if (!build_forward(fg, B, T, NH, NKV, HD, ld)) {
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
    if (!fg.tuned) tune(*fg.g, pack, &fg.workspace, "forward", &fg.tuned);
    auto err = fg.g->execute(handle_, pack, workspace_);
    if (err.is_bad()) throw EngineError("cuDNN SDPA forward failed: " + err.get_message());
    return true;
  }

  bool backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v,
                const void* out, const float* lse, int B, int T, int NH, int NKV, int HD, const AttnLd& ld) override {
    if (HD % 8 != 0 || !vec_ok(q, ld.q) || !vec_ok(k, ld.kv) || !vec_ok(v, ld.kv) || !vec_ok(out, ld.out) ||
        !vec_ok(dout, ld.dout) || !vec_ok(dq, ld.dq) || !vec_ok(dk, ld.dkv) || !vec_ok(dv, ld.dkv))
      return false;
    const Key key = {B, T, NH, NKV, HD, ld.q, ld.kv, ld.out, ld.dout, ld.dq, ld.dkv};
    if (bwd_failed_.count(key)) return false;
    auto it = bwd_.find(key);
    if (it == bwd_.end()) {
      BwdGraph bg;
      if (!build_backward(bg, B, T, NH, NKV, HD, ld)) {
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
    if (!bg.tuned) tune(*bg.g, pack, &bg.workspace, "backward", &bg.tuned);
    auto err = bg.g->execute(handle_, pack, workspace_);
    if (err.is_bad()) throw EngineError("cuDNN SDPA backward failed: " + err.get_message());
    return true;
  }

 private:
  // B, T, NH, NKV, HD, then the row pitches q, kv, out, dout, dq, dkv (the last three 0 for forward graphs).
  using Key = std::array<int, 11>;

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
  TensorPtr tensor(fe::graph::Graph& g, const char* name, int B, int H, int T, int HD, int ld) {
    return g.tensor(fe::graph::Tensor_attributes().set_name(name).set_dim({B, H, T, HD}).set_stride(
        bthd_strides(T, HD, ld)));
  }
  TensorPtr stats_tensor(fe::graph::Graph& g, int B, int NH, int T) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name("stats")
                        .set_dim({B, NH, T, 1})
                        .set_stride({(int64_t)NH * T, (int64_t)T, 1, 1})
                        .set_data_type(fe::DataType_t::FLOAT));
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
  // The heuristics' first plan is not always the fastest (as with cuBLASLt's skinny GEMMs): time every built
  // plan once per shape on the real operands (outputs are written, never read) and keep the fastest.
  void tune(fe::graph::Graph& g, std::unordered_map<TensorPtr, void*>& pack, int64_t* ws, const char* what,
            bool* tuned) {
    *tuned = true;
    if (!autotune_ || g.get_execution_plan_count() < 2) return;
    const int64_t need = g.get_autotune_workspace_size();
    if (!ensure_workspace(need)) return;
    auto err = g.autotune(handle_, pack, workspace_);
    if (err.is_bad()) {
      fprintf(stderr, "[cuda] cuDNN SDPA %s autotune skipped: %s\n", what, err.get_message().c_str());
      return;
    }
    if (!ok(g.get_workspace_size(*ws), "workspace")) return;
    if (!ensure_workspace(*ws)) return;
    fprintf(stderr, "[cuda] cuDNN SDPA %s: autotuned over %lld plans\n", what, (long long)g.get_execution_plan_count());
  }
  bool build_forward(FwdGraph& fg, int B, int T, int NH, int NKV, int HD, const AttnLd& ld) {
    fg.g = new_graph();
    auto& g = *fg.g;
    fg.q = tensor(g, "q", B, NH, T, HD, ld.q);
    fg.k = tensor(g, "k", B, NKV, T, HD, ld.kv);
    fg.v = tensor(g, "v", B, NKV, T, HD, ld.kv);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("sdpa")
                    .set_generate_stats(true)
                    .set_causal_mask(true)
                    .set_attn_scale(1.0f / sqrtf((float)HD));
    auto [o, stats] = g.sdpa(fg.q, fg.k, fg.v, opts);
    o->set_output(true).set_dim({B, NH, T, HD}).set_stride(bthd_strides(T, HD, ld.out));
    stats->set_output(true).set_data_type(fe::DataType_t::FLOAT).set_dim({B, NH, T, 1}).set_stride(
        {(int64_t)NH * T, (int64_t)T, 1, 1});
    fg.o = o;
    fg.stats = stats;
    return finalize(g, &fg.workspace);
  }
  bool build_backward(BwdGraph& bg, int B, int T, int NH, int NKV, int HD, const AttnLd& ld) {
    bg.g = new_graph();
    auto& g = *bg.g;
    bg.q = tensor(g, "q", B, NH, T, HD, ld.q);
    bg.k = tensor(g, "k", B, NKV, T, HD, ld.kv);
    bg.v = tensor(g, "v", B, NKV, T, HD, ld.kv);
    bg.o = tensor(g, "o", B, NH, T, HD, ld.out);
    bg.dO = tensor(g, "dO", B, NH, T, HD, ld.dout);
    bg.stats = stats_tensor(g, B, NH, T);
    auto opts = fe::graph::SDPA_backward_attributes()
                    .set_name("sdpa_backward")
                    .set_causal_mask(true)
                    .set_attn_scale(1.0f / sqrtf((float)HD));
    auto [dq, dk, dv] = g.sdpa_backward(bg.q, bg.k, bg.v, bg.o, bg.dO, bg.stats, opts);
    dq->set_output(true).set_dim({B, NH, T, HD}).set_stride(bthd_strides(T, HD, ld.dq));
    dk->set_output(true).set_dim({B, NKV, T, HD}).set_stride(bthd_strides(T, HD, ld.dkv));
    dv->set_output(true).set_dim({B, NKV, T, HD}).set_stride(bthd_strides(T, HD, ld.dkv));
    bg.dq = dq;
    bg.dk = dk;
    bg.dv = dv;
    return finalize(g, &bg.workspace);
  }
  bool ensure_workspace(int64_t bytes) {
    if ((size_t)bytes <= workspace_bytes_) return true;
    if (workspace_) cudaFree(workspace_);
    workspace_ = nullptr;
    workspace_bytes_ = 0;
    if (cudaMalloc(&workspace_, bytes) != cudaSuccess) throw EngineError("cuDNN workspace allocation failed");
    workspace_bytes_ = bytes;
    return true;
  }

  cudaStream_t stream_;
  bool autotune_ = true;
  cudnnHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, FwdGraph> fwd_;
  std::map<Key, BwdGraph> bwd_;
  std::set<Key> fwd_failed_, bwd_failed_;  // shapes and layouts cuDNN has no engine for
};

}  // namespace

std::unique_ptr<CudnnAttention> make_cudnn_attention(cudaStream_t stream, std::string* why) {
  auto a = std::make_unique<CudnnAttentionImpl>(stream);
  if (!a->init(why)) return nullptr;
  return a;
}

}  // namespace cuda
}  // namespace nxft
