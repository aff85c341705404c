// dtype.cpp — element sizes, safetensors dtype names, and exact fp16/bf16 <-> fp32 conversions.
// fp16 -> fp32 is exact for every one of the 65536 halves (subnormals, ±inf, NaN payloads kept).
// fp32 -> fp16 rounds to nearest, ties to even, like PyTorch's .to(torch.float16): values too large round to
// ±inf, tiny values become fp16 subnormals or ±0, NaN stays a quiet NaN with the sign kept.
#include "util/dtype.h"

#include <stdexcept>
#include "util/events.h"

namespace nxft {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    case DType::U8: case DType::I8: case DType::BOOL: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::U16: return "U16";
    case DType::U32: return "U32";
    case DType::U64: return "U64";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

bool dtype_from_name(const std::string& s, DType* out) {
  static const DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I32, DType::I64, DType::U8,
                              DType::I8,  DType::I16, DType::U16,  DType::U32, DType::U64, DType::BOOL};
  for (DType t : all)
    if (s == dtype_name(t)) { *out = t; return true; }
  return false;
}

DType float_dtype_from_string(const std::string& name, const std::string& context) {
  std::string u = name;
  for (char& ch : u) ch = char((ch >= 'a' && ch <= 'z') ? ch - 'a' + 'A' : ch);
  if (u == "F32" || u == "FLOAT32") return DType::F32;
  if (u == "F16" || u == "FLOAT16") return DType::F16;
  if (u == "BF16" || u == "BFLOAT16") return DType::BF16;
  throw EngineError(context + "unsupported dtype \"" + name + "\" (expected f32, f16 or bf16)");
}

const char* torch_dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::F64: return "float64";
    default: return dtype_name(t);
  }
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;  // ±0
    } else {
      // Subnormal: value = mant · 2^-24. Normalise the mantissa into fp32's implicit-1 form.
      int e = -1;
      do { mant <<= 1; e++; } while ((mant & 0x400u) == 0);
      mant &= 0x3ffu;
      u = sign | (uint32_t(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with the payload kept
  } else {
    u = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN: keep the top payload bits and force quiet
    return uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) {  // >= 65520 (halfway between 65504 and 2^16) rounds to inf; also inf itself
    return uint16_t(sign | 0x7c00u);
  }
  int32_t exp = int32_t(abs >> 23) - 127;  // unbiased fp32 exponent
  if (exp < -25) return sign;              // below half the smallest subnormal (2^-25): rounds to ±0
  if (exp < -14) {
    // Result is subnormal (or rounds up to the smallest normal): value = m · 2^-24 with m = full mantissa >> shift.
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // 24-bit significand, value = mant · 2^(exp-23)
    int shift = -exp - 1;                           // so that result = mant >> (shift) in units of 2^-24
    // units of 2^-24: value / 2^-24 = mant · 2^(exp - 23 + 24) = mant >> (-exp - 1)
    uint32_t q = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return uint16_t(sign | q);  // q may reach 0x400, which is exactly the smallest normal: still correct
  }
  // Normal range: drop 13 mantissa bits with round-to-nearest-even; a carry bumps the exponent correctly.
  uint32_t h = ((uint32_t(exp + 15) << 10) | ((abs >> 13) & 0x3ffu));
  uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return uint16_t(sign | h);
}

void convert_to_f32(const void* src, DType src_type, float* dst, size_t n) {
  switch (src_type) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F16: {
      const uint8_t* p = (const uint8_t*)src;
      for (size_t i = 0; i < n; i++) { uint16_t h; std::memcpy(&h, p + 2 * i, 2); dst[i] = f16_to_f32(h); }
      return;
    }
    case DType::BF16: {
      const uint8_t* p = (const uint8_t*)src;
      for (size_t i = 0; i < n; i++) { uint16_t h; std::memcpy(&h, p + 2 * i, 2); dst[i] = bf16_to_f32(h); }
      return;
    }
    case DType::F64: {
      const uint8_t* p = (const uint8_t*)src;
      for (size_t i = 0; i < n; i++) { double d; std::memcpy(&d, p + 8 * i, 8); dst[i] = float(d); }
      return;
    }
    default:
      throw EngineError(std::string("cannot convert dtype ") + dtype_name(src_type) + " to F32");
  }
}

void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n) {
  switch (dst_type) {
    case DType::F32: std::memcpy(dst, src, n * 4); return;
    case DType::F16: {
      uint8_t* p = (uint8_t*)dst;
      for (size_t i = 0; i < n; i++) { uint16_t h = f32_to_f16(src[i]); std::memcpy(p + 2 * i, &h, 2); }
      return;
    }
    case DType::BF16: {
      uint8_t* p = (uint8_t*)dst;
      for (size_t i = 0; i < n; i++) { uint16_t h = f32_to_bf16(src[i]); std::memcpy(p + 2 * i, &h, 2); }
      return;
    }
    default:
      throw EngineError(std::string("cannot convert F32 to dtype ") + dtype_name(dst_type));
  }
}

}  // namespace nxft
