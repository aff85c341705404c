// glu.cu — gated MLP activation: out = act(gate)·up with act = silu (SwiGLU) or gelu_tanh (GeGLU).
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

__device__ __forceinline__ float act_value(float g, int act) {
  if (act == 0) return g / (1.0f + expf(-g));
  const float k = 0.7978845608028654f;  // √(2/π)
  return 0.5f * g * (1.0f + tanhf(k * (g + 0.044715f * g * g * g)));
}
__device__ __forceinline__ float act_grad(float g, int act) {
  if (act == 0) {
    float sg = 1.0f / (1.0f + expf(-g));
    return sg * (1.0f + g * (1.0f - sg));
  }
  const float k = 0.7978845608028654f;
  float u = k * (g + 0.044715f * g * g * g);
  float t = tanhf(u);
  return 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * g * g);
}

// Matches transformers' bf16 arithmetic: act(gate) is rounded to bf16 before the product.
__global__ void glu_forward_kernel(bf16* out, const bf16* gate, const bf16* up, size_t n, int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float a = __bfloat162float(__float2bfloat16_rn(act_value(__bfloat162float(gate[i]), act)));
    out[i] = __float2bfloat16_rn(a * __bfloat162float(up[i]));
  }
}
void launch_glu_forward(bf16* out, const bf16* gate, const bf16* up, size_t n, int act, cudaStream_t s) {
  if (n == 0) return;
  glu_forward_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(out, gate, up, n, act);
  CUDA_LAUNCH_CHECK();
}

__global__ void glu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                    size_t n, int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float g = __bfloat162float(gate[i]), u = __bfloat162float(up[i]), d = __bfloat162float(dout[i]);
    float a = act_value(g, act);
    dgate[i] = __float2bfloat16_rn(d * u * act_grad(g, act));
    dup[i] = __float2bfloat16_rn(d * a);
  }
}
void launch_glu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, size_t n,
                         int act, cudaStream_t s) {
  if (n == 0) return;
  glu_backward_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(dgate, dup, dout, gate, up, n, act);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
