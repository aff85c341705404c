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

// Matches transformers' bf16 arithmetic: act(gate) is rounded to bf16 before the product. gate, up have row pitch
// ld_in (the two halves of the one (N, 2F) gate|up projection output), out has row pitch ld_out.
__global__ void glu_forward_kernel(bf16* out, const bf16* gate, const bf16* up, size_t n, int F, int ld_out, int ld_in,
                                   int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / F, c = i % F;
    float a = __bfloat162float(__float2bfloat16_rn(act_value(__bfloat162float(gate[r * ld_in + c]), act)));
    out[r * ld_out + c] = __float2bfloat16_rn(a * __bfloat162float(up[r * ld_in + c]));
  }
}
// 8 bf16 per thread through 16-byte loads/stores (the MLP activations are the largest elementwise traffic).
// F8 = F/8 vectors per row; the row pitches are ld8_out and ld8_in vectors.
__global__ void glu_forward_vec_kernel(bf16* out, const bf16* gate, const bf16* up, size_t n8, int F8, int ld8_out,
                                       int ld8_in, int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / F8, c = i % F8;
    uint4 gv = reinterpret_cast<const uint4*>(gate)[r * ld8_in + c];
    uint4 uv = reinterpret_cast<const uint4*>(up)[r * ld8_in + c], ov;
    const bf16* g = reinterpret_cast<const bf16*>(&gv);
    const bf16* u = reinterpret_cast<const bf16*>(&uv);
    bf16* o = reinterpret_cast<bf16*>(&ov);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float a = __bfloat162float(__float2bfloat16_rn(act_value(__bfloat162float(g[k]), act)));
      o[k] = __float2bfloat16_rn(a * __bfloat162float(u[k]));
    }
    reinterpret_cast<uint4*>(out)[r * ld8_out + c] = ov;
  }
}
static unsigned grid_for(size_t n) { return std::min<size_t>(ceil_div(n, 256), 132 * 32); }

void launch_glu_forward(bf16* out, const bf16* gate, const bf16* up, int N, int F, int ld_out, int ld_in, int act,
                        cudaStream_t s) {
  const size_t n = (size_t)N * F;
  if (n == 0) return;
  // The vector path needs every row start 16-byte aligned: aligned base pointers and pitches of 8 elements.
  if (F % 8 == 0 && ld_out % 8 == 0 && ld_in % 8 == 0 && is_aligned(out, 16) && is_aligned(gate, 16) && is_aligned(up, 16))
    glu_forward_vec_kernel<<<grid_for(n / 8), 256, 0, s>>>(out, gate, up, n / 8, F / 8, ld_out / 8, ld_in / 8, act);
  else
    glu_forward_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(out, gate, up, n, F, ld_out, ld_in,
                                                                                 act);
  CUDA_LAUNCH_CHECK();
}

// One launch for up to kMaxColumnJobs blocks: blockIdx.y picks the job, the x blocks stride over its elements.
struct ColumnJobs {
  ColumnJob job[kMaxColumnJobs];
};
__global__ void write_column_blocks_kernel(ColumnJobs jobs, float scale) {
  const ColumnJob& j = jobs.job[blockIdx.y];
  const size_t n = (size_t)j.rows * j.cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    j.dst[(i / j.cols) * j.ld + j.col0 + i % j.cols] = __float2bfloat16_rn(scale * j.src[i]);
}
void launch_write_column_blocks(const ColumnJob* jobs, int n_jobs, float scale, cudaStream_t s) {
  for (int k0 = 0; k0 < n_jobs; k0 += kMaxColumnJobs) {
    ColumnJobs pack{};
    const int nk = std::min(kMaxColumnJobs, n_jobs - k0);
    size_t most = 0;
    for (int k = 0; k < nk; k++) {
      pack.job[k] = jobs[k0 + k];
      most = std::max(most, (size_t)jobs[k0 + k].rows * jobs[k0 + k].cols);
    }
    if (most == 0) continue;
    dim3 grid((unsigned)std::min<size_t>(ceil_div(most, 256), 1024), (unsigned)nk);
    write_column_blocks_kernel<<<grid, 256, 0, s>>>(pack, scale);
    CUDA_LAUNCH_CHECK();
  }
}

// dgate, dup (N, F) row pitch ld_dgu (column blocks of the one (N, 2F) gradient the gate|up GEMM's backward
// reads); dout packed; gate, up row pitch ld_in.
__global__ void glu_backward_kernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                    size_t n, int F, int ld_in, int ld_dgu, int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / F, c = i % F;
    float g = __bfloat162float(gate[r * ld_in + c]), u = __bfloat162float(up[r * ld_in + c]);
    float d = __bfloat162float(dout[i]);
    float a = act_value(g, act);
    dgate[r * ld_dgu + c] = __float2bfloat16_rn(d * u * act_grad(g, act));
    dup[r * ld_dgu + c] = __float2bfloat16_rn(d * a);
  }
}
// Pitches in 16-byte vectors of 8 bf16 (F8 per row).
__global__ void glu_backward_vec_kernel(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up,
                                        size_t n8, int F8, int ld8_in, int ld8_dgu, int act) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / F8, c = i % F8;
    uint4 gv = reinterpret_cast<const uint4*>(gate)[r * ld8_in + c];
    uint4 uv = reinterpret_cast<const uint4*>(up)[r * ld8_in + c];
    uint4 dv = reinterpret_cast<const uint4*>(dout)[i], dgv, duv;
    const bf16* g = reinterpret_cast<const bf16*>(&gv);
    const bf16* u = reinterpret_cast<const bf16*>(&uv);
    const bf16* d = reinterpret_cast<const bf16*>(&dv);
    bf16* dg = reinterpret_cast<bf16*>(&dgv);
    bf16* du = reinterpret_cast<bf16*>(&duv);
#pragma unroll
    for (int k = 0; k < 8; k++) {
      float gk = __bfloat162float(g[k]), uk = __bfloat162float(u[k]), dk = __bfloat162float(d[k]);
      dg[k] = __float2bfloat16_rn(dk * uk * act_grad(gk, act));
      du[k] = __float2bfloat16_rn(dk * act_value(gk, act));
    }
    reinterpret_cast<uint4*>(dgate)[r * ld8_dgu + c] = dgv;
    reinterpret_cast<uint4*>(dup)[r * ld8_dgu + c] = duv;
  }
}
void launch_glu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int N, int F,
                         int ld_in, int ld_dgu, int act, cudaStream_t s) {
  const size_t n = (size_t)N * F;
  if (n == 0) return;
  if (F % 8 == 0 && ld_in % 8 == 0 && ld_dgu % 8 == 0 && is_aligned(dgate, 16) && is_aligned(dup, 16) && is_aligned(dout, 16) &&
      is_aligned(gate, 16) && is_aligned(up, 16))
    glu_backward_vec_kernel<<<grid_for(n / 8), 256, 0, s>>>(dgate, dup, dout, gate, up, n / 8, F / 8, ld_in / 8,
                                                             ld_dgu / 8, act);
  else
    glu_backward_kernel<<<std::min<size_t>(ceil_div(n, 256), 65535), 256, 0, s>>>(dgate, dup, dout, gate, up, n, F,
                                                                                  ld_in, ld_dgu, act);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
