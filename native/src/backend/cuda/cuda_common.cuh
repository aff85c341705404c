// cuda_common.cuh — error checks, bf16 helpers and block reductions shared by the CUDA backend's kernels.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "util/events.h"

namespace nxft {
namespace cuda {

// Every CUDA runtime call is checked; a failure becomes an EngineError naming the call site.
inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw EngineError(std::string("CUDA error: ") + cudaGetErrorString(e) + " in " + what + " (" + file + ":" +
                      std::to_string(line) + ")");
}
#define CUDA_CHECK(x) ::nxft::cuda::check_cuda((x), #x, __FILE__, __LINE__)
// After a kernel launch: catches bad launch configurations at once (execution errors surface at the next sync).
#define CUDA_LAUNCH_CHECK() ::nxft::cuda::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

using bf16 = __nv_bfloat16;

// Timing events, reused (the per-op profile and the GEMM tuning record thousands): get() hands out a free one or
// creates one, put() gives it back; the pool destroys all it created.
class EventPool {
 public:
  EventPool() = default;
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;
  ~EventPool() {
    for (cudaEvent_t e : all_) cudaEventDestroy(e);
  }
  cudaEvent_t get() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreate(&e));
    all_.push_back(e);
    return e;
  }
  void put(cudaEvent_t e) { free_.push_back(e); }

 private:
  std::vector<cudaEvent_t> free_, all_;
};

#if defined(__CUDACC__)  // device helpers: only in .cu translation units

// Load/store one element of either storage type as fp32 (elementwise kernels are templated on T).
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Sum over the whole block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial[] may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nwarps ? partial[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}
__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < nwarps ? partial[lane] : -INFINITY;
    s = warp_max(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

#endif  // __CUDACC__

inline unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

}  // namespace cuda
}  // namespace nxft
