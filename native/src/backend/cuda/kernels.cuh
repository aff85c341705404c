// kernels.cuh — launchers for the CUDA backend's own kernels (one .cu file per concern). All take the
// backend's stream; shapes as in backend.h. Activations and weights are bf16, Stat/Param fp32, Index int32.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include "backend/backend.h"

namespace nxft {
namespace cuda {

using bf16 = __nv_bfloat16;

// p is a multiple of `bytes`: the vector paths load 8 or 16 bytes at a time, so every row start must be aligned
// (an aligned base pointer and a row pitch that keeps it so).
NXFT_HD inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// elementwise.cu
void launch_embedding(bf16* out, const int32_t* ids, const bf16* table, int N, int C, float scale, cudaStream_t s);
// out (n, ·) = src[rows[i]] row by row, zero rows where rows[i] < 0; rows of row_bytes bytes (an even count: bf16 or
// fp32 elements). Backend::gather_rows.
void launch_gather_rows(void* out, const void* src, const int32_t* rows, int n, size_t row_bytes, cudaStream_t s);
template <typename T> void launch_add(T* y, const T* x, size_t n, float alpha, cudaStream_t s);
void launch_add_bias(bf16* y, const bf16* bias, int N, int D, cudaStream_t s);
void launch_scale(float* y, float a, size_t n, cudaStream_t s);
template <typename T> void launch_fill(T* y, float v, size_t n, cudaStream_t s);
void launch_fill_i32(int32_t* y, int32_t v, size_t n, cudaStream_t s);
void launch_f32_to_bf16(bf16* y, const float* x, size_t n, cudaStream_t s);
void launch_bf16_to_f32(float* y, const bf16* x, size_t n, cudaStream_t s);
// N(0, std) from a counter-based hash of (seed, index): device-side random init of big bf16 weights.
template <typename T> void launch_fill_normal(T* y, float std, uint64_t seed, size_t n, cudaStream_t s);
void launch_lora_dropout(bf16* out, const bf16* x, size_t n, float p, uint64_t seed, cudaStream_t s);

// rmsnorm.cu
void launch_rmsnorm_forward(bf16* out, float* rstd, const bf16* x, const bf16* w, int N, int C, int ld_out, float eps,
                            bool plus_one, cudaStream_t s);
// dx (N, C) with row pitch ld_dx (accumulated); dout, x packed (N, C).
void launch_rmsnorm_backward(bf16* dx, const bf16* dout, const bf16* x, const bf16* w, const float* rstd, int N,
                             int C, int ld_dx, bool plus_one, cudaStream_t s);

// rope.cu: x (N, H, HD) with row pitch ld (the first H heads of a wider token row), rotated in place.
void launch_rope(bf16* x, const int32_t* pos, const float* inv_freq, int N, int H, int HD, int ld, bool backward,
                 cudaStream_t s);

// glu.cu (act: 0 = silu, 1 = gelu_tanh)
// out (N, F) with row pitch ld_out; gate, up (N, F) with row pitch ld_in (the halves of one (N, 2F) buffer).
void launch_glu_forward(bf16* out, const bf16* gate, const bf16* up, int N, int F, int ld_out, int ld_in, int act,
                        cudaStream_t s);
// dst[i·ld + col0 + j] = bf16(scale·src[i·cols + j]) for each job (LoRA s·B into a folded weight's columns).
struct ColumnJob {
  bf16* dst;
  const float* src;
  int ld, col0, rows, cols;
};
constexpr int kMaxColumnJobs = 8;
void launch_write_column_blocks(const ColumnJob* jobs, int n_jobs, float scale, cudaStream_t s);
// dgate, dup (N, F) with row pitch ld_dgu; dout packed (N, F); gate, up with row pitch ld_in.
void launch_glu_backward(bf16* dgate, bf16* dup, const bf16* dout, const bf16* gate, const bf16* up, int N, int F,
                         int ld_in, int ld_dgu, int act, cudaStream_t s);

// cross_entropy.cu (logits bf16 (n, Vc))
void launch_ce_stats(const bf16* logits, const int32_t* targets, float* run_max, float* run_sum, float* tlogit,
                     int n, int Vc, int v0, cudaStream_t s);
void launch_ce_finish(float* loss, float* lse, const float* run_max, const float* run_sum, const float* tlogit,
                      const int32_t* targets, int n, cudaStream_t s);
void launch_ce_grad(bf16* logits, const int32_t* targets, const float* lse, int n, int Vc, int v0, float grad_scale,
                    cudaStream_t s);

// adamw.cu
struct AdamWScalars {
  float decay, w1, b2, one_minus_b2, bc2_sqrt, neg_step, eps, grad_scale;
  bool decay_on, lerp_low;
};
void launch_adamw(float* p, const float* g, float* m, float* v, size_t n, const AdamWScalars& c, cudaStream_t s);
// Σx² in double, deterministic (per-block partials then one block); result left in *out (device).
template <typename T> void launch_sum_sq(double* out, double* partials, const T* x, size_t n, cudaStream_t s);
constexpr int kSumSqBlocks = 264;

// attention.cu — the portable flash-style kernels (O(T) memory; CUDA cores; any doc_start; any row pitch).
// Row pitches (elements between consecutive token rows) of the token-major operands, all resolved (never 0):
// element (b, t, h, d) of q is at ((b·Tq + t)·q + h·HD + d); k and v use kv with Tk_stride rows per batch row.
using AttnLd = Backend::AttnPitch;
void launch_attention_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                              const int32_t* doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH,
                              int NKV, int HD, const AttnLd& ld, cudaStream_t s);
// The same contract for a few queries (generation: Tq = 1) over a long KV cache, split over the keys; part is fp32
// scratch of attention_decode_scratch_bytes.
size_t attention_decode_scratch_bytes(int B, int Tq, int Tk, int NH, int HD);
void launch_attention_decode(bf16* out, float* lse, float* part, const bf16* q, const bf16* k, const bf16* v,
                             const int32_t* doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH,
                             int NKV, int HD, const AttnLd& ld, cudaStream_t s);
// delta (B,NH,T) fp32 scratch.
void launch_attention_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                               const bf16* v, const bf16* out, const float* lse, const int32_t* doc_start,
                               float* delta, int B, int T, int NH, int NKV, int HD, const AttnLd& ld, cudaStream_t s);
// delta (B,NH,T) = rowsum(dO ∘ O), the backward's pre-pass (dO and O with their own pitches).
void launch_attention_delta(float* delta, const bf16* dout, const bf16* out, int B, int T, int NH, int HD,
                            const AttnLd& ld, cudaStream_t s);
// attention_tiles.cu — the same contract on tensor cores for training rows (Tq = Tk = T, q_offset 0) of contiguous
// documents, visiting only the tiles a document spans. attention_tiles_apply: head_dim 64 or 128, every pitch a
// multiple of 8 elements and every pointer 16-byte aligned. The backward takes delta (B,NH,T) and dq_acc
// (B·T·NH·HD fp32) scratch.
bool attention_tiles_apply(int HD, int NH, int NKV, const AttnLd& ld, std::initializer_list<const void*> ptrs);
void launch_attention_tiles_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                    const int32_t* doc_start, int B, int T, int NH, int NKV, int HD, const AttnLd& ld,
                                    cudaStream_t s);
void launch_attention_tiles_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                                     const bf16* v, const bf16* out, const float* lse, const int32_t* doc_start,
                                     float* delta, float* dq_acc, int B, int T, int NH, int NKV, int HD,
                                     const AttnLd& ld, cudaStream_t s);
// lse (B,NH,T) ↔ (B·T,NH): to_token_major writes dst (B·T,NH) from src (B,NH,T); else the reverse.
void launch_lse_layout(float* dst, const float* src, int B, int T, int NH, bool to_token_major, cudaStream_t s);
// Grouped-query heads for cuDNN's ragged backward (NXFT_CUDNN_PACKED_MHA=1): out (N, NKV·G, HD) packed = each of
// src's NKV heads (row pitch ld) repeated G times; and back, dst (N, NKV, HD) (row pitch ld) = the fp32 sum of each
// group of G heads of src (N, NKV·G, HD) packed.
void launch_repeat_kv_heads(bf16* out, const bf16* src, int N, int NKV, int G, int HD, int ld, cudaStream_t s);
void launch_sum_kv_heads(bf16* dst, const bf16* src, int N, int NKV, int G, int HD, int ld, cudaStream_t s);

// lora_update.cu: D (M,N) = alpha·A (M,K)·op(B) + beta·D for the LoRA rank K ≤ 16, bf16, row-major, D rows of
// N % 8 == 0 elements, 16-byte aligned (rank_update_applies says when).
bool rank_update_applies(int M, int N, int K, bool trans_a, const void* D);
void launch_rank_update(bf16* D, const bf16* A, const bf16* B, int M, int N, int K, bool trans_b, float alpha,
                        float beta, cudaStream_t s);

// nf4.cu: codes (rows·cols/2 bytes, element 2k high nibble), scales fp32 per 64 elements → bf16 (rows, cols).
void launch_nf4_dequant(bf16* out, const uint8_t* codes, const float* scales, size_t n, cudaStream_t s);
// nf4.cu: w (n fp32, n % 64 == 0, 8-byte aligned) → codes (n/2 bytes) + absmax (n/64 fp32), bitsandbytes'
// quantize_4bit (nf4, blocksize 64) bit for bit the CPU reference quantize_nf4 (model/quant4.h).
void launch_nf4_quantize(uint8_t* codes, float* absmax, const float* w, size_t n, cudaStream_t s);
// nf4.cu: the absmax of a weight with double quantization (model/quant4.h double_quantize, bit for bit): the 256
// entries of dynamic_map_signed() go to constant memory once (set_dynamic_map); absmax (n fp32) → q (n bytes),
// absmax2 (ceil(n/256) fp32), *offset (1 fp32, device); block_sums is ceil(n/256) doubles of scratch.
void set_dynamic_map(const float* map256);
void launch_absmax_double_quantize(uint8_t* q, float* absmax2, float* offset, double* block_sums, const float* absmax,
                                   size_t n, cudaStream_t s);
// nf4.cu: like launch_nf4_dequant with nested absmax: absmax_j = map[absmax_q[j]]·absmax2[j/256] + offset.
void launch_nf4_dequant_nested(bf16* out, const uint8_t* codes, const uint8_t* absmax_q, const float* absmax2,
                               float offset, size_t n, cudaStream_t s);

}  // namespace cuda
}  // namespace nxft
