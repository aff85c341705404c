// dtype_test.cpp — exact fp16/bf16 conversions.
//  * fp16 → fp32 for all 65536 halves against an independent ldexp-based decoding, and the exhaustive round
//    trip fp16 → fp32 → fp16 (bit-identical for every non-NaN half; NaNs stay NaN with their sign).
//  * fp32 → fp16 round-to-nearest-even against a reference that searches the sorted table of all finite halves
//    (ties → even mantissa), for every boundary and midpoint between adjacent halves and 4M random floats.
//  * bf16 RNE on hand-picked cases (ties to even both ways, carry into the exponent, overflow, NaN) and random
//    floats against a double-precision reference.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include "test_util.h"
#include "util/dtype.h"
#include "util/rng.h"

using namespace nxft;

static float bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static uint32_t f_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// Independent decoding: value = (-1)^s · 2^(e-15) · (1 + m/1024), subnormals 2^-14 · m/1024.
static double half_value(uint16_t h) {
  int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(double(m), -24) : std::ldexp(1.0 + m / 1024.0, e - 15);
  return s ? -v : v;
}

// Reference fp32 → fp16 (RNE) by searching the table of non-negative finite halves (sorted by value).
static uint16_t ref_f32_to_f16(float f, const std::vector<double>& pos_values) {
  double x = std::fabs(double(f));
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (x >= 65520.0) return sign | 0x7c00;  // 65504 + half an ulp (2^4): ties go to the even side, which is inf
  auto it = std::lower_bound(pos_values.begin(), pos_values.end(), x);
  size_t hi = size_t(it - pos_values.begin());
  if (hi == pos_values.size()) return sign | 0x7bff;  // (65504, 65520): nearest is 65504
  if (hi < pos_values.size() && pos_values[hi] == x) return sign | uint16_t(hi);
  size_t lo = hi - 1;
  double dl = x - pos_values[lo], dh = pos_values[hi] - x;
  if (dl < dh) return sign | uint16_t(lo);
  if (dh < dl) return sign | uint16_t(hi);
  return sign | uint16_t((lo & 1) ? hi : lo);
}

static uint16_t ref_f32_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  uint32_t u = f_bits(f);
  uint32_t lower = u & 0xffff, upper = u >> 16;
  if (lower > 0x8000 || (lower == 0x8000 && (upper & 1))) upper++;
  return uint16_t(upper);
}

int main() {
  CHECK(dtype_size(DType::BF16) == 2 && dtype_size(DType::F64) == 8 && dtype_size(DType::BOOL) == 1);
  DType t;
  CHECK(dtype_from_name("BF16", &t) && t == DType::BF16 && !dtype_from_name("F8_E4M3", &t) && !dtype_from_name("bf16", &t));
  CHECK(float_dtype_from_string("bf16") == DType::BF16 && float_dtype_from_string("float16") == DType::F16);
  EXPECT_THROW(EngineError, [] { float_dtype_from_string("q4"); }, "unsupported dtype \"q4\"");

  // --- fp16 → fp32, all 65536 ---
  std::vector<double> pos_values(0x7c00);
  int decode_bad = 0, roundtrip_bad = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float f = f16_to_f32(uint16_t(h));
    int e = (h >> 10) & 31, m = h & 1023;
    if (e == 31) {
      if (m == 0 ? !(std::isinf(f) && (std::signbit(f) == bool(h >> 15))) : !std::isnan(f)) decode_bad++;
      uint16_t back = f32_to_f16(f);
      if (m == 0 ? back != h : (((back >> 10) & 31) != 31 || (back & 1023) == 0 || (back >> 15) != (h >> 15))) roundtrip_bad++;
      continue;
    }
    if (double(f) != half_value(uint16_t(h)) || std::signbit(f) != bool(h >> 15)) decode_bad++;
    if (f32_to_f16(f) != h) roundtrip_bad++;
    if (h < 0x7c00) pos_values[h] = double(f);
  }
  CHECK_MSG(decode_bad == 0, "%d halves decoded wrongly", decode_bad);
  CHECK_MSG(roundtrip_bad == 0, "%d halves did not round-trip", roundtrip_bad);
  // NaN payload kept on decode; quiet NaN on encode.
  CHECK(f_bits(f16_to_f32(0x7e01)) == 0x7fc02000u);
  CHECK((f32_to_f16(bits_f(0x7f800001u)) & 0x7e00) == 0x7e00);

  // --- fp32 → fp16: every midpoint and neighbour between adjacent halves, then random floats ---
  int enc_bad = 0;
  auto check_enc = [&](float f) {
    uint16_t want = ref_f32_to_f16(f, pos_values), got = f32_to_f16(f);
    if (want != got) {
      if (enc_bad < 5) std::fprintf(stderr, "f32_to_f16(%a) = 0x%04x, want 0x%04x\n", double(f), got, want);
      enc_bad++;
    }
  };
  for (size_t h = 0; h + 1 < pos_values.size(); h++) {
    double mid = (pos_values[h] + pos_values[h + 1]) / 2;  // exact in double, and representable in fp32
    float fm = float(mid);
    for (float f : {fm, std::nextafter(fm, 0.0f), std::nextafter(fm, 1e9f), float(pos_values[h])}) {
      check_enc(f);
      check_enc(-f);
    }
  }
  for (float f : {65504.0f, 65519.99f, 65520.0f, 1e6f, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-8f, 2.9802322e-08f, 2.9802326e-08f,
                  5.9604645e-08f, 8.940697e-08f, bits_f(1), 6.1035156e-05f, 6.1031e-05f})
    check_enc(f);
  Rng rng(7);
  for (int i = 0; i < 4000000; i++) {
    float f = bits_f(uint32_t(rng.next_u64()));
    if (std::isnan(f)) continue;
    if (i % 2) f = float(rng.normal() * std::ldexp(1.0, int(rng.below(50)) - 30));
    check_enc(f);
  }
  CHECK_MSG(enc_bad == 0, "%d fp32 → fp16 conversions differ from the reference", enc_bad);

  // --- bf16 ---
  CHECK(f32_to_bf16(1.0f) == 0x3f80);
  CHECK(f32_to_bf16(bits_f(0x3f808000u)) == 0x3f80);   // tie, even stays
  CHECK(f32_to_bf16(bits_f(0x3f818000u)) == 0x3f82);   // tie, odd rounds up to even
  CHECK(f32_to_bf16(bits_f(0x3f808001u)) == 0x3f81);   // above the tie
  CHECK(f32_to_bf16(bits_f(0x3f807fffu)) == 0x3f80);   // below the tie
  CHECK(f32_to_bf16(bits_f(0x3fffffffu)) == 0x4000);   // carry into the exponent
  CHECK(f32_to_bf16(bits_f(0x7f7fffffu)) == 0x7f80);   // FLT_MAX rounds to inf
  CHECK(f32_to_bf16(-0.0f) == 0x8000 && f32_to_bf16(INFINITY) == 0x7f80 && f32_to_bf16(-INFINITY) == 0xff80);
  CHECK(f32_to_bf16(bits_f(0x00018000u)) == 0x0002);   // subnormal tie → even
  uint16_t qn = f32_to_bf16(bits_f(0x7f800001u));      // signalling NaN with low payload stays NaN
  CHECK(((qn >> 7) & 0xff) == 0xff && (qn & 0x7f) != 0);
  CHECK(bf16_to_f32(0x3f80) == 1.0f && f_bits(bf16_to_f32(0xc049)) == 0xc0490000u);
  int bf_bad = 0;
  for (int i = 0; i < 2000000; i++) {
    float f = bits_f(uint32_t(rng.next_u64()));
    if (std::isnan(f)) continue;
    if (f32_to_bf16(f) != ref_f32_to_bf16(f)) bf_bad++;
    // RNE means the result is the nearest bf16: no other bf16 is closer.
    double x = f, got = bf16_to_f32(f32_to_bf16(f));
    if (std::isfinite(got)) {
      uint16_t b = f32_to_bf16(f);
      double up = bf16_to_f32(uint16_t(b + 1)), dn = bf16_to_f32(uint16_t(b - 1));
      if ((std::isfinite(up) && std::fabs(up - x) < std::fabs(got - x)) || (std::isfinite(dn) && std::fabs(dn - x) < std::fabs(got - x)))
        bf_bad++;
    }
  }
  CHECK_MSG(bf_bad == 0, "%d bf16 conversions wrong", bf_bad);

  // --- bulk converters ---
  {
    std::vector<float> src = {1.0f, -2.5f, 65504.0f, 1e-7f, 3.14159f};
    std::vector<uint16_t> h(src.size()), b(src.size());
    std::vector<float> back(src.size());
    convert_from_f32(src.data(), h.data(), DType::F16, src.size());
    convert_from_f32(src.data(), b.data(), DType::BF16, src.size());
    for (size_t i = 0; i < src.size(); i++) CHECK(h[i] == f32_to_f16(src[i]) && b[i] == f32_to_bf16(src[i]));
    convert_to_f32(h.data(), DType::F16, back.data(), src.size());
    for (size_t i = 0; i < src.size(); i++) CHECK(back[i] == f16_to_f32(h[i]));
    double d[2] = {0.1, -1e300};
    convert_to_f32(d, DType::F64, back.data(), 2);
    CHECK(back[0] == 0.1f && std::isinf(back[1]));
    EXPECT_THROW(EngineError, [&] { convert_to_f32(d, DType::I32, back.data(), 1); }, "cannot convert dtype I32");
  }
  return test_result("dtype_test");
}
