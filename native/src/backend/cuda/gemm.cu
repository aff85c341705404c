// gemm.cu — cuBLASLt plans cached per shape/type/alignment; see gemm.cuh for the row-major convention.
#include "backend/cuda/gemm.cuh"
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

static void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw EngineError(std::string("cuBLASLt error ") + std::to_string(int(s)) + " in " + what);
}

Gemm::Gemm(cudaStream_t stream, DevicePool* pool) : pool_(pool) {
  streams_[0] = stream;
  // NXFT_GEMM_AUTOTUNE: unset = try cuBLASLt's candidates on skinny (LoRA) shapes, "all" = on every shape, "0" =
  // never (cuBLASLt's first heuristic choice everywhere, the same algorithm on every call). Tuning happens on the step's own calls (see Gemm::run), so a shape's first calls rotate through the
  // candidates; results differ between candidates only in rounding. "all" is not the default: on the real path
  // (Alpaca, 2×2048) the head's last row block changes size with every batch, and tuning each new shape cost
  // more than it won (session 8: 14,644 real tok/s against 16,914).
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
  if (it == plans_.end()) it = plans_.emplace(key, make_plan(key, M, N, K, trans_a, trans_b, ab_type, d_type,
                                                             lda, ldb, ldd, align_a, align_b, align_d)).first;
  Plan& p = it->second;
  if (!p.trials.empty()) {
    launch_trial(p, d, c, a, b, alpha, beta);
    return;
  }
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, b, p.la, a, p.lb, &beta, c, p.ld, d, p.ld, &p.algo, workspaces_[lane_],
                          workspace_bytes_, streams_[lane_]),
           "cublasLtMatmul");
}

Gemm::Plan Gemm::make_plan(const Key& key, int M, int N, int K, bool trans_a, bool trans_b, cudaDataType_t ab_type,
                           cudaDataType_t d_type, int lda, int ldb, int ldd, int align_a, int align_b, int align_d) {
  Plan p;
  // cuBLAS-A is our B (op: trans_b ? T : N); cuBLAS-B is our A (op: trans_a ? T : N); cuBLAS-D is Dᵀ (N×M).
  check_lt(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)), "TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)), "TRANSB");
  // column-major shapes of the stored operands
  uint64_t a_rows = trans_b ? K : N, a_cols = trans_b ? N : K;
  uint64_t b_rows = trans_a ? M : K, b_cols = trans_a ? K : M;
  check_lt(cublasLtMatrixLayoutCreate(&p.la, ab_type, a_rows, a_cols, ldb), "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p.lb, ab_type, b_rows, b_cols, lda), "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p.ld, d_type, N, M, ldd), "layout D");
  // Skinny: a LoRA product (one side r·g ≤ 64 wide, the others at most an MLP's width), or a product of fewer
  // than 64 rows (generation's decode steps, the vocabulary-wide head included, as before session 11). Training's
  // head row blocks (M = a batch's targets in blocks, padded to 64 rows: TransformerOptions::head_row_granule; N or
  // K = the vocabulary) are not: each new one was timed on the step it appeared (session 11's profile).
  const bool skinny = std::min(M, std::min(N, K)) <= 64 && (std::max(M, std::max(N, K)) <= kSkinnyMaxDim || M < 64);
  const bool tune = autotune_ && (skinny || autotune_all_);
  // A shape met before with another M of the same power of two (the head's row blocks: one new M on most steps)
  // takes that shape's algorithm if cuBLASLt accepts it: the heuristic query costs milliseconds of host time, and
  // the GPU waits. Within a factor of two of M the heuristic's tile choice fits both.
  Key any_m = key;
  std::get<0>(any_m) = -int(std::log2(double(M)));
  if (!tune) {
    auto known = algo_any_m_.find(any_m);
    cublasLtMatmulHeuristicResult_t check{};
    if (known != algo_any_m_.end() &&
        cublasLtMatmulAlgoCheck(handle_, p.desc, p.la, p.lb, p.ld, p.ld, &known->second, &check) ==
            CUBLAS_STATUS_SUCCESS &&
        check.workspaceSize <= workspace_bytes_) {
      p.algo = known->second;
      return p;
    }
  }
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
                                                    tune ? kMaxAlgos : 1, heur, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found == 0)
    throw EngineError("cuBLASLt found no algorithm for matmul M=" + std::to_string(M) + " N=" + std::to_string(N) +
                      " K=" + std::to_string(K));
  p.algo = heur[0].algo;
  if (!tune) algo_any_m_[any_m] = p.algo;
  if (tune) {
    p.trials = candidates(p, heur, found, K);
    if (p.trials.size() < 2) p.trials.clear();
    p.best_ms.assign(p.trials.size(), INFINITY);
    p.started.assign(p.trials.size(), 0);
  }
  return p;
}

// The candidates of a tuned shape: cuBLASLt's heuristic picks and, for those that can split K, the same kernels
// with K split 2–8 ways (at least 256 of K each; partial sums reduced out of place in the workspace, in order).
// A skinny product with a 4096-row side leaves most SMs idle unless K is split: 4096×48×4096 took 53 µs where
// reading its 32 MB takes ~10 (session 11's profile).
std::vector<cublasLtMatmulAlgo_t> Gemm::candidates(const Plan& p, const cublasLtMatmulHeuristicResult_t* heur,
                                                   int found, int K) {
  std::vector<cublasLtMatmulAlgo_t> out;
  for (int i = 0; i < found; i++) {
    if (heur[i].state != CUBLAS_STATUS_SUCCESS) continue;
    out.push_back(heur[i].algo);
    int32_t splitk_ok = 0;
    uint32_t schemes = 0, current = 1;
    size_t n = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&heur[i].algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_ok,
                                          sizeof splitk_ok, &n) != CUBLAS_STATUS_SUCCESS || !splitk_ok ||
        cublasLtMatmulAlgoCapGetAttribute(&heur[i].algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes,
                                          sizeof schemes, &n) != CUBLAS_STATUS_SUCCESS ||
        !(schemes & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) ||
        cublasLtMatmulAlgoConfigGetAttribute(&heur[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &current,
                                             sizeof current, &n) != CUBLAS_STATUS_SUCCESS ||
        current > 1)   // the heuristic already split this one
      continue;
    const uint32_t scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    for (uint32_t splits : {2u, 4u, 8u}) {
      if (K / int(splits) < 256) break;
      cublasLtMatmulAlgo_t algo = heur[i].algo;
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof splits) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
              CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoCheck(handle_, p.desc, p.la, p.lb, p.ld, p.ld, &algo, &check) != CUBLAS_STATUS_SUCCESS ||
          check.workspaceSize > workspace_bytes_)
        continue;
      out.push_back(algo);
    }
  }
  return out;
}

// In-step tuning: cuBLASLt's first heuristic pick is often not the fastest skinny kernel, and which is fastest
// depends on where the operands are: timed back to back on L2-resident operands a split kernel won and then lost
// in the step; timed after an L2 flush others did (session 11, calls 2 and 3). So a shape's first calls are the
// trials: call i runs candidate i mod n, between two events on its own stream, on the step's real operands. Events
// are read once they have completed (never waited on); after kTrials timed runs of every candidate the one with
// the fastest run is kept for good. A candidate that fails to launch is dropped and that call runs the heuristic's
// first pick instead.
void Gemm::launch_trial(Plan& p, void* d, const void* c, const void* a, const void* b, float alpha, float beta) {
  harvest();
  cudaStream_t stream = streams_[lane_];
  const int n = int(p.trials.size());
  int cand = -1;
  for (int k = 0; k < n && cand < 0; k++) {   // round robin over the candidates still short of their runs
    const int i = (p.next + k) % n;
    if (p.started[i] < kTrials) cand = i;
  }
  if (cand >= 0) {
    p.next = (cand + 1) % n;
    cudaEvent_t e0 = events_.get(), e1 = events_.get();
    cudaEventRecord(e0, stream);
    if (cublasLtMatmul(handle_, p.desc, &alpha, b, p.la, a, p.lb, &beta, c, p.ld, d, p.ld, &p.trials[cand],
                       workspaces_[lane_], workspace_bytes_, stream) == CUBLAS_STATUS_SUCCESS) {
      cudaEventRecord(e1, stream);
      p.started[cand]++;
      p.unread++;
      pending_.push_back(Pending{&p, cand, e0, e1});
      return;
    }
    cudaGetLastError();
    p.started[cand] = kTrials;   // dropped: best_ms stays infinite
    events_.put(e0);
    events_.put(e1);
  }
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, b, p.la, a, p.lb, &beta, c, p.ld, d, p.ld, &p.algo,
                          workspaces_[lane_], workspace_bytes_, stream),
           "cublasLtMatmul");
}

void Gemm::harvest() {
  size_t kept = 0;
  for (size_t i = 0; i < pending_.size(); i++) {
    Pending& t = pending_[i];
    if (cudaEventQuery(t.e1) != cudaSuccess) {   // not done yet (cudaErrorNotReady is not sticky)
      cudaGetLastError();
      pending_[kept++] = t;
      continue;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, t.e0, t.e1);
    Plan& p = *t.plan;
    p.best_ms[t.cand] = std::min(p.best_ms[t.cand], ms);
    p.unread--;
    events_.put(t.e0);
    events_.put(t.e1);
    if (p.unread == 0 && std::all_of(p.started.begin(), p.started.end(), [](int k) { return k >= kTrials; })) {
      const size_t best = size_t(std::min_element(p.best_ms.begin(), p.best_ms.end()) - p.best_ms.begin());
      if (p.best_ms[best] < INFINITY) p.algo = p.trials[best];
      p.trials.clear();
      p.best_ms.clear();
      p.started.clear();
    }
  }
  pending_.resize(kept);
}

}  // namespace cuda
}  // namespace nxft
