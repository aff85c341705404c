// attention.cu — the portable flash-style causal GQA attention with packed documents (FlashAttention-2's
// algorithm, native.md §6.1, on CUDA cores): one warp per query row with an online softmax in registers, the
// backward recomputes P from the saved logsumexp. Memory is O(T): no (T, T) buffer ever exists. This is the
// path for builds without cuDNN, layouts cuDNN declines and short prompts read into a KV cache. The cuDNN SDPA path
// (cudnn_attention.cpp) is the fast one for plain causal rows, packed long documents (a ragged batch) and long
// prompts; attention_tiles.cu takes packed short documents on tensor cores; the split-KV kernels below take
// generation's few new queries over a long KV cache.
// Query i of row b attends keys j with doc_start[b,i] ≤ j ≤ q_offset + i.
// Every operand is token-major with its own row pitch (AttnLd, kernels.cuh): q|k|v may be column blocks of the one
// q|k|v projection output and dq|dk|dv of one gradient buffer, so a head row is found as
// (b·T + t)·ld + h·HD, never (b·T + t)·H·HD.
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

constexpr int kMaxHD = 256;
constexpr int kPerLane = kMaxHD / 32;  // dims held by one lane: d = lane + 32·r

__device__ __forceinline__ void load_row(float (&r)[kPerLane], const bf16* p, int HD, int lane) {
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    int d = lane + 32 * u;
    r[u] = d < HD ? __bfloat162float(p[d]) : 0.0f;
  }
}
__device__ __forceinline__ float dot_row(const float (&r)[kPerLane], const bf16* p, int HD, int lane) {
  float s = 0.0f;
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    int d = lane + 32 * u;
    if (d < HD) s += r[u] * __bfloat162float(p[d]);
  }
  return warp_sum(s);
}

__global__ void attention_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                         const int32_t* doc_start, int Tq, int Tk_stride, int q_offset, int NH,
                                         int NKV, int HD, AttnLd ld, float scale) {
  int lane = threadIdx.x & 31;
  int i = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  int h = blockIdx.y, b = blockIdx.z;
  if (i >= Tq) return;
  int kvh = h / (NH / NKV);
  const bf16* qr = q + ((size_t)b * Tq + i) * ld.q + (size_t)h * HD;
  float qv[kPerLane], o[kPerLane];
  load_row(qv, qr, HD, lane);
#pragma unroll
  for (int u = 0; u < kPerLane; u++) o[u] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  int lo = doc_start[(size_t)b * Tq + i], hi = q_offset + i;
  for (int j = lo; j <= hi; j++) {
    size_t kv_off = ((size_t)b * Tk_stride + j) * ld.kv + (size_t)kvh * HD;
    float s = dot_row(qv, k + kv_off, HD, lane) * scale;
    float m_new = fmaxf(m, s);
    float corr = expf(m - m_new), p = expf(s - m_new);
    l = l * corr + p;
    const bf16* vr = v + kv_off;
#pragma unroll
    for (int u = 0; u < kPerLane; u++) {
      int d = lane + 32 * u;
      if (d < HD) o[u] = o[u] * corr + p * __bfloat162float(vr[d]);
    }
    m = m_new;
  }
  bf16* orow = out + ((size_t)b * Tq + i) * ld.out + (size_t)h * HD;
  float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    int d = lane + 32 * u;
    if (d < HD) orow[d] = __float2bfloat16_rn(o[u] * inv);
  }
  if (lane == 0) lse[((size_t)b * NH + h) * Tq + i] = m + logf(l);
}

void launch_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                              const int32_t* doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH,
                              int NKV, int HD, const AttnLd& ld, cudaStream_t s) {
  if (B == 0 || Tq == 0) return;
  if (HD > kMaxHD) throw EngineError("attention: head_dim " + std::to_string(HD) + " > 256 is not supported");
  dim3 grid(ceil_div(Tq, 4), NH, B);
  attention_forward_kernel<<<grid, 128, 0, s>>>(out, lse, q, k, v, doc_start, Tq, Tk_stride, q_offset, NH, NKV, HD, ld,
                                                1.0f / sqrtf((float)HD));
  CUDA_LAUNCH_CHECK();
}

// ---- split-KV attention for a few queries over a long KV cache (generation) -----------------------------------
// One decode step has Tq = 1: the kernel above would give each of the NH heads one warp walking every cached key
// in turn, NH warps on a card of thousands. Here (FlashDecoding's split) the keys of each (query row, head) are
// cut into chunks, one block per chunk: its warps stride the chunk's keys with the same online softmax, merge in
// shared memory and write the chunk's (max, sum, unnormalized output); a second kernel merges the chunks.
// part: (B·Tq, NH, nsplit, HD + 2) fp32 scratch, per chunk [m, l, o[0..HD)].
constexpr int kDecodeWarps = 4;
__global__ void attention_decode_chunk_kernel(float* part, const bf16* q, const bf16* k, const bf16* v,
                                              const int32_t* doc_start, int Tq, int Tk_stride, int q_offset, int NH,
                                              int NKV, int HD, AttnLd ld, float scale, int chunk, int nsplit) {
  const int s = blockIdx.x, h = blockIdx.y, row = blockIdx.z;   // row = b·Tq + i
  const int b = row / Tq, i = row % Tq;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kvh = h / (NH / NKV);
  const int lo = max(doc_start[row], s * chunk), hi = min(q_offset + i, (s + 1) * chunk - 1);   // keys [lo, hi]
  float qv[kPerLane], o[kPerLane];
  load_row(qv, q + (size_t)row * ld.q + (size_t)h * HD, HD, lane);
#pragma unroll
  for (int u = 0; u < kPerLane; u++) o[u] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int j = lo + warp; j <= hi; j += kDecodeWarps) {
    const size_t kv_off = ((size_t)b * Tk_stride + j) * ld.kv + (size_t)kvh * HD;
    const float sc = dot_row(qv, k + kv_off, HD, lane) * scale;
    const float m_new = fmaxf(m, sc);
    const float corr = expf(m - m_new), p = expf(sc - m_new);
    l = l * corr + p;
    const bf16* vr = v + kv_off;
#pragma unroll
    for (int u = 0; u < kPerLane; u++) {
      const int d = lane + 32 * u;
      if (d < HD) o[u] = o[u] * corr + p * __bfloat162float(vr[d]);
    }
    m = m_new;
  }
  __shared__ float wm[kDecodeWarps], wl[kDecodeWarps], wo[kDecodeWarps][kMaxHD];
  if (lane == 0) {
    wm[warp] = m;
    wl[warp] = l;
  }
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    const int d = lane + 32 * u;
    if (d < HD) wo[warp][d] = o[u];
  }
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kDecodeWarps; w++) M = fmaxf(M, wm[w]);
  float* out = part + (((size_t)row * NH + h) * nsplit + s) * (HD + 2);
  for (int d = threadIdx.x; d < HD + 2; d += blockDim.x) {
    float acc = 0.0f;   // a warp (or the chunk) with no keys has m = -inf and weighs 0
    for (int w = 0; w < kDecodeWarps; w++) {
      const float wt = wm[w] == -INFINITY ? 0.0f : expf(wm[w] - M);
      acc += wt * (d == 0 ? 0.0f : d == 1 ? wl[w] : wo[w][d - 2]);
    }
    out[d] = d == 0 ? M : acc;
  }
}

// out (B·Tq, NH, HD) pitch ld.out and lse (B, NH, Tq) from the chunks: one warp per (query row, head).
__global__ void attention_decode_merge_kernel(bf16* out, float* lse, const float* part, int Tq, int NH, int HD,
                                              AttnLd ld, int nsplit) {
  const int h = blockIdx.x, row = blockIdx.y, lane = threadIdx.x;
  const float* p = part + ((size_t)row * NH + h) * nsplit * (HD + 2);
  float M = -INFINITY;
  for (int s = 0; s < nsplit; s++) M = fmaxf(M, p[(size_t)s * (HD + 2)]);
  float L = 0.0f, o[kPerLane] = {};
  for (int s = 0; s < nsplit; s++) {
    const float* c = p + (size_t)s * (HD + 2);
    const float wt = c[0] == -INFINITY ? 0.0f : expf(c[0] - M);
    L += wt * c[1];
#pragma unroll
    for (int u = 0; u < kPerLane; u++) {
      const int d = lane + 32 * u;
      if (d < HD) o[u] += wt * c[2 + d];
    }
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  bf16* orow = out + (size_t)row * ld.out + (size_t)h * HD;
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    const int d = lane + 32 * u;
    if (d < HD) orow[d] = __float2bfloat16_rn(o[u] * inv);
  }
  if (lane == 0) lse[((size_t)(row / Tq) * NH + h) * Tq + row % Tq] = M + logf(L);
}

// Chunks of at least 64 keys, at most 64 chunks: a 4K-token cache gives 64 chunks of 64 keys (16 per warp) per head.
static int decode_splits(int Tk) { return std::max(1, std::min(64, (Tk + 63) / 64)); }
size_t attention_decode_scratch_bytes(int B, int Tq, int Tk, int NH, int HD) {
  return size_t(B) * Tq * NH * decode_splits(Tk) * (HD + 2) * sizeof(float);
}
void launch_attention_decode(bf16* out, float* lse, float* part, const bf16* q, const bf16* k, const bf16* v,
                             const int32_t* doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH,
                             int NKV, int HD, const AttnLd& ld, cudaStream_t s) {
  if (B == 0 || Tq == 0) return;
  if (HD > kMaxHD) throw EngineError("attention: head_dim " + std::to_string(HD) + " > 256 is not supported");
  const int nsplit = decode_splits(Tk), chunk = (Tk + nsplit - 1) / nsplit;
  attention_decode_chunk_kernel<<<dim3(nsplit, NH, B * Tq), 32 * kDecodeWarps, 0, s>>>(
      part, q, k, v, doc_start, Tq, Tk_stride, q_offset, NH, NKV, HD, ld, 1.0f / sqrtf((float)HD), chunk, nsplit);
  CUDA_LAUNCH_CHECK();
  attention_decode_merge_kernel<<<dim3(NH, B * Tq), 32, 0, s>>>(out, lse, part, Tq, NH, HD, ld, nsplit);
  CUDA_LAUNCH_CHECK();
}

// delta (B,NH,T) = rowsum(dO ∘ O); dO and O have their own row pitches.
__global__ void attention_delta_kernel(float* delta, const bf16* dout, const bf16* out, int T, int NH, int HD,
                                       AttnLd ld) {
  int lane = threadIdx.x & 31;
  int i = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  int h = blockIdx.y, b = blockIdx.z;
  if (i >= T) return;
  const bf16* dor = dout + ((size_t)b * T + i) * ld.dout + (size_t)h * HD;
  const bf16* orow = out + ((size_t)b * T + i) * ld.out + (size_t)h * HD;
  float s = 0.0f;
  for (int d = lane; d < HD; d += 32) s += __bfloat162float(dor[d]) * __bfloat162float(orow[d]);
  s = warp_sum(s);
  if (lane == 0) delta[((size_t)b * NH + h) * T + i] = s;
}

void launch_attention_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int NH, int HD,
                            const AttnLd& ld, cudaStream_t s) {
  attention_delta_kernel<<<dim3(ceil_div(T, 4), NH, B), 128, 0, s>>>(delta, dout, out, T, NH, HD, ld);
  CUDA_LAUNCH_CHECK();
}

// dq: one warp per query row; dS = P ∘ (dP − delta), dq = scale · Σ_j dS_j k_j.
__global__ void attention_dq_kernel(bf16* dq, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                                    const float* lse, const float* delta, const int32_t* doc_start, int T, int NH,
                                    int NKV, int HD, AttnLd ld, float scale) {
  int lane = threadIdx.x & 31;
  int i = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  int h = blockIdx.y, b = blockIdx.z;
  if (i >= T) return;
  int kvh = h / (NH / NKV);
  size_t row = (size_t)b * T + i;
  float qv[kPerLane], dov[kPerLane], acc[kPerLane];
  load_row(qv, q + row * ld.q + (size_t)h * HD, HD, lane);
  load_row(dov, dout + row * ld.dout + (size_t)h * HD, HD, lane);
#pragma unroll
  for (int u = 0; u < kPerLane; u++) acc[u] = 0.0f;
  float L = lse[((size_t)b * NH + h) * T + i], D = delta[((size_t)b * NH + h) * T + i];
  for (int j = doc_start[(size_t)b * T + i]; j <= i; j++) {
    size_t kv_off = ((size_t)b * T + j) * ld.kv + (size_t)kvh * HD;
    float p = expf(dot_row(qv, k + kv_off, HD, lane) * scale - L);
    float dp = dot_row(dov, v + kv_off, HD, lane);
    float ds = p * (dp - D) * scale;
    const bf16* kr = k + kv_off;
#pragma unroll
    for (int u = 0; u < kPerLane; u++) {
      int d = lane + 32 * u;
      if (d < HD) acc[u] += ds * __bfloat162float(kr[d]);
    }
  }
  bf16* dqr = dq + row * ld.dq + (size_t)h * HD;
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    int d = lane + 32 * u;
    if (d < HD) dqr[d] = __float2bfloat16_rn(acc[u]);
  }
}

// dk, dv: one warp per key row, summing over the query heads of its group and the queries of its document
// (documents are contiguous, so the first query whose document starts after j ends the loop).
__global__ void attention_dkdv_kernel(bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                                      const bf16* v, const float* lse, const float* delta, const int32_t* doc_start,
                                      int T, int NH, int NKV, int HD, AttnLd ld, float scale) {
  int lane = threadIdx.x & 31;
  int j = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  int kvh = blockIdx.y, b = blockIdx.z;
  if (j >= T) return;
  int group = NH / NKV;
  size_t kv_off = ((size_t)b * T + j) * ld.kv + (size_t)kvh * HD;
  float kv_[kPerLane], vv[kPerLane], dka[kPerLane], dva[kPerLane];
  load_row(kv_, k + kv_off, HD, lane);
  load_row(vv, v + kv_off, HD, lane);
#pragma unroll
  for (int u = 0; u < kPerLane; u++) dka[u] = dva[u] = 0.0f;
  for (int i = j; i < T; i++) {
    if (doc_start[(size_t)b * T + i] > j) break;
    for (int hh = 0; hh < group; hh++) {
      int h = kvh * group + hh;
      const bf16* qr = q + ((size_t)b * T + i) * ld.q + (size_t)h * HD;
      const bf16* dor = dout + ((size_t)b * T + i) * ld.dout + (size_t)h * HD;
      float L = lse[((size_t)b * NH + h) * T + i], D = delta[((size_t)b * NH + h) * T + i];
      float p = expf(dot_row(kv_, qr, HD, lane) * scale - L);
      float dp = dot_row(vv, dor, HD, lane);
      float ds = p * (dp - D) * scale;
#pragma unroll
      for (int u = 0; u < kPerLane; u++) {
        int d = lane + 32 * u;
        if (d < HD) {
          dva[u] += p * __bfloat162float(dor[d]);
          dka[u] += ds * __bfloat162float(qr[d]);
        }
      }
    }
  }
  size_t dkv_off = ((size_t)b * T + j) * ld.dkv + (size_t)kvh * HD;
#pragma unroll
  for (int u = 0; u < kPerLane; u++) {
    int d = lane + 32 * u;
    if (d < HD) {
      dk[dkv_off + d] = __float2bfloat16_rn(dka[u]);
      dv[dkv_off + d] = __float2bfloat16_rn(dva[u]);
    }
  }
}

void launch_attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                               const bf16* v, const bf16* out, const float* lse, const int32_t* doc_start,
                               float* delta, int B, int T, int NH, int NKV, int HD, const AttnLd& ld,
                               cudaStream_t s) {
  if (B == 0 || T == 0) return;
  if (HD > kMaxHD) throw EngineError("attention: head_dim " + std::to_string(HD) + " > 256 is not supported");
  float scale = 1.0f / sqrtf((float)HD);
  dim3 grid(ceil_div(T, 4), NH, B);
  launch_attention_delta(delta, dout, out, B, T, NH, HD, ld, s);
  attention_dq_kernel<<<grid, 128, 0, s>>>(dq, dout, q, k, v, lse, delta, doc_start, T, NH, NKV, HD, ld, scale);
  CUDA_LAUNCH_CHECK();
  dim3 grid_kv(ceil_div(T, 4), NKV, B);
  attention_dkdv_kernel<<<grid_kv, 128, 0, s>>>(dk, dv, dout, q, k, v, lse, delta, doc_start, T, NH, NKV, HD, ld,
                                                scale);
  CUDA_LAUNCH_CHECK();
}

// ---- lse between the engine's (B, NH, T) layout and cuDNN's ragged token-major (B·T, NH) ---------------------
// cuDNN's packed-document path reads and writes the logsumexp token-major (its ragged offsets are token offsets
// times NH); the engine's contract (backend.h) is head-major per row. One thread per element.
__global__ void lse_layout_kernel(float* dst, const float* src, size_t n, int T, int NH, int to_token_major) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;  // index in (b, h, t) order
  if (i >= n) return;
  const int t = int(i % T), h = int((i / T) % NH), b = int(i / ((size_t)T * NH));
  const size_t tm = ((size_t)b * T + t) * NH + h;                   // the same element, token-major
  if (to_token_major) dst[tm] = src[i];
  else dst[i] = src[tm];
}

void launch_lse_layout(float* dst, const float* src, int B, int T, int NH, bool to_token_major, cudaStream_t s) {
  const size_t n = (size_t)B * T * NH;
  if (n == 0) return;
  lse_layout_kernel<<<ceil_div(n, 256), 256, 0, s>>>(dst, src, n, T, NH, to_token_major ? 1 : 0);
  CUDA_LAUNCH_CHECK();
}

// ---- grouped-query heads repeated for cuDNN's ragged backward, and summed back ---------------------------------
// NXFT_CUDNN_PACKED_MHA=1 (cuda_backend.cpp): cuDNN's ragged backward then sees plain multi-head attention. For
// grouped-query attention cudnn-frontend makes every query head's dK/dV a real workspace tensor, then reduces it.
// One block per token row.
__global__ void repeat_kv_heads_kernel(bf16* out, const bf16* src, int NKV, int G, int HD, int ld) {
  const size_t t = blockIdx.x;
  const int width = NKV * G * HD;   // out (N, NKV·G, HD) packed; src (N, NKV, HD) with row pitch ld
  for (int c = threadIdx.x; c < width; c += blockDim.x) out[t * width + c] = src[t * ld + (c / HD / G) * HD + c % HD];
}
__global__ void sum_kv_heads_kernel(bf16* dst, const bf16* src, int NKV, int G, int HD, int ld) {
  const size_t t = blockIdx.x;
  const int width = NKV * HD;       // dst (N, NKV, HD) with row pitch ld; src (N, NKV·G, HD) packed
  for (int c = threadIdx.x; c < width; c += blockDim.x) {
    const bf16* x = src + t * width * G + size_t(c / HD) * G * HD + c % HD;
    float sum = 0.0f;
    for (int g = 0; g < G; g++) sum += __bfloat162float(x[size_t(g) * HD]);
    dst[t * ld + c] = __float2bfloat16_rn(sum);
  }
}
void launch_repeat_kv_heads(bf16* out, const bf16* src, int N, int NKV, int G, int HD, int ld, cudaStream_t s) {
  if (N == 0) return;
  repeat_kv_heads_kernel<<<N, 256, 0, s>>>(out, src, NKV, G, HD, ld);
  CUDA_LAUNCH_CHECK();
}
void launch_sum_kv_heads(bf16* dst, const bf16* src, int N, int NKV, int G, int HD, int ld, cudaStream_t s) {
  if (N == 0) return;
  sum_kv_heads_kernel<<<N, 256, 0, s>>>(dst, src, NKV, G, HD, ld);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
