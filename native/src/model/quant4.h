// quant4.h — 4-bit base weights in bitsandbytes' format: the NF4 / FP4 code tables, NF4 quantization on the host
// (quantize_base "nf4": equal to bitsandbytes' quantize_4bit, multi-threaded, one tensor at a time), and reading
// pre-quantized bitsandbytes checkpoints ("-bnb-4bit" bases: config.json quantization_config with
// quant_method "bitsandbytes", load_in_4bit), dequantized exactly as bitsandbytes does.
//
// bitsandbytes' layout (../shared/notes/native.md §4.2; QuantState.as_dict(packed=True) in bitsandbytes/functional.py):
//   W.weight                               uint8 [(n+1)/2, 1]: element 2k in the high nibble of byte k, 2k+1 low
//   W.weight.absmax                        fp32 [n/blocksize], or uint8 when nested (double quantization)
//   W.weight.quant_map                     fp32 [16]: the code values
//   W.weight.nested_absmax                 fp32 [ceil(blocks/nested_blocksize)]      (nested only)
//   W.weight.nested_quant_map              fp32 [256]: the 8-bit dynamic map           (nested only)
//   W.weight.quant_state.bitsandbytes__nf4 uint8: UTF-8 JSON {quant_type, blocksize, dtype, shape,
//                                          nested_blocksize, nested_dtype, nested_offset} (or __fp4)
// Dequantization: absmax_j = nested_quant_map[absmax_q[j]]·nested_absmax[j / nested_blocksize] + nested_offset
// (fp32; without nesting absmax is stored), then w_i = code[q_i]·absmax[i / blocksize] in fp32, rounded once to a
// dtype (kDequantizeBlockwise's order). Which dtype: bitsandbytes' dequantize_4bit (merge, export: bnb_dequantize
// here) rounds to the quant_state dtype; its gemm_4bit (training) to the input's dtype, i.e. the compute dtype —
// the backends' 4-bit matmul does that (fp32 on CPU, bf16 on CUDA).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>
#include "util/dtype.h"
#include "util/json.h"

namespace nxft {

class SafetensorsModel;

extern const float kNF4Code[16];   // bitsandbytes get_4bit_type("nf4")
extern const float kFP4Code[16];   // bitsandbytes get_4bit_type("fp4"): {0, .0625, 8, 12, 4, 6, 2, 3, −…} / 12

// ---- quantize_base "nf4" ----------------------------------------------------------------------------------
// bitsandbytes quantize_4bit(w, blocksize=64, quant_type="nf4"): absmax_b = max |w| over each 64-block of the
// flattened tensor, x = clamp(w·(1/absmax_b), −1, 1), code = the nearest NF4 value (lowest index on a tie). A
// zero block gets code 7 (0.0; bitsandbytes computes 0·(1/0) = NaN there and picks a code that also dequantizes to
// ±0). packed: (n+1)/2 bytes, absmax: ceil(n/64) floats. Spread over `threads`
// (0 = all cores); the result does not depend on the thread count.
void quantize_nf4(const float* w, size_t n, uint8_t* packed, float* absmax, int threads);

// Double quantization (quantize_4bit(compress_statistics=True), QLoRA's bnb_4bit_use_double_quant): offset =
// mean(absmax), then quantize_blockwise(absmax − offset, blocksize 256) with the signed 8-bit dynamic map:
// absmax2_b = max |x| over each 256-block, q = the nearest map value to clamp(x·(1/absmax2_b), −1, 1) (lowest index on
// a tie: bitsandbytes' torch kernel). The offset is the exact mean rounded to fp32; torch's fp32 mean may differ
// from it in the last bit.
struct NestedAbsmax {
  float offset = 0;
  std::vector<uint8_t> q;        // one per absmax
  std::vector<float> absmax2;    // one per 256 absmax
};
// The offset is summed in double over each 256-block in order, then over the blocks in order: an order the CUDA
// backend reproduces (backend/cuda/nf4.cu), so a weight double-quantized on the device has the same bytes.
// bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted, fp32.
const std::vector<float>& dynamic_map_signed();
NestedAbsmax double_quantize(const float* absmax, size_t n, int threads);
// absmax_j = map[q_j]·absmax2[j/256] + offset in fp32, as bitsandbytes restores it.
void double_dequantize(const NestedAbsmax& nested, float* absmax);
void double_dequantize(const uint8_t* q, const float* absmax2, float offset, size_t n, float* absmax);

// ---- pre-quantized bitsandbytes checkpoints --------------------------------------------------------------
// True when config.json's quantization_config declares a bitsandbytes 4-bit checkpoint. Throws EngineError
// naming the file and field for quantization the engine cannot read (8-bit, other methods).
bool bnb_4bit_config(const Json& config_raw, const std::string& config_path);

// One quantized weight of a checkpoint: its quant state parsed, the codes left in the mmap.
struct Bnb4bitWeight {
  std::string name;                 // the weight's HF name, e.g. model.layers.0.mlp.up_proj.weight
  std::string file;                 // its shard, for errors
  std::vector<int64_t> shape;       // the unquantized shape (quant_state "shape")
  int64_t numel = 0;
  bool fp4 = false;                 // quant_type "fp4" (else "nf4")
  int64_t blocksize = 64;
  DType dtype = DType::F32;         // quant_state "dtype": what bitsandbytes dequantizes to
  bool nested = false;              // double-quantized absmax
  const uint8_t* packed = nullptr;  // (numel+1)/2 bytes
  std::vector<float> absmax;        // fp32 per block, nesting already undone (bitsandbytes' arithmetic)
  // nested only, as stored: 8-bit absmax codes (one per block), the fp32 absmax of each nested block, the offset,
  // the nested block size and whether the stored nested_quant_map is dynamic_map_signed() (then a backend may keep
  // the weight double-quantized: Backend::upload_4bit_nested).
  const uint8_t* absmax_q = nullptr;
  const float* nested_absmax = nullptr;
  float nested_offset = 0;
  int64_t nested_blocksize = 0;
  bool nested_map_is_dynamic = false;
  const float* code() const { return fp4 ? kFP4Code : kNF4Code; }
};

// Tensor names that are parts of a quantized weight (".absmax", ".quant_map", ".nested_absmax",
// ".nested_quant_map", ".quant_state.bitsandbytes__*"): not model tensors of their own.
bool is_bnb_aux_tensor(const std::string& name);
// The quant state of `name` when the checkpoint stores that weight quantized; nullopt for a plain tensor.
// Everything is checked (dtypes, sizes, JSON fields, code table) and errors name the shard and tensor.
std::optional<Bnb4bitWeight> bnb_4bit_weight(const SafetensorsModel& st, const std::string& name);
// out[0..n) = elements [first, first+n) of the weight, dequantized as bitsandbytes does (see the file comment).
void bnb_dequantize(const Bnb4bitWeight& w, int64_t first, int64_t n, float* out);
// fp32 absmax per 64 elements (the engine's NF4 tensors use 64-blocks): a bitsandbytes block of 64·m is m equal
// 64-blocks. Throws for a blocksize that is not a multiple of 64 (bitsandbytes allows 32).
std::vector<float> bnb_absmax_per64(const Bnb4bitWeight& w);
// A config.json for the dequantized model: quantization_config removed, dtype keys untouched.
Json without_quantization_config(const Json& config_raw);

}  // namespace nxft
