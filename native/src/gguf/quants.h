// quants.h — ggml block quantizers, written from the block layouts in ../shared/notes/native.md §2.7 and
// ggml's reference ("_ref") quantizers. With no importance matrix, llama-quantize calls exactly those
// reference functions, so these produce the same bytes (tests/test_quant_parity.cpp checks that against the
// libggml-base.so shipped with node-llama-cpp). Dequantizers are here for error-bound tests.
//
// Every function takes `n` = elements in the row(s), a multiple of the type's block size.
#pragma once
#include <cstddef>
#include <cstdint>
#include "gguf/ggml_types.h"

namespace nxft {

// Block layouts (packed, little-endian, fp16 = IEEE half):
//   Q8_0 (32 el, 34 B):  f16 d; i8 qs[32]                       x = d·q
//   Q4_0 (32 el, 18 B):  f16 d; u8 qs[16]                       x = d·(nibble − 8); el j low nibble, j+16 high
//   Q5_0 (32 el, 22 B):  f16 d; u8 qh[4]; u8 qs[16]             x = d·(q − 16), bit 4 of el j in qh bit j
//   Q5_1 (32 el, 24 B):  f16 d; f16 m; u8 qh[4]; u8 qs[16]      x = d·q + m
//   Q4_K (256 el, 144 B): f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
//   Q5_K (256 el, 176 B): f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]
//   Q6_K (256 el, 210 B): u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
void quantize_row_q8_0(const float* x, uint8_t* out, int64_t n);
void quantize_row_q4_0(const float* x, uint8_t* out, int64_t n);
void quantize_row_q5_0(const float* x, uint8_t* out, int64_t n);
void quantize_row_q5_1(const float* x, uint8_t* out, int64_t n);
void quantize_row_q4_K(const float* x, uint8_t* out, int64_t n);
void quantize_row_q5_K(const float* x, uint8_t* out, int64_t n);
void quantize_row_q6_K(const float* x, uint8_t* out, int64_t n);

// Encode `n` fp32 values as type `t` (any type of ggml_types.h). `out` holds ggml_row_bytes(t, n) bytes.
void encode_row(GgmlType t, const float* x, uint8_t* out, int64_t n);
// Decode `n` values of type `t` back to fp32.
void decode_row(GgmlType t, const uint8_t* in, float* y, int64_t n);

// Tests: use the portable scalar code even where AVX2/F16C fast paths exist (both must give the same bytes).
void quants_force_scalar(bool on);

}  // namespace nxft
