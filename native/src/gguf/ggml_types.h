// ggml_types.h — the ggml tensor element types a GGUF file of ours can hold, with their block geometry.
// Type ids are ggml's (ggml.h `enum ggml_type`); the file stores them as u32 in each tensor info.
// A quantized row of `n` elements (n a multiple of the block size) is n/block_elems blocks of block_bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace nxft {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
};

constexpr int kQK_K = 256;   // super-block size of the K-quants

int ggml_block_elems(GgmlType t);        // elements per block (1 for F32/F16/BF16)
size_t ggml_block_bytes(GgmlType t);     // bytes per block
const char* ggml_type_name(GgmlType t);  // "F32", "Q4_K", … (ggml's spelling, upper case)
bool ggml_is_quantized(GgmlType t);
// Bytes of one row of `n` elements; throws EngineError when n is not a multiple of the block size.
size_t ggml_row_bytes(GgmlType t, int64_t n);

}  // namespace nxft
