// nf4.cu — NF4 (bitsandbytes code values, native.md §4.1) for QLoRA base weights: quantization on the device
// (quantize_base "nf4": the weight goes up in fp32 and never exists as codes on the host), double quantization of
// the absmax (bitsandbytes' nested absmax: 8-bit codes + fp32 per 256 + offset, bit for bit model/quant4.cpp's
// double_quantize) and dequantization to bf16 (native.md §4.4: a whole weight into a bf16 scratch, then one
// cuBLASLt GEMM), from fp32 or nested absmax.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

__constant__ float kNF4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                               -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                               0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                               0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                               0.7229568362236023f, 1.0f};

// bitsandbytes' signed 8-bit dynamic map of double-quantized absmax (model/quant4.h dynamic_map_signed()), set once
// per process.
__constant__ float kDynamicMap[256];
void set_dynamic_map(const float* map256) {
  CUDA_CHECK(cudaMemcpyToSymbol(kDynamicMap, map256, 256 * sizeof(float)));
}

// ---- dequantization to bf16 -------------------------------------------------------------------------------------
// Element 2k is the high nibble of byte k, 2k+1 the low nibble; absmax per 64 elements, fp32 or nested:
// absmax_j = map[q_j]·absmax2[j/256] + offset, each step rounded in fp32 (bitsandbytes' order; __fmul_rn/__fadd_rn
// keep nvcc from contracting it to an fma). Then w = code·absmax in fp32, rounded once to bf16.
// 8 values per thread: 4 code bytes in, 16 bytes of bf16 out (n % 64 == 0, so a thread's 8 values share one
// 64-block; cudaMalloc'd codes and scratch are 16-byte aligned). The 16 code values sit in shared memory: lanes
// index them by data, which constant memory serializes (up to 16 distinct addresses per load), while 16 floats in
// 16 banks serve any pattern without conflicts. A warp spans 4 blocks, so the nested map read is 4 addresses.
template <bool kNested>
__global__ void nf4_dequant_kernel(uint4* out, const uint32_t* codes, const float* scales, const uint8_t* absmax_q,
                                   const float* absmax2, float offset, size_t n8) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kNF4[threadIdx.x];
  __syncthreads();
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
    const uint32_t c = codes[i];
    const size_t j = i / 8;   // the 64-block of values 8i … 8i+7
    const float s = kNested ? __fadd_rn(__fmul_rn(kDynamicMap[absmax_q[j]], absmax2[j / 256]), offset) : scales[j];
    uint4 o;
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const uint32_t byte = (c >> (8 * k)) & 0xFFu;   // little-endian: byte k of the word is code byte 4i + k
      p[k].x = __float2bfloat16_rn(code[byte >> 4] * s);
      p[k].y = __float2bfloat16_rn(code[byte & 15u] * s);
    }
    out[i] = o;
  }
}
static unsigned dequant_grid(size_t n8) { return (unsigned)std::min<size_t>(ceil_div(n8, 256), 65535); }
void launch_nf4_dequant(bf16* out, const uint8_t* codes, const float* scales, size_t n, cudaStream_t s) {
  const size_t n8 = n / 8;   // the callers' n % 64 == 0
  if (n8 == 0) return;
  nf4_dequant_kernel<false><<<dequant_grid(n8), 256, 0, s>>>(reinterpret_cast<uint4*>(out),
                                                            reinterpret_cast<const uint32_t*>(codes), scales, nullptr,
                                                            nullptr, 0.0f, n8);
  CUDA_LAUNCH_CHECK();
}
void launch_nf4_dequant_nested(bf16* out, const uint8_t* codes, const uint8_t* absmax_q, const float* absmax2,
                               float offset, size_t n, cudaStream_t s) {
  const size_t n8 = n / 8;
  if (n8 == 0) return;
  nf4_dequant_kernel<true><<<dequant_grid(n8), 256, 0, s>>>(reinterpret_cast<uint4*>(out),
                                                           reinterpret_cast<const uint32_t*>(codes), nullptr, absmax_q,
                                                           absmax2, offset, n8);
  CUDA_LAUNCH_CHECK();
}

// ---- double quantization of the absmax (bitsandbytes' compress_statistics / nested absmax) -------------------
// Step 1: the double sum of each 256-block of absmax, in order (one thread per block).
__global__ void absmax_block_sums_kernel(double* sums, const float* absmax, size_t n) {
  const size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (b * 256 >= n) return;
  const size_t end = min(n, b * 256 + 256);
  double acc = 0;
  for (size_t i = b * 256; i < end; i++) acc = __dadd_rn(acc, (double)absmax[i]);
  sums[b] = acc;
}
// Step 2: offset = float(Σ block sums in order / n): one thread (a few thousand blocks per weight).
__global__ void absmax_offset_kernel(float* offset, const double* sums, size_t n_blocks, size_t n) {
  double acc = 0;
  for (size_t b = 0; b < n_blocks; b++) acc = __dadd_rn(acc, sums[b]);
  *offset = __double2float_rn(__ddiv_rn(acc, (double)n));
}
// Step 3: one CTA of 256 threads per 256-block: absmax2 = max |a − offset|, x = clamp((a − offset)·(1/absmax2),
// −1, 1) with std::max/std::min's NaN behaviour (a zero block gives 0·inf = NaN → −1, as on the CPU), then the
// nearest map value, the lower one on a tie: the CPU's branch-free upper_bound, step for step.
__global__ void absmax_double_quantize_kernel(uint8_t* q, float* absmax2, const float* absmax, const float* offset_ptr,
                                              size_t n) {
  __shared__ float map[256];
  map[threadIdx.x] = kDynamicMap[threadIdx.x];
  const float offset = *offset_ptr;
  const size_t i = blockIdx.x * (size_t)256 + threadIdx.x;
  const float d = i < n ? __fsub_rn(absmax[i], offset) : 0.0f;
  const float amax = block_max(fabsf(d));   // exact in any order; block_max syncs, so map[] is ready after it
  if (threadIdx.x == 0) absmax2[blockIdx.x] = amax;
  if (i >= n) return;
  const float inv = __frcp_rn(amax);                 // = the CPU's 1.0f / amax (both correctly rounded)
  const float v = __fmul_rn(d, inv);
  float x = (-1.0f < v) ? v : -1.0f;                 // std::max(-1.0f, v)
  x = (x < 1.0f) ? x : 1.0f;                         // std::min(1.0f, x)
  unsigned hi = 0;
  for (unsigned step = 128; step >= 1; step /= 2) hi += (map[hi + step - 1] <= x) ? step : 0u;
  unsigned best = hi == 0 ? 0 : hi - 1;
  if (hi > 0 && hi < 256 && fabsf(__fsub_rn(x, map[hi])) < fabsf(__fsub_rn(x, map[hi - 1]))) best = hi;
  q[i] = (uint8_t)best;
}
void launch_absmax_double_quantize(uint8_t* q, float* absmax2, float* offset, double* block_sums, const float* absmax,
                                   size_t n, cudaStream_t s) {
  if (n == 0) return;
  const size_t n_blocks = (n + 255) / 256;
  absmax_block_sums_kernel<<<ceil_div(n_blocks, 128), 128, 0, s>>>(block_sums, absmax, n);
  CUDA_LAUNCH_CHECK();
  absmax_offset_kernel<<<1, 1, 0, s>>>(offset, block_sums, n_blocks, n);
  CUDA_LAUNCH_CHECK();
  absmax_double_quantize_kernel<<<(unsigned)n_blocks, 256, 0, s>>>(q, absmax2, absmax, offset, n);
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
