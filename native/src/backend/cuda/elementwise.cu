// elementwise.cu — embedding lookup, rows by index, adds, fills, conversions, device-side random init, LoRA dropout.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"
#include "backend/backend.h"

namespace nxft {
namespace cuda {

// out (N,C) = table[ids[i]] · scale; scale already rounded to bf16 by the caller when ≠ 1.
__global__ void embedding_kernel(bf16* out, const int32_t* ids, const bf16* table, int N, int C, float scale) {
  int i = blockIdx.x;
  const bf16* row = table + (size_t)ids[i] * C;
  bf16* o = out + (size_t)i * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    o[c] = scale == 1.0f ? row[c] : __float2bfloat16_rn(__bfloat162float(row[c]) * scale);
}
void launch_embedding(bf16* out, const int32_t* ids, const bf16* table, int N, int C, float scale, cudaStream_t s) {
  if (N == 0) return;
  embedding_kernel<<<N, 256, 0, s>>>(out, ids, table, N, C, scale);
  CUDA_LAUNCH_CHECK();
}

// out (n, row) = src[rows[i]], or zeros where rows[i] < 0: one block per output row, rows copied as Word-sized words
// (16 bytes when every row start allows it). Word{} is all-zero bits, i.e. +0 in bf16 and fp32.
template <typename Word>
__global__ void gather_rows_kernel(Word* out, const Word* src, const int32_t* rows, int words_per_row) {
  const int i = blockIdx.x;
  const int r = rows[i];
  Word* o = out + (size_t)i * words_per_row;
  if (r < 0) {
    for (int c = threadIdx.x; c < words_per_row; c += blockDim.x) o[c] = Word{};
    return;
  }
  const Word* x = src + (size_t)r * words_per_row;
  for (int c = threadIdx.x; c < words_per_row; c += blockDim.x) o[c] = x[c];
}
void launch_gather_rows(void* out, const void* src, const int32_t* rows, int n, size_t row_bytes, cudaStream_t s) {
  if (n == 0 || row_bytes == 0) return;
  if (row_bytes % 16 == 0 && is_aligned(out, 16) && is_aligned(src, 16)) {
    gather_rows_kernel<uint4><<<n, 128, 0, s>>>(static_cast<uint4*>(out), static_cast<const uint4*>(src), rows,
                                                int(row_bytes / 16));
  } else if (row_bytes % 4 == 0 && is_aligned(out, 4) && is_aligned(src, 4)) {
    gather_rows_kernel<uint32_t><<<n, 128, 0, s>>>(static_cast<uint32_t*>(out), static_cast<const uint32_t*>(src),
                                                    rows, int(row_bytes / 4));
  } else {   // bf16 rows of odd width at a 2-byte offset
    gather_rows_kernel<uint16_t><<<n, 128, 0, s>>>(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(src),
                                                    rows, int(row_bytes / 2));
  }
  CUDA_LAUNCH_CHECK();
}

template <typename T> __global__ void add_kernel(T* y, const T* x, size_t n, float alpha) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = from_f<T>(to_f(y[i]) + alpha * to_f(x[i]));
}
template <typename T> void launch_add(T* y, const T* x, size_t n, float alpha, cudaStream_t s) {
  if (n == 0) return;
  add_kernel<T><<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, x, n, alpha);
  CUDA_LAUNCH_CHECK();
}
template void launch_add<float>(float*, const float*, size_t, float, cudaStream_t);
template void launch_add<bf16>(bf16*, const bf16*, size_t, float, cudaStream_t);

__global__ void add_bias_kernel(bf16* y, const bf16* bias, size_t n, int D) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16_rn(__bfloat162float(y[i]) + __bfloat162float(bias[i % D]));
}
void launch_add_bias(bf16* y, const bf16* bias, int N, int D, cudaStream_t s) {
  size_t n = (size_t)N * D;
  if (n == 0) return;
  add_bias_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, bias, n, D);
  CUDA_LAUNCH_CHECK();
}

__global__ void scale_kernel(float* y, float a, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] *= a;
}
void launch_scale(float* y, float a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  scale_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, a, n);
  CUDA_LAUNCH_CHECK();
}

template <typename T> __global__ void fill_kernel(T* y, float v, size_t n) {
  T tv = from_f<T>(v);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] = tv;
}
template <typename T> void launch_fill(T* y, float v, size_t n, cudaStream_t s) {
  if (n == 0) return;
  fill_kernel<T><<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, v, n);
  CUDA_LAUNCH_CHECK();
}
template void launch_fill<float>(float*, float, size_t, cudaStream_t);
template void launch_fill<bf16>(bf16*, float, size_t, cudaStream_t);

__global__ void fill_i32_kernel(int32_t* y, int32_t v, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] = v;
}
void launch_fill_i32(int32_t* y, int32_t v, size_t n, cudaStream_t s) {
  if (n == 0) return;
  fill_i32_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, v, n);
  CUDA_LAUNCH_CHECK();
}

__global__ void f32_to_bf16_kernel(bf16* y, const float* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}
void launch_f32_to_bf16(bf16* y, const float* x, size_t n, cudaStream_t s) {
  if (n == 0) return;
  f32_to_bf16_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, x, n);
  CUDA_LAUNCH_CHECK();
}
__global__ void bf16_to_f32_kernel(float* y, const bf16* x, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    y[i] = __bfloat162float(x[i]);
}
void launch_bf16_to_f32(float* y, const bf16* x, size_t n, cudaStream_t s) {
  if (n == 0) return;
  bf16_to_f32_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, x, n);
  CUDA_LAUNCH_CHECK();
}

// Box-Muller on two counter-based uniforms: a pure function of (seed, i), so any launch shape gives the
// same tensor.
template <typename T> __global__ void fill_normal_kernel(T* y, float stdev, uint64_t seed, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float u1 = counter_uniform(seed, 2 * i) + (1.0f / 33554432.0f);
    float u2 = counter_uniform(seed, 2 * i + 1);
    float z = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    y[i] = from_f<T>(z * stdev);
  }
}
template <typename T> void launch_fill_normal(T* y, float stdev, uint64_t seed, size_t n, cudaStream_t s) {
  if (n == 0) return;
  fill_normal_kernel<T><<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(y, stdev, seed, n);
  CUDA_LAUNCH_CHECK();
}
template void launch_fill_normal<float>(float*, float, uint64_t, size_t, cudaStream_t);
template void launch_fill_normal<bf16>(bf16*, float, uint64_t, size_t, cudaStream_t);

__global__ void lora_dropout_kernel(bf16* out, const bf16* x, size_t n, float p, uint64_t seed) {
  float keep_scale = 1.0f / (1.0f - p);
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = counter_uniform(seed, i) >= p ? __float2bfloat16_rn(__bfloat162float(x[i]) * keep_scale)
                                           : __float2bfloat16_rn(0.0f);
}
void launch_lora_dropout(bf16* out, const bf16* x, size_t n, float p, uint64_t seed, cudaStream_t s) {
  if (n == 0) return;
  lora_dropout_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(out, x, n, p, seed);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
