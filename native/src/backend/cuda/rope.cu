// rope.cu — rotary embeddings in the HF rotate-half layout, in place. Backward is the inverse rotation.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

// x (N, H, HD); one thread per (token, i < HD/2) pair (i, i + HD/2), looping over the heads so the angle's
// sincos is computed once per token and frequency.
__global__ void rope_kernel(bf16* x, const int32_t* pos, const float* inv_freq, int N, int H, int HD, bool backward) {
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
      bf16* row = x + (n * H + h) * HD;
      float a = __bfloat162float(row[i]), b = __bfloat162float(row[i + half]);
      row[i] = __float2bfloat16_rn(a * cs - b * sn);
      row[i + half] = __float2bfloat16_rn(b * cs + a * sn);
    }
  }
}
void launch_rope(bf16* x, const int32_t* pos, const float* inv_freq, int N, int H, int HD, bool backward,
                 cudaStream_t s) {
  size_t total = (size_t)N * (HD / 2);
  if (total == 0) return;
  rope_kernel<<<std::min<size_t>(ceil_div(total, 256), 65535), 256, 0, s>>>(x, pos, inv_freq, N, H, HD, backward);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
