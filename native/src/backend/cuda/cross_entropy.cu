// cross_entropy.cu — online-softmax cross-entropy over vocabulary chunks (never the full (N,V) logits at once;
// llm.c fused_classifier / Liger FLCE idea). One block per token row.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

__global__ void ce_stats_kernel(const bf16* logits, const int32_t* targets, float* run_max, float* run_sum,
                                float* tlogit, int Vc, int v0) {
  int row = blockIdx.x;
  int t = targets[row];
  if (t == -100) return;
  const bf16* l = logits + (size_t)row * Vc;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < Vc; j += blockDim.x) mx = fmaxf(mx, __bfloat162float(l[j]));
  mx = block_max(mx);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < Vc; j += blockDim.x) sum += expf(__bfloat162float(l[j]) - mx);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    float old_m = run_max[row], old_s = run_sum[row];
    float m = fmaxf(old_m, mx);
    run_sum[row] = (old_m == -INFINITY ? 0.0f : old_s * expf(old_m - m)) + sum * expf(mx - m);
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
  if (t == -100) {
    for (int j = threadIdx.x; j < Vc; j += blockDim.x) l[j] = __float2bfloat16_rn(0.0f);
    return;
  }
  float m = lse[row];
  for (int j = threadIdx.x; j < Vc; j += blockDim.x) {
    float p = expf(__bfloat162float(l[j]) - m);
    if (j + v0 == t) p -= 1.0f;
    l[j] = __float2bfloat16_rn(p * grad_scale);
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
