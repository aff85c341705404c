// cudnn_attention.h — causal GQA attention through cuDNN's fused SDPA (FlashAttention-2 on tensor cores),
// built only when cuDNN and the cudnn-frontend headers are found (NXFT_HAVE_CUDNN). Training shapes only
// (Tq = Tk, no offset): plain causal rows, and packed documents as a ragged batch (one cuDNN sequence per
// document); the backend routes KV-cache generation and anything cuDNN declines to the portable kernels in
// attention.cu.
#pragma once
#include <cuda_runtime.h>
#include <memory>
#include <string>
#include "backend/cuda/kernels.cuh"
#include "backend/device_pool.h"

namespace nxft {
namespace cuda {

// Packed documents as cuDNN's ragged batch. Sequence s is the document whose first token is flat token start[s]
// of the B·T-token batch; a document never crosses a row. The graph's batch n_seq ≥ the number of documents
// (the sequences past the last one have length 0) and its sequence length max_len ≥ the longest document, both
// rounded up so that a few graphs serve every batch. Offsets are in elements, one array per operand pitch:
// start[s]·pitch for token-major rows, start[s]·NH for the token-major (B·T, NH) lse this path reads and writes.
struct RaggedDocs {
  int n_seq = 0, max_len = 0, tokens = 0;                   // graph batch, graph sequence length, B·T
  const int32_t* seq_len = nullptr;                         // (n_seq) document lengths, device
  const int32_t *q = nullptr, *kv = nullptr, *out = nullptr, *lse = nullptr;   // (n_seq + 1) offsets, device
  const int32_t *dout = nullptr, *dq = nullptr, *dkv = nullptr;                // backward only
};

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
  // The same over packed documents; lse is token-major (B·T, NH) here.
  virtual bool forward_ragged(void* out, float* lse, const void* q, const void* k, const void* v,
                              const RaggedDocs& docs, int NH, int NKV, int HD, const AttnLd& ld) = 0;
  virtual bool backward_ragged(void* dq, void* dk, void* dv, const void* dout, const void* q, const void* k,
                               const void* v, const void* out, const float* lse, const RaggedDocs& docs, int NH,
                               int NKV, int HD, const AttnLd& ld) = 0;
  virtual std::string version() const = 0;
};

// nullptr (with the reason in *why) when cuDNN cannot be used on this device. The workspace comes from `pool`.
std::unique_ptr<CudnnAttention> make_cudnn_attention(cudaStream_t stream, DevicePool* pool, std::string* why);

}  // namespace cuda
}  // namespace nxft
