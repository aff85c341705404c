// quants.cpp — ggml block quantizers and dequantizers (see quants.h for the layouts).
//
// Byte parity with llama-quantize needs the same float arithmetic as ggml's reference quantizers: the same
// operation order in every sum and product (no reassociation, no FMA: this file is compiled without
// -ffast-math and without -mfma), round-half-away-from-zero where ggml uses roundf, truncating casts where
// ggml casts, and round-half-even (the 1.5·2^23 trick) where ggml uses nearest_int.
#include "gguf/quants.h"

// Parity needs unfused multiply-adds even if someone builds the engine with -march=native (FMA).
#pragma GCC optimize("O3", "fp-contract=off")

#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include "util/dtype.h"
#include "util/events.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace nxft {

// ---------------------------------------------------------------------------------------------------------
// type table

int ggml_block_elems(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: return 1;
    case GgmlType::Q4_0: case GgmlType::Q5_0: case GgmlType::Q5_1: case GgmlType::Q8_0: return 32;
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: return kQK_K;
  }
  throw EngineError("unknown ggml type id " + std::to_string(uint32_t(t)));
}

size_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 4;
    case GgmlType::F16: case GgmlType::BF16: return 2;
    case GgmlType::Q8_0: return 2 + 32;
    case GgmlType::Q4_0: return 2 + 16;
    case GgmlType::Q5_0: return 2 + 4 + 16;
    case GgmlType::Q5_1: return 2 + 2 + 4 + 16;
    case GgmlType::Q4_K: return 2 + 2 + 12 + 128;
    case GgmlType::Q5_K: return 2 + 2 + 12 + 32 + 128;
    case GgmlType::Q6_K: return 128 + 64 + 16 + 2;
  }
  throw EngineError("unknown ggml type id " + std::to_string(uint32_t(t)));
}

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::BF16: return "BF16";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
  }
  return "?";
}

bool ggml_is_quantized(GgmlType t) { return ggml_block_elems(t) > 1; }

size_t ggml_row_bytes(GgmlType t, int64_t n) {
  int64_t be = ggml_block_elems(t);
  if (n % be != 0)
    throw EngineError("row of " + std::to_string(n) + " elements is not a multiple of the " +
                      ggml_type_name(t) + " block size " + std::to_string(be));
  return size_t(n / be) * ggml_block_bytes(t);
}

// ---------------------------------------------------------------------------------------------------------
// helpers

static std::atomic<bool> g_force_scalar{false};
void quants_force_scalar(bool on) { g_force_scalar.store(on); }

static inline void put_f16(uint8_t* p, float v) {
  uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
static inline float get_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5·2^23 leaves the rounded integer in the low
// mantissa bits (the FPU rounds the addition half-to-even).
static inline int round_nearest_even(float v) {
  float biased = v + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &biased, 4);
  return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// roundf (ties away from zero) for |v| < 2^31, inline: truncate, then step away from zero when the dropped
// fraction (exact: v and its truncation share sign and exponent range) is at least one half.
static inline int round_half_away(float v) {
  int i = int(v);
  float frac = v - float(i);
  if (frac >= 0.5f) i++;
  else if (frac <= -0.5f) i--;
  return i;
}

// ---------------------------------------------------------------------------------------------------------
// 32-element blocks

void quantize_row_q8_0(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 34) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(out, d);
    int8_t* qs = reinterpret_cast<int8_t*>(out + 2);
    for (int j = 0; j < 32; j++) qs[j] = int8_t(round_half_away(x[j] * id));
  }
}

// The value of largest magnitude, keeping its sign (the first one wins ties).
static inline float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; j++) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void quantize_row_q4_0(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 18) {
    // d is negative when the extreme is positive, so the extreme maps to q = 0 (value −8·d) exactly.
    const float d = signed_absmax(x, 32) / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(out, d);
    uint8_t* qs = out + 2;
    for (int j = 0; j < 16; j++) {
      uint8_t lo = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
      uint8_t hi = uint8_t(std::min(15, int(int8_t(x[j + 16] * id + 8.5f))));
      qs[j] = uint8_t(lo | (hi << 4));
    }
  }
}

void quantize_row_q5_0(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 22) {
    const float d = signed_absmax(x, 32) / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(out, d);
    uint32_t qh = 0;
    uint8_t* qs = out + 6;
    for (int j = 0; j < 16; j++) {
      uint8_t lo = uint8_t(std::min(31, int(int8_t(x[j] * id + 16.5f))));
      uint8_t hi = uint8_t(std::min(31, int(int8_t(x[j + 16] * id + 16.5f))));
      qs[j] = uint8_t((lo & 0x0F) | ((hi & 0x0F) << 4));
      qh |= uint32_t((lo >> 4) & 1) << j;
      qh |= uint32_t((hi >> 4) & 1) << (j + 16);
    }
    std::memcpy(out + 2, &qh, 4);
  }
}

void quantize_row_q5_1(const float* x, uint8_t* out, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, x += 32, out += 24) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
      if (x[j] < min) min = x[j];
      if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_f16(out, d);
    put_f16(out + 2, min);
    uint32_t qh = 0;
    uint8_t* qs = out + 8;
    for (int j = 0; j < 16; j++) {
      uint8_t lo = uint8_t((x[j] - min) * id + 0.5f);
      uint8_t hi = uint8_t((x[j + 16] - min) * id + 0.5f);
      qs[j] = uint8_t((lo & 0x0F) | ((hi & 0x0F) << 4));
      qh |= uint32_t((lo >> 4) & 1) << j;
      qh |= uint32_t((hi >> 4) & 1) << (j + 16);
    }
    std::memcpy(out + 4, &qh, 4);
  }
}

// ---------------------------------------------------------------------------------------------------------
// K-quant searches

// Asymmetric fit x ≈ scale·L − min_out with L in [0, nmax], minimising Σ w·(error)², for Q4_K/Q5_K
// sub-blocks. Starts from the plain min/max grid, then tries nstep+1 grid stretches
// (nmax + rmin + rdelta·k) and for each solves the weighted least-squares scale and offset for the
// rounded levels, keeping the best. Returns the scale; *min_out is the (non-negative) offset.
static float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* min_out,
                           uint8_t* L_try, float rmin, float rdelta, int nstep) {
  float lo = x[0], hi = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (lo > 0) lo = 0;  // the offset only ever shifts down; `lo` is the current best offset from here on
  if (hi == lo) {
    for (int i = 0; i < n; i++) L[i] = 0;
    *min_out = -lo;
    return 0.f;
  }
  float inv = nmax / (hi - lo);
  float scale = 1 / inv;
  float best_err = 0;
  for (int i = 0; i < n; i++) {
    L[i] = uint8_t(clamp_int(round_nearest_even(inv * (x[i] - lo)), 0, nmax));
    float e = scale * L[i] + lo - x[i];
    best_err += w[i] * (e * e);
  }
  // Each stretch re-grids around the best offset found so far (lo is updated on improvement).
  for (int k = 0; k <= nstep; k++) {
    inv = (rmin + rdelta * k + nmax) / (hi - lo);
    float s_l = 0, s_l2 = 0, s_xl = 0;
    for (int i = 0; i < n; i++) {
      int l = clamp_int(round_nearest_even(inv * (x[i] - lo)), 0, nmax);
      L_try[i] = uint8_t(l);
      s_l += w[i] * l;
      s_l2 += w[i] * l * l;
      s_xl += w[i] * l * x[i];
    }
    float det = sum_w * s_l2 - s_l * s_l;
    if (det > 0) {
      float try_scale = (sum_w * s_xl - sum_x * s_l) / det;
      float try_min = (s_l2 * sum_x - s_l * s_xl) / det;
      if (try_min > 0) {  // a positive offset is not representable: refit the scale alone
        try_min = 0;
        try_scale = s_xl / s_l2;
      }
      float err = 0;
      for (int i = 0; i < n; i++) {
        float e = try_scale * L_try[i] + try_min - x[i];
        err += w[i] * (e * e);
      }
      if (err < best_err) {
        std::memcpy(L, L_try, size_t(n));
        best_err = err;
        scale = try_scale;
        lo = try_min;
      }
    }
  }
  *min_out = -lo;
  return scale;
}

// Symmetric fit x ≈ scale·(L − nmax) with L − nmax in [−nmax, nmax−1], weights x² (Q6_K sub-blocks).
// Tries 19 grid stretches around nmax/max and keeps the one with the best weighted least-squares fit.
static float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; i++) {
    float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < 1e-15f) {  // all (nearly) zero
    for (int i = 0; i < n; i++) L[i] = 0;
    return 0.f;
  }
  float inv = -nmax / max;
  float s_lx = 0, s_l2 = 0;
  for (int i = 0; i < n; i++) {
    int l = clamp_int(round_nearest_even(inv * x[i]), -nmax, nmax - 1);
    L[i] = int8_t(l + nmax);
    float w = x[i] * x[i];
    s_lx += w * x[i] * l;
    s_l2 += w * l * l;
  }
  float scale = s_l2 != 0 ? s_lx / s_l2 : 0.0f;
  float best = scale * s_lx;
  for (int k = -9; k <= 9; k++) {
    if (k == 0) continue;
    inv = -(nmax + 0.1f * k) / max;
    s_lx = s_l2 = 0;
    for (int i = 0; i < n; i++) {
      int l = clamp_int(round_nearest_even(inv * x[i]), -nmax, nmax - 1);
      float w = x[i] * x[i];
      s_lx += w * x[i] * l;
      s_l2 += w * l * l;
    }
    if (s_l2 > 0 && s_lx * s_lx > best * s_l2) {
      for (int i = 0; i < n; i++) L[i] = int8_t(nmax + clamp_int(round_nearest_even(inv * x[i]), -nmax, nmax - 1));
      scale = s_lx / s_l2;
      best = scale * s_lx;
    }
  }
  return scale;
}

// The 12-byte packing of eight 6-bit (scale, min) pairs used by Q4_K and Q5_K:
//   j < 4:  scales[j] = sc, scales[j+4] = m (bits 0-5)
//   j >= 4: scales[j+4] = sc low 4 | m low 4 << 4; the top 2 bits of sc go to scales[j-4] bits 6-7,
//           the top 2 bits of m to scales[j] bits 6-7.
static void pack_scale_min_k4(const uint8_t sc[8], const uint8_t m[8], uint8_t out[12]) {
  for (int j = 0; j < 4; j++) {
    out[j] = sc[j];
    out[j + 4] = m[j];
  }
  for (int j = 4; j < 8; j++) {
    out[j + 4] = uint8_t((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
    out[j - 4] |= uint8_t((sc[j] >> 4) << 6);
    out[j] |= uint8_t((m[j] >> 4) << 6);
  }
}
static inline void unpack_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per 256-element super-block, fit each 32-element sub-block,
// quantize the sub-block scales and mins to 6 bits against the super-block maxima, then requantize the values
// against the rounded scales. Leaves the levels in L[256] and fills d, dmin, scales[12].
// Weights of a 32-element sub-block: rms of the block + |x| (favours the large values), then fit_scale_min.
static void fit_subblocks_scalar(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t L[256],
                                 float sub_scale[8], float sub_min[8]) {
  float w[32];
  uint8_t L_try[32];
  for (int j = 0; j < 8; j++) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
    float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; l++) w[l] = av_x + std::fabs(xs[l]);
    sub_scale[j] = fit_scale_min(32, nmax, xs, w, L + 32 * j, &sub_min[j], L_try, rmin, rdelta, nstep);
  }
}

#if defined(__x86_64__)
// The same computation for the 8 sub-blocks of a super-block at once, one sub-block per AVX lane. Every lane
// performs exactly the scalar operations in the scalar order (sums stay sequential within a lane; no FMA;
// branches become per-lane selects), so the results are bit-identical to fit_subblocks_scalar — about 6×
// faster. xt[i] holds element i of every sub-block.
__attribute__((target("avx2"))) static void fit_subblocks_avx2(const float* x, int nmax, float rmin, float rdelta,
                                                                int nstep, uint8_t L[256], float sub_scale[8],
                                                                float sub_min[8]) {
  __m256 xt[32], wt[32];
  __m256i Lb[32], Lt[32];
  alignas(32) float lane[8];
  for (int i = 0; i < 32; i++) {
    for (int j = 0; j < 8; j++) lane[j] = x[32 * j + i];
    xt[i] = _mm256_load_ps(lane);
  }
  const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
  const __m256 magic = _mm256_set1_ps(12582912.f);
  const __m256i mant = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000);
  const __m256i izero = _mm256_setzero_si256(), inmax = _mm256_set1_epi32(nmax);
  auto rne = [&](__m256 v) {   // round_nearest_even, clamped to [0, nmax]
    __m256i i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(v, magic)), mant), bias);
    return _mm256_min_epi32(_mm256_max_epi32(i, izero), inmax);
  };
  // weights
  __m256 sum_x2 = zero;
  for (int i = 0; i < 32; i++) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[i], xt[i]));
  const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.f)));
  for (int i = 0; i < 32; i++) wt[i] = _mm256_add_ps(av_x, _mm256_andnot_ps(sign, xt[i]));
  // min, max, Σw, Σw·x
  __m256 lo = xt[0], hi = xt[0], sum_w = wt[0], sum_x = _mm256_mul_ps(wt[0], xt[0]);
  for (int i = 1; i < 32; i++) {
    lo = _mm256_blendv_ps(lo, xt[i], _mm256_cmp_ps(xt[i], lo, _CMP_LT_OQ));
    hi = _mm256_blendv_ps(hi, xt[i], _mm256_cmp_ps(xt[i], hi, _CMP_GT_OQ));
    sum_w = _mm256_add_ps(sum_w, wt[i]);
    sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wt[i], xt[i]));
  }
  lo = _mm256_blendv_ps(lo, zero, _mm256_cmp_ps(lo, zero, _CMP_GT_OQ));
  const __m256 flat = _mm256_cmp_ps(hi, lo, _CMP_EQ_OQ);
  const __m256 lo_flat = lo;
  const __m256 fnmax = _mm256_set1_ps(float(nmax));
  __m256 inv = _mm256_div_ps(fnmax, _mm256_sub_ps(hi, lo));
  __m256 scale = _mm256_div_ps(_mm256_set1_ps(1.0f), inv);
  __m256 best = zero;
  for (int i = 0; i < 32; i++) {
    Lb[i] = rne(_mm256_mul_ps(inv, _mm256_sub_ps(xt[i], lo)));
    __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(Lb[i])), lo), xt[i]);
    best = _mm256_add_ps(best, _mm256_mul_ps(wt[i], _mm256_mul_ps(e, e)));
  }
  for (int k = 0; k <= nstep; k++) {
    inv = _mm256_div_ps(_mm256_set1_ps(rmin + rdelta * k + nmax), _mm256_sub_ps(hi, lo));
    __m256 s_l = zero, s_l2 = zero, s_xl = zero;
    for (int i = 0; i < 32; i++) {
      Lt[i] = rne(_mm256_mul_ps(inv, _mm256_sub_ps(xt[i], lo)));
      __m256 l = _mm256_cvtepi32_ps(Lt[i]);
      __m256 wl = _mm256_mul_ps(wt[i], l);
      s_l = _mm256_add_ps(s_l, wl);
      s_l2 = _mm256_add_ps(s_l2, _mm256_mul_ps(wl, l));
      s_xl = _mm256_add_ps(s_xl, _mm256_mul_ps(wl, xt[i]));
    }
    __m256 det = _mm256_sub_ps(_mm256_mul_ps(sum_w, s_l2), _mm256_mul_ps(s_l, s_l));
    __m256 ok = _mm256_cmp_ps(det, zero, _CMP_GT_OQ);
    __m256 try_scale = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(sum_w, s_xl), _mm256_mul_ps(sum_x, s_l)), det);
    __m256 try_min = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(s_l2, sum_x), _mm256_mul_ps(s_l, s_xl)), det);
    __m256 pos = _mm256_cmp_ps(try_min, zero, _CMP_GT_OQ);
    try_min = _mm256_blendv_ps(try_min, zero, pos);
    try_scale = _mm256_blendv_ps(try_scale, _mm256_div_ps(s_xl, s_l2), pos);
    __m256 err = zero;
    for (int i = 0; i < 32; i++) {
      __m256 e = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(try_scale, _mm256_cvtepi32_ps(Lt[i])), try_min), xt[i]);
      err = _mm256_add_ps(err, _mm256_mul_ps(wt[i], _mm256_mul_ps(e, e)));
    }
    __m256 better = _mm256_andnot_ps(flat, _mm256_and_ps(ok, _mm256_cmp_ps(err, best, _CMP_LT_OQ)));
    __m256i bi = _mm256_castps_si256(better);
    for (int i = 0; i < 32; i++) Lb[i] = _mm256_blendv_epi8(Lb[i], Lt[i], bi);
    best = _mm256_blendv_ps(best, err, better);
    scale = _mm256_blendv_ps(scale, try_scale, better);
    lo = _mm256_blendv_ps(lo, try_min, better);
  }
  // flat sub-blocks: L = 0, scale 0, min = −lo
  scale = _mm256_blendv_ps(scale, zero, flat);
  lo = _mm256_blendv_ps(lo, lo_flat, flat);
  __m256i fi = _mm256_castps_si256(flat);
  alignas(32) int32_t li[8];
  for (int i = 0; i < 32; i++) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(li), _mm256_blendv_epi8(Lb[i], izero, fi));
    for (int j = 0; j < 8; j++) L[32 * j + i] = uint8_t(li[j]);
  }
  _mm256_storeu_ps(sub_scale, scale);
  _mm256_storeu_ps(sub_min, _mm256_xor_ps(lo, sign));   // −lo
}
#endif

static void quantize_superblock_k(const float* x, int nmax, float rmin, float rdelta, int nstep, uint8_t* d_out,
                                  uint8_t* dmin_out, uint8_t* scales_out, uint8_t L[256]) {
  float sub_scale[8], sub_min[8];
#if defined(__x86_64__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2 && !g_force_scalar.load(std::memory_order_relaxed)) fit_subblocks_avx2(x, nmax, rmin, rdelta, nstep, L, sub_scale, sub_min);
  else fit_subblocks_scalar(x, nmax, rmin, rdelta, nstep, L, sub_scale, sub_min);
#else
  fit_subblocks_scalar(x, nmax, rmin, rdelta, nstep, L, sub_scale, sub_min);
#endif
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; j++) {
    if (sub_scale[j] > max_scale) max_scale = sub_scale[j];
    if (sub_min[j] > max_min) max_min = sub_min[j];
  }
  float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  uint8_t sc6[8], m6[8];
  for (int j = 0; j < 8; j++) {
    uint8_t ls = uint8_t(round_nearest_even(inv_scale * sub_scale[j]));
    uint8_t lm = uint8_t(round_nearest_even(inv_min * sub_min[j]));
    sc6[j] = std::min<uint8_t>(63, ls);
    m6[j] = std::min<uint8_t>(63, lm);
  }
  pack_scale_min_k4(sc6, m6, scales_out);
  put_f16(d_out, max_scale / 63.f);
  put_f16(dmin_out, max_min / 63.f);
  const float d_all = get_f16(d_out), dmin_all = get_f16(dmin_out);
  for (int j = 0; j < 8; j++) {
    uint8_t sc, m;
    unpack_scale_min_k4(j, scales_out, &sc, &m);
    const float d = d_all * sc;
    if (d == 0.0f) continue;  // keep the levels of the fit
    const float dm = dmin_all * m;
    for (int i = 0; i < 32; i++) L[32 * j + i] = uint8_t(clamp_int(round_nearest_even((x[32 * j + i] + dm) / d), 0, nmax));
  }
}

void quantize_row_q4_K(const float* x, uint8_t* out, int64_t n) {
  uint8_t L[256];
  for (int64_t b = 0; b < n / kQK_K; b++, x += kQK_K, out += 144) {
    std::memset(out, 0, 144);
    quantize_superblock_k(x, 15, -1.f, 0.1f, 20, out, out + 2, out + 4, L);
    // qs: each 64-element chunk takes 32 bytes, elements 0..31 in the low nibbles, 32..63 in the high.
    uint8_t* qs = out + 16;
    for (int c = 0; c < kQK_K; c += 64, qs += 32)
      for (int l = 0; l < 32; l++) qs[l] = uint8_t(L[c + l] | (L[c + l + 32] << 4));
  }
}

void quantize_row_q5_K(const float* x, uint8_t* out, int64_t n) {
  uint8_t L[256];
  for (int64_t b = 0; b < n / kQK_K; b++, x += kQK_K, out += 176) {
    std::memset(out, 0, 176);
    quantize_superblock_k(x, 31, -0.5f, 0.1f, 15, out, out + 2, out + 4, L);
    // Low 4 bits as in Q4_K; bit 4 of element c+l (l < 32) in qh[l] bit 2·(c/64), of c+32+l in bit 2·(c/64)+1.
    uint8_t* qh = out + 16;
    uint8_t* qs = out + 48;
    int bit = 0;
    for (int c = 0; c < kQK_K; c += 64, qs += 32, bit += 2) {
      for (int l = 0; l < 32; l++) {
        int a = L[c + l], b2 = L[c + l + 32];
        if (a > 15) { a -= 16; qh[l] |= uint8_t(1u << bit); }
        if (b2 > 15) { b2 -= 16; qh[l] |= uint8_t(1u << (bit + 1)); }
        qs[l] = uint8_t(a | (b2 << 4));
      }
    }
  }
}

#if defined(__x86_64__)
// fit_scale_symmetric(16, 32, …) for 8 consecutive 16-element sub-blocks at once, one per AVX lane, with the
// scalar operations in the scalar order (bit-identical, see fit_subblocks_avx2).
__attribute__((target("avx2"))) static void fit_symmetric16_x8_avx2(const float* x, int8_t* L, float* sub_scale) {
  const int nmax = 32;
  __m256 xt[16];
  __m256i Lb[16], Lt[16];
  alignas(32) float lane[8];
  for (int i = 0; i < 16; i++) {
    for (int j = 0; j < 8; j++) lane[j] = x[16 * j + i];
    xt[i] = _mm256_load_ps(lane);
  }
  const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
  const __m256 magic = _mm256_set1_ps(12582912.f);
  const __m256i mant = _mm256_set1_epi32(0x007fffff), bias = _mm256_set1_epi32(0x00400000);
  const __m256i lo_i = _mm256_set1_epi32(-nmax), hi_i = _mm256_set1_epi32(nmax - 1);
  auto rne = [&](__m256 v) {
    __m256i i = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(v, magic)), mant), bias);
    return _mm256_min_epi32(_mm256_max_epi32(i, lo_i), hi_i);
  };
  __m256 max = zero, amax = zero;
  for (int i = 0; i < 16; i++) {
    __m256 ax = _mm256_andnot_ps(sign, xt[i]);
    __m256 gt = _mm256_cmp_ps(ax, amax, _CMP_GT_OQ);
    amax = _mm256_blendv_ps(amax, ax, gt);
    max = _mm256_blendv_ps(max, xt[i], gt);
  }
  const __m256 valid = _mm256_cmp_ps(amax, _mm256_set1_ps(1e-15f), _CMP_GE_OQ);   // !(amax < eps)
  __m256 inv = _mm256_div_ps(_mm256_set1_ps(float(-nmax)), max);
  __m256 s_lx = zero, s_l2 = zero;
  for (int i = 0; i < 16; i++) {
    Lb[i] = rne(_mm256_mul_ps(inv, xt[i]));
    __m256 l = _mm256_cvtepi32_ps(Lb[i]);
    __m256 w = _mm256_mul_ps(xt[i], xt[i]);
    s_lx = _mm256_add_ps(s_lx, _mm256_mul_ps(_mm256_mul_ps(w, xt[i]), l));
    s_l2 = _mm256_add_ps(s_l2, _mm256_mul_ps(_mm256_mul_ps(w, l), l));
  }
  __m256 scale = _mm256_blendv_ps(zero, _mm256_div_ps(s_lx, s_l2), _mm256_cmp_ps(s_l2, zero, _CMP_NEQ_OQ));
  __m256 best = _mm256_mul_ps(scale, s_lx);
  for (int k = -9; k <= 9; k++) {
    if (k == 0) continue;
    inv = _mm256_div_ps(_mm256_set1_ps(-(nmax + 0.1f * k)), max);
    s_lx = s_l2 = zero;
    for (int i = 0; i < 16; i++) {
      Lt[i] = rne(_mm256_mul_ps(inv, xt[i]));
      __m256 l = _mm256_cvtepi32_ps(Lt[i]);
      __m256 w = _mm256_mul_ps(xt[i], xt[i]);
      s_lx = _mm256_add_ps(s_lx, _mm256_mul_ps(_mm256_mul_ps(w, xt[i]), l));
      s_l2 = _mm256_add_ps(s_l2, _mm256_mul_ps(_mm256_mul_ps(w, l), l));
    }
    __m256 better = _mm256_and_ps(_mm256_cmp_ps(s_l2, zero, _CMP_GT_OQ),
                                  _mm256_cmp_ps(_mm256_mul_ps(s_lx, s_lx), _mm256_mul_ps(best, s_l2), _CMP_GT_OQ));
    better = _mm256_and_ps(better, valid);
    __m256i bi = _mm256_castps_si256(better);
    for (int i = 0; i < 16; i++) Lb[i] = _mm256_blendv_epi8(Lb[i], Lt[i], bi);
    __m256 new_scale = _mm256_div_ps(s_lx, s_l2);
    scale = _mm256_blendv_ps(scale, new_scale, better);
    best = _mm256_blendv_ps(best, _mm256_mul_ps(new_scale, s_lx), better);
  }
  // all-zero sub-blocks: L = 0 (stored as 0, not nmax), scale 0
  scale = _mm256_and_ps(scale, valid);
  __m256i vi = _mm256_castps_si256(valid);
  const __m256i off = _mm256_set1_epi32(nmax);
  alignas(32) int32_t li[8];
  for (int i = 0; i < 16; i++) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(li), _mm256_and_si256(_mm256_add_epi32(Lb[i], off), vi));
    for (int j = 0; j < 8; j++) L[16 * j + i] = int8_t(li[j]);
  }
  _mm256_storeu_ps(sub_scale, scale);
}
#endif

void quantize_row_q6_K(const float* x, uint8_t* out, int64_t n) {
  int8_t L[256];
  float sub_scale[16];
#if defined(__x86_64__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
#endif
  for (int64_t b = 0; b < n / kQK_K; b++, x += kQK_K, out += 210) {
    std::memset(out, 0, 210);
    uint8_t* ql = out;
    uint8_t* qh = out + 128;
    int8_t* scales = reinterpret_cast<int8_t*>(out + 192);
    uint8_t* d_out = out + 208;
#if defined(__x86_64__)
    if (has_avx2 && !g_force_scalar.load(std::memory_order_relaxed)) {
      fit_symmetric16_x8_avx2(x, L, sub_scale);
      fit_symmetric16_x8_avx2(x + 128, L + 128, sub_scale + 8);
    } else
#endif
    {
      for (int j = 0; j < 16; j++) sub_scale[j] = fit_scale_symmetric(16, 32, x + 16 * j, L + 16 * j);
    }
    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < 16; j++) {
      float a = std::fabs(sub_scale[j]);
      if (a > max_abs_scale) {
        max_abs_scale = a;
        max_scale = sub_scale[j];
      }
    }
    if (max_abs_scale < 1e-15f) continue;  // all zero: the block stays zero (d = +0)
    // The sub-block scales become int8 against d = max_scale/−128, so the largest maps to −128.
    float iscale = -128.f / max_scale;
    put_f16(d_out, 1 / iscale);
    for (int j = 0; j < 16; j++) scales[j] = int8_t(std::min(127, round_nearest_even(iscale * sub_scale[j])));
    const float d_all = get_f16(d_out);
    for (int j = 0; j < 16; j++) {
      float d = d_all * scales[j];
      if (d == 0.0f) continue;
      for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clamp_int(round_nearest_even(x[16 * j + i] / d), -32, 31) + 32);
    }
    // Per 128-element half: ql[l] = el l (low 4) | el l+64 << 4; ql[l+32] = el l+32 | el l+96 << 4;
    // qh[l] = the top 2 bits of el l, l+32, l+64, l+96 at bit 0, 2, 4, 6.
    for (int h = 0; h < kQK_K; h += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; l++) {
        const uint8_t q1 = uint8_t(L[h + l]), q2 = uint8_t(L[h + l + 32]);
        const uint8_t q3 = uint8_t(L[h + l + 64]), q4 = uint8_t(L[h + l + 96]);
        ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
        ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
        qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// dequantizers

static void dequantize_q8_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, in += 34, y += 32) {
    float d = get_f16(in);
    const int8_t* qs = reinterpret_cast<const int8_t*>(in + 2);
    for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
  }
}
static void dequantize_q4_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, in += 18, y += 32) {
    float d = get_f16(in);
    for (int j = 0; j < 16; j++) {
      y[j] = ((in[2 + j] & 0xF) - 8) * d;
      y[j + 16] = ((in[2 + j] >> 4) - 8) * d;
    }
  }
}
static void dequantize_q5_0(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, in += 22, y += 32) {
    float d = get_f16(in);
    uint32_t qh;
    std::memcpy(&qh, in + 2, 4);
    for (int j = 0; j < 16; j++) {
      int lo = (in[6 + j] & 0xF) | int(((qh >> j) & 1) << 4);
      int hi = (in[6 + j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
      y[j] = (lo - 16) * d;
      y[j + 16] = (hi - 16) * d;
    }
  }
}
static void dequantize_q5_1(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / 32; b++, in += 24, y += 32) {
    float d = get_f16(in), m = get_f16(in + 2);
    uint32_t qh;
    std::memcpy(&qh, in + 4, 4);
    for (int j = 0; j < 16; j++) {
      int lo = (in[8 + j] & 0xF) | int(((qh >> j) & 1) << 4);
      int hi = (in[8 + j] >> 4) | int(((qh >> (j + 16)) & 1) << 4);
      y[j] = lo * d + m;
      y[j + 16] = hi * d + m;
    }
  }
}
static void dequantize_qk(const uint8_t* in, float* y, int64_t n, bool five_bit) {
  const size_t bb = five_bit ? 176 : 144;
  for (int64_t b = 0; b < n / kQK_K; b++, in += bb, y += kQK_K) {
    float d = get_f16(in), dmin = get_f16(in + 2);
    const uint8_t* scales = in + 4;
    const uint8_t* qh = in + 16;
    const uint8_t* qs = in + (five_bit ? 48 : 16);
    for (int c = 0; c < 4; c++) {
      uint8_t sc0, m0, sc1, m1;
      unpack_scale_min_k4(2 * c, scales, &sc0, &m0);
      unpack_scale_min_k4(2 * c + 1, scales, &sc1, &m1);
      for (int l = 0; l < 32; l++) {
        int q0 = qs[32 * c + l] & 0xF, q1 = qs[32 * c + l] >> 4;
        if (five_bit) {
          q0 |= ((qh[l] >> (2 * c)) & 1) << 4;
          q1 |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
        }
        y[64 * c + l] = d * sc0 * q0 - dmin * m0;
        y[64 * c + 32 + l] = d * sc1 * q1 - dmin * m1;
      }
    }
  }
}
static void dequantize_q6_K(const uint8_t* in, float* y, int64_t n) {
  for (int64_t b = 0; b < n / kQK_K; b++, in += 210, y += kQK_K) {
    const uint8_t* ql = in;
    const uint8_t* qh = in + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(in + 192);
    float d = get_f16(in + 208);
    for (int h = 0; h < 2; h++) {
      for (int l = 0; l < 32; l++) {
        int is = l / 16;
        int q1 = ((ql[64 * h + l] & 0xF) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32;
        int q2 = ((ql[64 * h + l + 32] & 0xF) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[64 * h + l + 32] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32;
        y[128 * h + l] = d * sc[8 * h + is + 0] * q1;
        y[128 * h + l + 32] = d * sc[8 * h + is + 2] * q2;
        y[128 * h + l + 64] = d * sc[8 * h + is + 4] * q3;
        y[128 * h + l + 96] = d * sc[8 * h + is + 6] * q4;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// dispatch

// fp32 → fp16 with round-to-nearest-even. On x86-64 CPUs with F16C (every x86 CPU since 2012) the hardware
// conversion is used (same rounding, ~20× faster than the portable one); otherwise dtype.h's.
#if defined(__x86_64__)
__attribute__((target("avx,f16c"))) static void f32_to_f16_row_f16c(const float* x, uint8_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), h);
  }
  for (; i < n; i++) put_f16(out + 2 * i, x[i]);
}
#endif
static void f32_to_f16_row(const float* x, uint8_t* out, int64_t n) {
#if defined(__x86_64__)
  static const bool has_f16c = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  if (has_f16c && !g_force_scalar.load(std::memory_order_relaxed)) return f32_to_f16_row_f16c(x, out, n);
#endif
  convert_from_f32(x, out, DType::F16, size_t(n));
}

void encode_row(GgmlType t, const float* x, uint8_t* out, int64_t n) {
  ggml_row_bytes(t, n);  // validates n
  switch (t) {
    case GgmlType::F32: std::memcpy(out, x, size_t(n) * 4); return;
    case GgmlType::F16: f32_to_f16_row(x, out, n); return;
    case GgmlType::BF16: convert_from_f32(x, out, DType::BF16, size_t(n)); return;
    case GgmlType::Q8_0: quantize_row_q8_0(x, out, n); return;
    case GgmlType::Q4_0: quantize_row_q4_0(x, out, n); return;
    case GgmlType::Q5_0: quantize_row_q5_0(x, out, n); return;
    case GgmlType::Q5_1: quantize_row_q5_1(x, out, n); return;
    case GgmlType::Q4_K: quantize_row_q4_K(x, out, n); return;
    case GgmlType::Q5_K: quantize_row_q5_K(x, out, n); return;
    case GgmlType::Q6_K: quantize_row_q6_K(x, out, n); return;
  }
}

void decode_row(GgmlType t, const uint8_t* in, float* y, int64_t n) {
  ggml_row_bytes(t, n);
  switch (t) {
    case GgmlType::F32: std::memcpy(y, in, size_t(n) * 4); return;
    case GgmlType::F16: convert_to_f32(in, DType::F16, y, size_t(n)); return;
    case GgmlType::BF16: convert_to_f32(in, DType::BF16, y, size_t(n)); return;
    case GgmlType::Q8_0: dequantize_q8_0(in, y, n); return;
    case GgmlType::Q4_0: dequantize_q4_0(in, y, n); return;
    case GgmlType::Q5_0: dequantize_q5_0(in, y, n); return;
    case GgmlType::Q5_1: dequantize_q5_1(in, y, n); return;
    case GgmlType::Q4_K: dequantize_qk(in, y, n, false); return;
    case GgmlType::Q5_K: dequantize_qk(in, y, n, true); return;
    case GgmlType::Q6_K: dequantize_q6_K(in, y, n); return;
  }
}

}  // namespace nxft
