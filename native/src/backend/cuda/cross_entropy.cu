// cross_entropy.cu — online-softmax cross-entropy over vocabulary chunks (never the full (N,V) logits at once;
// llm.c fused_classifier / Liger FLCE idea). One block per token row.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// 16-byte loads (8 bf16) when the chunk rows allow it: these kernels stream (rows × Vc) logits, ~0.5 GB per block
// of 2048 Llama-3 rows, so they run at HBM bandwidth only with vector accesses.
__device__ __forceinline__ bool rows_vectorizable(const void* p, int Vc) {
  return Vc % 8 == 0 && is_aligned(p, 16);
}

// One pass per row: every thread keeps an online (max, Σexp) over its elements, then the block combines them.
__global__ void ce_stats_kernel(const bf16* logits, const int32_t* targets, float* run_max, float* run_sum,
                                float* tlogit, int Vc, int v0) {
  int row = blockIdx.x;
  int t = targets[row];
  if (t == -100) return;
  const bf16* l = logits + (size_t)row * Vc;
  float mx = -INFINITY, sum = 0.0f;
  auto add = [&](float x) {   // online softmax: rescale the running sum when the max grows
    if (x > mx) {
      sum = sum * expf(mx - x) + 1.0f;
      mx = x;
    } else {
      sum += expf(x - mx);
    }
  };
  if (rows_vectorizable(logits, Vc)) {
    const uint4* l8 = reinterpret_cast<const uint4*>(l);
    for (int j = threadIdx.x; j < Vc / 8; j += blockDim.x) {
      uint4 u = l8[j];
      const bf16* e = reinterpret_cast<const bf16*>(&u);
#pragma unroll
      for (int k = 0; k < 8; k++) add(__bfloat162float(e[k]));
    }
  } else {
    for (int j = threadIdx.x; j < Vc; j += blockDim.x) add(__bfloat162float(l[j]));
  }
  const float bmx = block_max(mx);
  sum = block_sum(mx == -INFINITY ? 0.0f : sum * expf(mx - bmx));
  if (threadIdx.x == 0) {
    float old_m = run_max[row], old_s = run_sum[row];
    float m = fmaxf(old_m, bmx);
    run_sum[row] = (old_m == -INFINITY ? 0.0f : old_s * expf(old_m - m)) + sum * expf(bmx - m);
    run_max[row] = m;
    if (t >= v0 && t < v0 + Vc) tlogit[row] = __bfloat162float(l[t - v0]);
  }
}
void launch_ce_stats(const bf16* logits, const int32_t* targets, float* run_max, float* run_sum, float* tlogit,
                     int n, int Vc, int v0, cudaStream_t s) {
  if (n == 0) return;
  ce_stats_kernel<<<n, 512, 0, s>>>(logits, targets, run_max, run_sum, tlogit, Vc, v0);
  CUDA_LAUNCH_CHECK();
}

__global__ void ce_finish_kernel(float* loss, float* lse, const float* run_max, const float* run_sum,
                                 const float* tlogit, const int32_t* targets, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (targets[i] == -100) {
    loss[i] = 0.0f;
    lse[i] = 0.0f;
    return;
  }
  float l = run_max[i] + logf(run_sum[i]);
  lse[i] = l;
  loss[i] = l - tlogit[i];
}
void launch_ce_finish(float* loss, float* lse, const float* run_max, const float* run_sum, const float* tlogit,
                      const int32_t* targets, int n, cudaStream_t s) {
  if (n == 0) return;
  ce_finish_kernel<<<ceil_div(n, 256), 256, 0, s>>>(loss, lse, run_max, run_sum, tlogit, targets, n);
  CUDA_LAUNCH_CHECK();
}

// In place: logits → (softmax − onehot)·grad_scale; ignored rows → 0.
__global__ void ce_grad_kernel(bf16* logits, const int32_t* targets, const float* lse, int Vc, int v0,
                               float grad_scale) {
  int row = blockIdx.x;
  int t = targets[row];
  bf16* l = logits + (size_t)row * Vc;
  const float m = lse[row];
  auto grad = [&](float x, int j) {
    if (t == -100) return 0.0f;
    float p = expf(x - m);
    if (j + v0 == t) p -= 1.0f;
    return p * grad_scale;
  };
  if (rows_vectorizable(logits, Vc)) {
    uint4* l8 = reinterpret_cast<uint4*>(l);
    for (int j = threadIdx.x; j < Vc / 8; j += blockDim.x) {
      uint4 u = l8[j];
      bf16* e = reinterpret_cast<bf16*>(&u);
#pragma unroll
      for (int k = 0; k < 8; k++) e[k] = __float2bfloat16_rn(grad(__bfloat162float(e[k]), 8 * j + k));
      l8[j] = u;
    }
  } else {
    for (int j = threadIdx.x; j < Vc; j += blockDim.x) l[j] = __float2bfloat16_rn(grad(__bfloat162float(l[j]), j));
  }
}
void launch_ce_grad(bf16* logits, const int32_t* targets, const float* lse, int n, int Vc, int v0, float grad_scale,
                    cudaStream_t s) {
  if (n == 0) return;
  ce_grad_kernel<<<n, 512, 0, s>>>(logits, targets, lse, Vc, v0, grad_scale);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
