// lora_update.cu — the LoRA "expand" products as one memory-bound pass: D (M,N) = alpha·A·op(B) + beta·D with
// a tiny inner dimension K ≤ 16 (the LoRA rank): y += s·xa·Bᵀ in the forward, dx += dxa·A in the backward.
// Each thread keeps an 8-column slice of B in registers and streams rows of D with 16-byte loads/stores, so
// D is read and written exactly once (cuBLASLt reached 50–65% of bandwidth on these shapes; see the profile).
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

constexpr int kRankMax = 16;
constexpr int kRowsPerBlock = 32;

// B's 8×K slice stays in registers as fp32 for the whole block of rows; four rows of D are loaded before any
// is used, so each thread has 64 bytes of D in flight (the kernel is bound by D's read + write).
__device__ __forceinline__ void load_a_row(float (&a)[kRankMax], const bf16* A, int r, int K) {
#pragma unroll
  for (int k = 0; k < kRankMax; k++) a[k] = k < K ? __bfloat162float(__ldg(A + (size_t)r * K + k)) : 0.0f;
}

__global__ void __launch_bounds__(128) rank_update_kernel(bf16* D, const bf16* A, const bf16* B, int M, int N, int K,
                                                          bool trans_b, float alpha, float beta) {
  int c8 = blockIdx.x * blockDim.x + threadIdx.x;  // this thread's 8 columns: 8·c8 … 8·c8+7
  if (c8 >= N / 8) return;
  float b[8][kRankMax];
#pragma unroll
  for (int j = 0; j < 8; j++)
#pragma unroll
    for (int k = 0; k < kRankMax; k++) {
      int col = c8 * 8 + j;
      b[j][k] = k < K ? __bfloat162float(trans_b ? B[(size_t)col * K + k] : B[(size_t)k * N + col]) : 0.0f;
    }
  const int r_begin = blockIdx.y * kRowsPerBlock, r_end = min(M, r_begin + kRowsPerBlock);
  for (int r0 = r_begin; r0 < r_end; r0 += 4) {
    uint4 dv[4];
#pragma unroll
    for (int u = 0; u < 4; u++) {
      dv[u] = make_uint4(0, 0, 0, 0);
      if (beta != 0.0f && r0 + u < r_end) dv[u] = reinterpret_cast<const uint4*>(D + (size_t)(r0 + u) * N)[c8];
    }
#pragma unroll
    for (int u = 0; u < 4; u++) {
      int r = r0 + u;
      if (r >= r_end) break;
      float a[kRankMax];
      load_a_row(a, A, r, K);
      bf16* d = reinterpret_cast<bf16*>(&dv[u]);
#pragma unroll
      for (int j = 0; j < 8; j++) {
        float acc = 0.0f;
#pragma unroll
        for (int k = 0; k < kRankMax; k++) acc += a[k] * b[j][k];
        float old = beta != 0.0f ? beta * __bfloat162float(d[j]) : 0.0f;
        d[j] = __float2bfloat16_rn(alpha * acc + old);
      }
      reinterpret_cast<uint4*>(D + (size_t)r * N)[c8] = dv[u];
    }
  }
}

bool rank_update_applies(int M, int N, int K, bool trans_a, const void* D) {
  return !trans_a && K >= 1 && K <= kRankMax && N % 8 == 0 && N >= 256 && M >= 64 &&
         is_aligned(D, 16);
}

void launch_rank_update(bf16* D, const bf16* A, const bf16* B, int M, int N, int K, bool trans_b, float alpha,
                        float beta, cudaStream_t s) {
  int chunks = N / 8;
  int threads = std::min(128, ((chunks + 31) / 32) * 32);
  dim3 grid(ceil_div(chunks, threads), ceil_div(M, kRowsPerBlock));
  rank_update_kernel<<<grid, threads, 0, s>>>(D, A, B, M, N, K, trans_b, alpha, beta);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
