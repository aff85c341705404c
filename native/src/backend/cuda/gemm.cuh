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
#include "backend/device_pool.h"

namespace nxft {
namespace cuda {

class Gemm {
 public:
  // Workspaces and autotuning scratch come from `pool` (counted against its cap).
  Gemm(cudaStream_t stream, DevicePool* pool);
  ~Gemm();
  // dtype codes: CUDA_R_16BF or CUDA_R_32F.
  void run(void* d, const void* c, cudaDataType_t d_type, int ldd, const void* a, int lda, const void* b, int ldb,
           cudaDataType_t ab_type, int M, int N, int K, bool trans_a, bool trans_b, float alpha, float beta);
  // Lanes: the constructor's stream (lane 0) and an optional side stream (lane 1, see Backend::side_begin). Each
  // lane has its own cuBLASLt workspace (two GEMMs in flight must not share one); plans are shared, so a shape is
  // autotuned once, on whichever lane meets it first, and the profile (which runs side work on lane 0) times the
  // same algorithms.
  void add_side_lane(cudaStream_t side);   // allocates the second workspace
  void use_side_lane(bool side) { lane_ = side ? 1 : 0; }
  size_t workspace_bytes() const { return workspace_bytes_; }

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo;
  };
  static constexpr int kMaxAlgos = 8;
  cublasLtMatmulAlgo_t pick_fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* heur, int found,
                                    const void* a, const void* b, cudaDataType_t d_type, int ldd, int M, float alpha);
  bool autotune_ = true;
  bool autotune_all_ = false;
  static constexpr size_t kTuneScratchBytes = size_t(512) << 20;   // see the constructor
  using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int>;
  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t streams_[2] = {nullptr, nullptr};
  DevicePool* pool_;
  void* workspaces_[2] = {nullptr, nullptr};
  int lane_ = 0;
  size_t workspace_bytes_ = 32u << 20;  // Hopper wants 32 MiB (llm.c)
  std::map<Key, Plan> plans_;
};

}  // namespace cuda
}  // namespace nxft
