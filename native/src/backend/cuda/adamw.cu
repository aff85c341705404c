// adamw.cu — torch.optim.AdamW (foreach) on fp32 LoRA parameters, and the deterministic Σx² for grad norms.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                             float beta2, float eps, float wd, float step_size, float bc2_sqrt, float grad_scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float gi = g[i] * grad_scale;
    float pi = p[i] * (1.0f - lr * wd);
    float mi = m[i] + (1.0f - beta1) * (gi - m[i]);  // lerp(m, g, 1-β1)
    float vi = v[i] * beta2 + (1.0f - beta2) * gi * gi;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    p[i] = pi - step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}
void launch_adamw(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1, float beta2,
                  float eps, float wd, float step_size, float bc2_sqrt, float grad_scale, cudaStream_t s) {
  if (n == 0) return;
  adamw_kernel<<<std::min<size_t>(ceil_div(n, 256), 4096), 256, 0, s>>>(p, g, m, v, n, lr, beta1, beta2, eps, wd,
                                                                        step_size, bc2_sqrt, grad_scale);
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
