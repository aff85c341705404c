// nf4.cu — NF4 (bitsandbytes code values, native.md §4.1) for QLoRA base weights: quantization on the device
// (quantize_base "nf4": the weight goes up in fp32 and never exists as codes on the host) and dequantization to
// bf16 (simplest fast path, native.md §4.4: a whole weight into a bf16 scratch, then one cuBLASLt GEMM).
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

// bitsandbytes' quantize_4bit (nf4, blocksize 64), bit for bit the CPU reference quantize_nf4 (model/quant4.cpp):
// absmax = max |w| over each 64-block; code = the nearest NF4 value to w·(1/absmax) (IEEE division and product:
// no fast math, nothing to contract), the first on a tie; a zero block is code 7. One warp per block: lane j owns
// elements 2j, 2j+1 (= byte j), the absmax is a warp max (exact in any order).
__global__ void nf4_quantize_kernel(uint8_t* codes, float* absmax, const float* w, size_t n_blocks) {
  const unsigned lane = threadIdx.x & 31;
  const size_t warps = (size_t)gridDim.x * (blockDim.x / 32);
  for (size_t b = blockIdx.x * (size_t)(blockDim.x / 32) + threadIdx.x / 32; b < n_blocks; b += warps) {
    const float2 v = reinterpret_cast<const float2*>(w + b * 64)[lane];
    float amax = fmaxf(fabsf(v.x), fabsf(v.y));
    for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    uint8_t q[2] = {7, 7};
    if (amax > 0.0f) {
      const float inv = __frcp_rn(amax);   // 1/absmax rounded to nearest, as the CPU's 1.0f / amax
      const float xs[2] = {__fmul_rn(v.x, inv), __fmul_rn(v.y, inv)};
      for (int h = 0; h < 2; h++) {
        float best_d = fabsf(__fsub_rn(xs[h], kNF4[0]));
        int best = 0;
        for (int c = 1; c < 16; c++) {
          const float d = fabsf(__fsub_rn(xs[h], kNF4[c]));
          if (d < best_d) best_d = d, best = c;
        }
        q[h] = (uint8_t)best;
      }
    }
    codes[b * 32 + lane] = (uint8_t)((q[0] << 4) | q[1]);
    if (lane == 0) absmax[b] = amax;
  }
}
void launch_nf4_quantize(uint8_t* codes, float* absmax, const float* w, size_t n, cudaStream_t s) {
  const size_t n_blocks = n / 64;   // the caller checks n % 64 == 0
  if (n_blocks == 0) return;
  const int warps_per_cta = 8;
  nf4_quantize_kernel<<<std::min<size_t>(ceil_div(n_blocks, (size_t)warps_per_cta), 65535), 32 * warps_per_cta, 0, s>>>(
      codes, absmax, w, n_blocks);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
