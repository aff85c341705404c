// cudnn_attention.h — causal GQA attention through cuDNN's fused SDPA (FlashAttention-2 on tensor cores),
// built only when cuDNN and the cudnn-frontend headers are found (NXFT_HAVE_CUDNN). Plain causal rows only
// (one document per row, Tq = Tk, no offset): the backend routes packed documents and KV-cache generation to
// the portable kernels in attention.cu.
#pragma once
#include <cuda_runtime.h>
#include <memory>
#include <string>
#include "backend/cuda/kernels.cuh"

namespace nxft {
namespace cuda {

class CudnnAttention {
 public:
  virtual ~CudnnAttention() = default;
  // q, out (B,T,NH,HD) bf16; k, v (B,T,NKV,HD) bf16; lse (B,NH,T) fp32 natural-log logsumexp of scaled scores.
  // Token-major operands with the row pitches in ld (resolved, never 0; forward uses q, kv, out).
  // Returns false when cuDNN cannot take the layout (pointers not 16-byte aligned or pitches not multiples of 8
  // elements) or has no engine for the shape: the caller then uses the portable kernels.
  virtual bool forward(void* out, float* lse, const void* q, const void* k, const void* v, int B, int T, int NH,
                       int NKV, int HD, const AttnLd& ld) = 0;
  // dq (B,T,NH,HD), dk, dv (B,T,NKV,HD) written.
  virtual bool backward(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k, const void* v,
                        const void* out, const float* lse, int B, int T, int NH, int NKV, int HD,
                        const AttnLd& ld) = 0;
  virtual std::string version() const = 0;
};

// nullptr (with the reason in *why) when cuDNN cannot be used on this device.
std::unique_ptr<CudnnAttention> make_cudnn_attention(cudaStream_t stream, std::string* why);

}  // namespace cuda
}  // namespace nxft
