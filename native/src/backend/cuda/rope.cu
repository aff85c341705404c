// rope.cu — rotary embeddings in the HF rotate-half layout, in place. Backward is the inverse rotation.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// x (N, H, HD) with row pitch ld (q|k as the first NH + NKV heads of the q|k|v projection rows); one thread per
// (token, i < HD/2) pair (i, i + HD/2), looping over the heads so the angle's sincos is computed once per token
// and frequency.
__global__ void rope_kernel(bf16* x, const int32_t* pos, const float* inv_freq, int N, int H, int HD, int ld,
                            bool backward) {
  int half = HD / 2;
  size_t total = (size_t)N * half;
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
    int i = int(idx % half);
    size_t n = idx / half;
    float angle = float(pos[n]) * inv_freq[i];  // fp32 like transformers
    float sn, cs;
    sincosf(angle, &sn, &cs);
    if (backward) sn = -sn;
    for (int h = 0; h < H; h++) {
      bf16* row = x + n * ld + (size_t)h * HD;
      float a = __bfloat162float(row[i]), b = __bfloat162float(row[i + half]);
      row[i] = __float2bfloat16_rn(a * cs - b * sn);
      row[i + half] = __float2bfloat16_rn(b * cs + a * sn);
    }
  }
}
// The fast path: one block per token. The block computes the token's HD/2 (cos, sin) pairs once into shared memory,
// then rotates all its heads with 8-byte accesses (4 consecutive frequencies of both halves per work item), so the
// q|k rows stream at memory speed. Same arithmetic as rope_kernel.
__global__ void rope_token_kernel(bf16* x, const int32_t* pos, const float* inv_freq, int H, int HD, int ld,
                                  bool backward) {
  extern __shared__ float cos_sin[];   // [HD/2] cos, then [HD/2] sin (negated for backward)
  const int half = HD / 2;
  const size_t n = blockIdx.x;
  const float p = float(pos[n]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float sn, cs;
    sincosf(p * inv_freq[i], &sn, &cs);   // fp32 like transformers
    cos_sin[i] = cs;
    cos_sin[half + i] = backward ? -sn : sn;
  }
  __syncthreads();
  bf16* row = x + n * ld;
  const int quads = half / 4;
  for (int w = threadIdx.x; w < H * quads; w += blockDim.x) {
    const int h = w / quads, i0 = (w % quads) * 4;
    uint2* pa = reinterpret_cast<uint2*>(row + (size_t)h * HD + i0);
    uint2* pb = reinterpret_cast<uint2*>(row + (size_t)h * HD + i0 + half);
    uint2 ua = *pa, ub = *pb;
    bf16* ea = reinterpret_cast<bf16*>(&ua);
    bf16* eb = reinterpret_cast<bf16*>(&ub);
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const float a = __bfloat162float(ea[k]), b = __bfloat162float(eb[k]);
      const float cs = cos_sin[i0 + k], sn = cos_sin[half + i0 + k];
      ea[k] = __float2bfloat16_rn(a * cs - b * sn);
      eb[k] = __float2bfloat16_rn(b * cs + a * sn);
    }
    *pa = ua;
    *pb = ub;
  }
}

void launch_rope(bf16* x, const int32_t* pos, const float* inv_freq, int N, int H, int HD, int ld, bool backward,
                 cudaStream_t s) {
  size_t total = (size_t)N * (HD / 2);
  if (total == 0) return;
  if (HD % 8 == 0 && ld % 4 == 0 && is_aligned(x, 8)) {
    rope_token_kernel<<<N, 128, HD * sizeof(float), s>>>(x, pos, inv_freq, H, HD, ld, backward);
    CUDA_LAUNCH_CHECK();
    return;
  }
  unsigned grid = std::min<size_t>(ceil_div(total, 256), 65535);
  rope_kernel<<<grid, 256, 0, s>>>(x, pos, inv_freq, N, H, HD, ld, backward);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
