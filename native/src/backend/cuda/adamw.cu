// adamw.cu — torch.optim.AdamW (foreach) on fp32 LoRA parameters, and the deterministic Σx² for grad norms.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// Scalars arrive as torch computes them (Python doubles rounded to fp32 where torch applies them), and the
// update follows torch's foreach order: p *= decay; m = lerp(m, g, w1); v = v·β2; v += (1−β2)·g·g;
// p += −step · m / (sqrt(v)/sqrt(bc2) + eps).
__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, AdamWScalars c) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float gi = c.grad_scale == 1.0f ? g[i] : g[i] * c.grad_scale;
    float pi = c.decay_on ? p[i] * c.decay : p[i];
    float mi = c.lerp_low ? m[i] + c.w1 * (gi - m[i]) : gi - (gi - m[i]) * (1.0f - c.w1);
    float vi = v[i] * c.b2;
    vi = vi + c.one_minus_b2 * gi * gi;
    float denom = sqrtf(vi) / c.bc2_sqrt + c.eps;
    p[i] = pi + c.neg_step * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}
void launch_adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamWScalars& c, cudaStream_t s) {
  if (n == 0) return;
  adamw_kernel<<<std::min<size_t>(ceil_div(n, 256), 4096), 256, 0, s>>>(p, g, m, v, n, c);
  CUDA_LAUNCH_CHECK();
}

template <typename T> __global__ void sum_sq_partial_kernel(double* partials, const T* x, size_t n) {
  double acc = 0.0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    double v = to_f(x[i]);
    acc += v * v;
  }
  __shared__ double sh[256];
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) sh[threadIdx.x] += sh[threadIdx.x + o];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}
__global__ void sum_partials_kernel(double* out, const double* partials, int n) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += partials[i];
    *out = s;
  }
}
template <typename T> void launch_sum_sq(double* out, double* partials, const T* x, size_t n, cudaStream_t s) {
  sum_sq_partial_kernel<T><<<kSumSqBlocks, 256, 0, s>>>(partials, x, n);
  CUDA_LAUNCH_CHECK();
  sum_partials_kernel<<<1, 32, 0, s>>>(out, partials, kSumSqBlocks);
  CUDA_LAUNCH_CHECK();
}
template void launch_sum_sq<float>(double*, double*, const float*, size_t, cudaStream_t);
template void launch_sum_sq<bf16>(double*, double*, const bf16*, size_t, cudaStream_t);

}  // namespace cuda
}  // namespace nxft
