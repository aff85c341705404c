// gemm.cuh — one cuBLASLt wrapper for every matrix product of the CUDA backend (llm.c's matmul_cublaslt idea).
// Row-major: D (M,N) = alpha · op(A) · op(B) + beta · C, fp32 accumulation; C has D's layout (row stride ldd)
// and may be D itself.
//   op(A) is (M,K): A stored (M,K) with row stride lda, or (K,M) when trans_a.
//   op(B) is (K,N): B stored (K,N) with row stride ldb, or (N,K) when trans_b.
// A and B share one dtype (bf16 or fp32); C and D are bf16 or fp32. beta = 0 never reads C (NaN-safe).
// cuBLASLt is column-major, so we compute Dᵀ = op(B)ᵀ · op(A)ᵀ: row-major storage read as column-major is the
// transpose, which needs no copy.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <map>
#include <tuple>
#include <vector>
#include "backend/cuda/cuda_common.cuh"
#include "backend/device_pool.h"

namespace nxft {
namespace cuda {

class Gemm {
 public:
  // The workspaces come from `pool` (counted against its cap).
  Gemm(cudaStream_t stream, DevicePool* pool);
  ~Gemm();
  // dtype codes: CUDA_R_16BF or CUDA_R_32F.
  void run(void* d, const void* c, cudaDataType_t d_type, int ldd, const void* a, int lda, const void* b, int ldb,
           cudaDataType_t ab_type, int M, int N, int K, bool trans_a, bool trans_b, float alpha, float beta);
  // Lanes: the constructor's stream (lane 0) and an optional side stream (lane 1, see Backend::side_begin). Each
  // lane has its own cuBLASLt workspace (two GEMMs in flight must not share one); plans are shared, so a shape is
  // tuned once, on the calls of whichever lanes meet it, and the profile (which runs side work on lane 0) times
  // the same algorithms.
  void add_side_lane(cudaStream_t side);   // allocates the second workspace
  void use_side_lane(bool side) { lane_ = side ? 1 : 0; }
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo;   // the heuristic's first pick, then the tuning's winner
    // In-step tuning (see launch_trial); empty once settled or for untuned shapes.
    std::vector<cublasLtMatmulAlgo_t> trials;
    std::vector<float> best_ms;   // per candidate, its fastest timed run
    std::vector<int> started;     // per candidate, runs launched (kTrials once dropped)
    int unread = 0;               // runs whose events are not read yet
    int next = 0;
  };
  struct Pending {
    Plan* plan;   // plans_ is a std::map: its elements stay put
    int cand;
    cudaEvent_t e0, e1;
  };
  static constexpr int kMaxAlgos = 8;
  static constexpr int kTrials = 3;
  static constexpr int kSkinnyMaxDim = 65536;   // see make_plan: the vocabulary is wider, an MLP is not
  Plan make_plan(const Key& key, int M, int N, int K, bool trans_a, bool trans_b, cudaDataType_t ab_type,
                 cudaDataType_t d_type, int lda, int ldb, int ldd, int align_a, int align_b, int align_d);
  std::vector<cublasLtMatmulAlgo_t> candidates(const Plan& p, const cublasLtMatmulHeuristicResult_t* heur, int found,
                                               int K);
  void launch_trial(Plan& p, void* d, const void* c, const void* a, const void* b, float alpha, float beta);
  void harvest();
  bool autotune_ = true;
  bool autotune_all_ = false;
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t streams_[2] = {nullptr, nullptr};
  DevicePool* pool_;
  void* workspaces_[2] = {nullptr, nullptr};
  int lane_ = 0;
  size_t workspace_bytes_ = 32u << 20;  // Hopper wants 32 MiB (llm.c)
  std::map<Key, Plan> plans_;
  std::map<Key, cublasLtMatmulAlgo_t> algo_any_m_;   // untuned shapes' algorithm, by key with M's power of two
  std::vector<Pending> pending_;
  EventPool events_;
};

}  // namespace cuda
}  // namespace nxft
