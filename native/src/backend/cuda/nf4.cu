// nf4.cu — NF4 (bitsandbytes code values, native.md §4.1) dequantization to bf16 for QLoRA base weights.
// Simplest fast path (native.md §4.4): dequantize a whole weight into a bf16 scratch, then one cuBLASLt GEMM.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

__constant__ float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                               -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                               0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                               0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                               0.7229568362236023f, 1.0f};

// element 2k is the high nibble of byte k, 2k+1 the low nibble; one fp32 absmax per 64 elements.
__global__ void nf4_dequant_kernel(bf16* out, const uint8_t* codes, const float* scales, size_t n_bytes) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_bytes; i += (size_t)gridDim.x * blockDim.x) {
    uint8_t c = codes[i];
    float s = scales[(2 * i) / 64];
    __nv_bfloat162 pair;
    pair.x = __float2bfloat16_rn(kNF4[c >> 4] * s);
    pair.y = __float2bfloat16_rn(kNF4[c & 15] * s);
    reinterpret_cast<__nv_bfloat162*>(out)[i] = pair;
  }
}
void launch_nf4_dequant(bf16* out, const uint8_t* codes, const float* scales, size_t n, cudaStream_t s) {
  size_t n_bytes = n / 2;
  if (n_bytes == 0) return;
  nf4_dequant_kernel<<<std::min<size_t>(ceil_div(n_bytes, 256), 65535), 256, 0, s>>>(out, codes, scales, n_bytes);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
