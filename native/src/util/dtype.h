// dtype.h — storage element types and exact IEEE conversions (fp16, bf16 <-> fp32).
// Round-to-nearest-even everywhere, matching PyTorch's .to(dtype) so parity checks can be exact.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace nxft {

enum class DType { F32, F16, BF16, F64, I32, I64, U8, I8, I16, U16, U32, U64, BOOL };

size_t dtype_size(DType t);
const char* dtype_name(DType t);                 // safetensors spelling: "F32", "BF16", …
bool dtype_from_name(const std::string& s, DType* out);  // false for unknown names
// A float storage type from a job/config spelling: f32|f16|bf16, F32|F16|BF16, float32|float16|bfloat16.
// Throws EngineError("<context>unsupported dtype …") otherwise.
DType float_dtype_from_string(const std::string& s, const std::string& context = "");
const char* torch_dtype_name(DType t);           // "float32", "float16", "bfloat16" (config.json spelling)

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                         // round to nearest even
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Convert `n` elements of type `src_type` at `src` to fp32 (F32, F16, BF16, F64 supported; throws otherwise).
void convert_to_f32(const void* src, DType src_type, float* dst, size_t n);
// Convert `n` fp32 values to `dst_type` (F32, F16, BF16).
void convert_from_f32(const float* src, void* dst, DType dst_type, size_t n);

}  // namespace nxft
