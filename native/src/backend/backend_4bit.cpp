// backend_4bit.cpp — Backend::upload_4bit_nested for backends that keep fp32 absmax (the CPU backend): the nested
// absmax is expanded with bitsandbytes' arithmetic (model/quant4.h double_dequantize) and uploaded as usual.
#include <vector>
#include "backend/backend.h"
#include "model/quant4.h"

namespace nxft {

Tensor Backend::upload_4bit_nested(const uint8_t* packed, const uint8_t* absmax_q, const float* absmax2, float offset,
                                   Quant quant, int rows, int cols) {
  const size_t blocks = (size_t(rows) * size_t(cols) + 63) / 64;
  std::vector<float> absmax(blocks);
  double_dequantize(absmax_q, absmax2, offset, blocks, absmax.data());
  return upload_4bit(packed, absmax.data(), quant, rows, cols);
}

}  // namespace nxft
