// rmsnorm.cu — RMSNorm forward/backward, one block per row (HF: fp32 statistics, bf16 storage).
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// out (N,C) = round(x·rstd)·w (llama) or round(x·rstd·(1+w)) (gemma); rstd (N) = 1/sqrt(mean(x²)+eps).
__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* x, const bf16* w, int C, float eps,
                                       bool plus_one) {
  const bf16* xr = x + (size_t)blockIdx.x * C;
  bf16* o = out + (size_t)blockIdx.x * C;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = __bfloat162float(xr[c]);
    ss += v * v;
  }
  ss = block_sum(ss);
  float r = rsqrtf(ss / C + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float v = __bfloat162float(xr[c]) * r, wc = __bfloat162float(w[c]);
    o[c] = plus_one ? __float2bfloat16_rn(v * (1.0f + wc))
                    : __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(v)) * wc);
  }
}
void launch_rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int N, int C, float eps,
                            bool plus_one, cudaStream_t s) {
  if (N == 0) return;
  rmsnorm_forward_kernel<<<N, 256, 0, s>>>(out, rstd, x, w, C, eps, plus_one);
  CUDA_LAUNCH_CHECK();
}

// dx += rstd·g − x·rstd³·mean(g·x), g = dout·w (or dout·(1+w)).
__global__ void rmsnorm_backward_kernel(bf16* dx, const bf16* dout, const bf16* x, const bf16* w, const float* rstd,
                                        int C, bool plus_one) {
  size_t base = (size_t)blockIdx.x * C;
  float r = rstd[blockIdx.x];
  float dot = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float wc = __bfloat162float(w[c]) + (plus_one ? 1.0f : 0.0f);
    dot += __bfloat162float(dout[base + c]) * wc * __bfloat162float(x[base + c]);
  }
  dot = block_sum(dot);
  float k = r * r * r * dot / C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float wc = __bfloat162float(w[c]) + (plus_one ? 1.0f : 0.0f);
    float g = __bfloat162float(dout[base + c]) * wc;
    float d = r * g - __bfloat162float(x[base + c]) * k;
    dx[base + c] = __float2bfloat16_rn(__bfloat162float(dx[base + c]) + d);
  }
}
void launch_rmsnorm_backward(bf16* dx, const bf16* dout, const bf16* x, const bf16* w, const float* rstd, int N,
                             int C, bool plus_one, cudaStream_t s) {
  if (N == 0) return;
  rmsnorm_backward_kernel<<<N, 256, 0, s>>>(dx, dout, x, w, rstd, C, plus_one);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
