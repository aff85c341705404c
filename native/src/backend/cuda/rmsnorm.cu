// rmsnorm.cu — RMSNorm forward/backward, one block per row (HF: fp32 statistics, bf16 storage).
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// out (N,C) = round(x·rstd)·w (llama) or round(x·rstd·(1+w)) (gemma); rstd (N) = 1/sqrt(mean(x²)+eps).
__global__ void rmsnorm_forward_kernel(bf16* out, float* rstd, const bf16* x, const bf16* w, int C, int ld_out,
                                       float eps, bool plus_one) {
  const bf16* xr = x + (size_t)blockIdx.x * C;
  bf16* o = out + (size_t)blockIdx.x * ld_out;
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
// Rows of C % 8 == 0 (every real model): 16-byte loads, 8 values per thread per step.
__global__ void rmsnorm_forward_vec_kernel(bf16* out, float* rstd, const bf16* x, const bf16* w, int C, int ld_out,
                                           float eps, bool plus_one) {
  const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)blockIdx.x * C);
  uint4* o = reinterpret_cast<uint4*>(out + (size_t)blockIdx.x * ld_out);
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  int C8 = C / 8;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < C8; c += blockDim.x) {
    uint4 v = xr[c];
    const bf16* e = reinterpret_cast<const bf16*>(&v);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float f = __bfloat162float(e[k]);
      ss += f * f;
    }
  }
  ss = block_sum(ss);
  float r = rsqrtf(ss / C + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  for (int c = threadIdx.x; c < C8; c += blockDim.x) {
    uint4 v = xr[c], ww = wv[c], ov;
    const bf16* e = reinterpret_cast<const bf16*>(&v);
    const bf16* we = reinterpret_cast<const bf16*>(&ww);
    bf16* oe = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float f = __bfloat162float(e[k]) * r, wc = __bfloat162float(we[k]);
      oe[k] = plus_one ? __float2bfloat16_rn(f * (1.0f + wc))
                       : __float2bfloat16_rn(__bfloat162float(__float2bfloat16_rn(f)) * wc);
    }
    o[c] = ov;
  }
}

void launch_rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int N, int C, int ld_out,
                            float eps, bool plus_one, cudaStream_t s) {
  if (N == 0) return;
  if (C % 8 == 0 && ld_out % 8 == 0 && is_aligned(out, 16) && is_aligned(x, 16) && is_aligned(w, 16))
    rmsnorm_forward_vec_kernel<<<N, 256, 0, s>>>(out, rstd, x, w, C, ld_out, eps, plus_one);
  else
    rmsnorm_forward_kernel<<<N, 256, 0, s>>>(out, rstd, x, w, C, ld_out, eps, plus_one);
  CUDA_LAUNCH_CHECK();
}

// dx += rstd·g − x·rstd³·mean(g·x), g = dout·w (or dout·(1+w)). dout, x packed (N, C); dx has row pitch ld_dx
// (the model's residual gradient keeps spare columns after each row), so only its C columns are touched.
__global__ void rmsnorm_backward_kernel(bf16* dx, const bf16* dout, const bf16* x, const bf16* w, const float* rstd,
                                        int C, int ld_dx, bool plus_one) {
  size_t base = (size_t)blockIdx.x * C;
  bf16* dxr = dx + (size_t)blockIdx.x * ld_dx;
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
    dxr[c] = __float2bfloat16_rn(__bfloat162float(dxr[c]) + d);
  }
}
// C % 8 == 0, ld_dx % 8 == 0 and 16-byte aligned rows: 16-byte loads, 8 values per thread per step.
__global__ void rmsnorm_backward_vec_kernel(bf16* dx, const bf16* dout, const bf16* x, const bf16* w,
                                            const float* rstd, int C, int ld_dx, bool plus_one) {
  size_t base = (size_t)blockIdx.x * C;
  const uint4* dr = reinterpret_cast<const uint4*>(dout + base);
  const uint4* xr = reinterpret_cast<const uint4*>(x + base);
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  uint4* dxr = reinterpret_cast<uint4*>(dx + (size_t)blockIdx.x * ld_dx);
  int C8 = C / 8;
  float r = rstd[blockIdx.x], add1 = plus_one ? 1.0f : 0.0f;
  float dot = 0.0f;
  for (int c = threadIdx.x; c < C8; c += blockDim.x) {
    uint4 dv = dr[c], xv = xr[c], ww = wv[c];
    const bf16* de = reinterpret_cast<const bf16*>(&dv);
    const bf16* xe = reinterpret_cast<const bf16*>(&xv);
    const bf16* we = reinterpret_cast<const bf16*>(&ww);
#pragma unroll
    for (int k = 0; k < 8; k++)
      dot += __bfloat162float(de[k]) * (__bfloat162float(we[k]) + add1) * __bfloat162float(xe[k]);
  }
  dot = block_sum(dot);
  float kk = r * r * r * dot / C;
  for (int c = threadIdx.x; c < C8; c += blockDim.x) {
    uint4 dv = dr[c], xv = xr[c], ww = wv[c], ov = dxr[c];
    const bf16* de = reinterpret_cast<const bf16*>(&dv);
    const bf16* xe = reinterpret_cast<const bf16*>(&xv);
    const bf16* we = reinterpret_cast<const bf16*>(&ww);
    bf16* oe = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float g = __bfloat162float(de[k]) * (__bfloat162float(we[k]) + add1);
      oe[k] = __float2bfloat16_rn(__bfloat162float(oe[k]) + r * g - __bfloat162float(xe[k]) * kk);
    }
    dxr[c] = ov;
  }
}
void launch_rmsnorm_backward(bf16* dx, const bf16* dout, const bf16* x, const bf16* w, const float* rstd, int N,
                             int C, int ld_dx, bool plus_one, cudaStream_t s) {
  if (N == 0) return;
  // Every row start must be 16-byte aligned for the vector path: aligned base pointers and pitches of 8 elements.
  if (C % 8 == 0 && ld_dx % 8 == 0 && is_aligned(dx, 16) && is_aligned(dout, 16) && is_aligned(x, 16) && is_aligned(w, 16))
    rmsnorm_backward_vec_kernel<<<N, 256, 0, s>>>(dx, dout, x, w, rstd, C, ld_dx, plus_one);
  else
    rmsnorm_backward_kernel<<<N, 256, 0, s>>>(dx, dout, x, w, rstd, C, ld_dx, plus_one);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
