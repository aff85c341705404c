// gemm.cu — cuBLASLt plans cached per shape/type/alignment; see gemm.cuh for the row-major convention.
#include "backend/cuda/gemm.cuh"
#include <algorithm>
#include <cstdlib>
#include <string>
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

static void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw EngineError(std::string("cuBLASLt error ") + std::to_string(int(s)) + " in " + what);
}

Gemm::Gemm(cudaStream_t stream, DevicePool* pool) : pool_(pool) {
  streams_[0] = stream;
  // NXFT_GEMM_AUTOTUNE: unset = time cuBLASLt's candidates for skinny (LoRA) shapes only, "all" = for every shape
  // whose timing scratch (one D) is at most kTuneScratchBytes (a 400K-token context's q|k|v GEMM would need 5 GB),
  // "0" = never (cuBLASLt's first heuristic choice everywhere). "all" is not the default: a shape is timed at its
  // first use, and the head's last row block changes size with every batch's target count, so on the real path
  // (Alpaca, 2×2048) every step timed two new shapes: 14,644 real tok/s against session 7's 16,914, most of the
  // drop (Unsloth lost 5.5% on that card). The random rows of cuda_train_bench, all of one shape, ran 18,529
  // against 18,378, within run-to-run noise; its ":vary" rows change the head's shape every step.
  const char* at = std::getenv("NXFT_GEMM_AUTOTUNE");
  const std::string mode = at ? at : "";
  autotune_ = mode != "0";
  autotune_all_ = mode == "all";
  check_lt(cublasLtCreate(&handle_), "cublasLtCreate");
  workspaces_[0] = pool_->get(workspace_bytes_, "the cuBLASLt workspace");
}

void Gemm::add_side_lane(cudaStream_t side) {
  if (workspaces_[1]) return;
  workspaces_[1] = pool_->get(workspace_bytes_, "the cuBLASLt side-stream workspace");
  streams_[1] = side;
}

Gemm::~Gemm() {
  for (auto& kv : plans_) {
    cublasLtMatmulDescDestroy(kv.second.desc);
    cublasLtMatrixLayoutDestroy(kv.second.la);
    cublasLtMatrixLayoutDestroy(kv.second.lb);
    cublasLtMatrixLayoutDestroy(kv.second.ld);
  }
  for (void* w : workspaces_)
    if (w) pool_->release(w);
  if (handle_) cublasLtDestroy(handle_);
}

static int alignment_of(const void* p, int ld, int elem) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 16;
  while (al > elem && ((a % al) != 0 || ((size_t)ld * elem) % al != 0)) al >>= 1;
  return al;
}

void Gemm::run(void* d, const void* c, cudaDataType_t d_type, int ldd, const void* a, int lda, const void* b, int ldb,
               cudaDataType_t ab_type, int M, int N, int K, bool trans_a, bool trans_b, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  int ab_size = ab_type == CUDA_R_16BF ? 2 : 4, d_size = d_type == CUDA_R_16BF ? 2 : 4;
  int align_a = alignment_of(a, lda, ab_size), align_b = alignment_of(b, ldb, ab_size);
  int align_d = std::min(alignment_of(d, ldd, d_size), alignment_of(c, ldd, d_size));   // C shares D's layout
  bool accumulate = beta != 0.0f;
  Key key{M, N, K, int(trans_a), int(trans_b), int(ab_type), int(d_type), lda, ldb, ldd,
          align_a * 1000 + align_b * 10 + (accumulate ? 1 : 0), align_d};
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan p;
    // cuBLAS-A is our B (op: trans_b ? T : N); cuBLAS-B is our A (op: trans_a ? T : N); cuBLAS-D is Dᵀ (N×M).
    cublasComputeType_t compute = ab_type == CUDA_R_32F ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F;
    check_lt(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F), "MatmulDescCreate");
    cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), "TRANSA");
    check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), "TRANSB");
    // column-major shapes of the stored operands
    uint64_t a_rows = trans_b ? K : N, a_cols = trans_b ? N : K;
    uint64_t b_rows = trans_a ? M : K, b_cols = trans_a ? K : M;
    check_lt(cublasLtMatrixLayoutCreate(&p.la, ab_type, a_rows, a_cols, ldb), "layout A");
    check_lt(cublasLtMatrixLayoutCreate(&p.lb, ab_type, b_rows, b_cols, lda), "layout B");
    check_lt(cublasLtMatrixLayoutCreate(&p.ld, d_type, N, M, ldd), "layout D");
    cublasLtMatmulPreference_t pref;
    check_lt(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
    check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                                  sizeof(workspace_bytes_)), "pref workspace");
    uint32_t al_a = align_b, al_b = align_a, al_d = align_d;  // cuBLAS-A is our B
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof(al_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof(al_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof(al_d));
    cublasLtMatmulHeuristicResult_t heur[kMaxAlgos];
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.la, p.lb, p.ld, p.ld, pref,
                                                      autotune_ ? kMaxAlgos : 1, heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found == 0)
      throw EngineError("cuBLASLt found no algorithm for matmul M=" + std::to_string(M) + " N=" + std::to_string(N) +
                        " K=" + std::to_string(K));
    p.algo = heur[0].algo;
    const bool skinny = std::min(M, std::min(N, K)) <= 64;
    const size_t d_bytes = size_t(M) * ldd * d_size;
    if (found > 1 && (skinny || (autotune_all_ && d_bytes <= kTuneScratchBytes)))
      p.algo = pick_fastest(p, heur, found, a, b, d_type, ldd, M, alpha);
    it = plans_.emplace(key, p).first;
  }
  Plan& p = it->second;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, b, p.la, a, p.lb, &beta, c, p.ld, d, p.ld, &p.algo, workspaces_[lane_],
                          workspace_bytes_, streams_[lane_]),
           "cublasLtMatmul");
}

// Autotuning (once per shape, at its first use): cuBLASLt's first heuristic pick is often not the fastest for
// skinny LoRA shapes (K or N = r). Time each candidate on the real A/B operands writing into a scratch D (so
// beta = 1 accumulation into the real output is not disturbed) and keep the fastest.
cublasLtMatmulAlgo_t Gemm::pick_fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* heur, int found,
                                        const void* a, const void* b, cudaDataType_t d_type, int ldd, int M,
                                        float alpha) {
  size_t d_bytes = (size_t)M * ldd * (d_type == CUDA_R_16BF ? 2 : 4);
  void* scratch = nullptr;
  try {   // under a memory cap (or on a full device) autotuning is skipped rather than failing the GEMM
    scratch = pool_->get(d_bytes, "the GEMM autotuning scratch");
  } catch (const EngineError&) {
    return heur[0].algo;
  }
  cudaStream_t stream = streams_[lane_];
  cudaMemsetAsync(scratch, 0, d_bytes, stream);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float beta = 1.0f, best_ms = 1e30f;
  int best = 0;
  for (int i = 0; i < found; i++) {
    if (heur[i].state != CUBLAS_STATUS_SUCCESS) continue;
    auto launch = [&]() {
      return cublasLtMatmul(handle_, p.desc, &alpha, b, p.la, a, p.lb, &beta, scratch, p.ld, scratch, p.ld,
                            &heur[i].algo, workspaces_[lane_], workspace_bytes_, streams_[lane_]);
    };
    if (launch() != CUBLAS_STATUS_SUCCESS) continue;
    cudaEventRecord(e0, stream);
    for (int r = 0; r < 3; r++) launch();
    cudaEventRecord(e1, stream);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (ms < best_ms) {
      best_ms = ms;
      best = i;
    }
  }
  cudaStreamSynchronize(stream);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  pool_->release(scratch);
  cudaGetLastError();
  return heur[best].algo;
}

}  // namespace cuda
}  // namespace nxft
