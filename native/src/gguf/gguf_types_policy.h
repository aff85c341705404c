// gguf_types_policy.h — which ggml type each tensor gets for an export preset, following llama-quantize
// (src/llama-quant.cpp `llama_tensor_get_type_impl` + `tensor_type_fallback`, notes §2.8) and, for shapes
// llama-quantize cannot handle at all, convert_hf_to_gguf.py (fall back to F16).
//
//   preset   file_type  default  special cases
//   f32      0          F32
//   f16      1          F16
//   bf16     32         BF16
//   q8_0     7          Q8_0
//   q4_0     2          Q4_0     output.weight (or token_embd when tied) → Q6_K
//   q4_k_m   15         Q4_K     output/tied token_embd → Q6_K; attn_v and ffn_down → Q6_K in use_more_bits layers
//   q5_k_m   17         Q5_K     same as q4_k_m
//   q6_k     18         Q6_K
// Never quantized (F32): 1-D tensors, *_norm.weight, rope_freqs.weight.
// Row length not a multiple of the block: Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0 (llama-quantize), the
// output tensor → Q8_0, and anything still incompatible (Q8_0, Q4_0 with rows not a multiple of 32) → F16.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "gguf/ggml_types.h"

namespace nxft {

struct GgufPreset {
  std::string name;        // "q4_k_m", …
  uint32_t file_type;      // general.file_type (llama_ftype)
  GgmlType default_type;   // type of an ordinary 2-D weight
};

// Throws EngineError listing the valid names when `name` is unknown.
GgufPreset gguf_preset(const std::string& name);
const std::vector<std::string>& gguf_preset_names();

// llama-quantize's layer selector for extra bits: the first and last eighth, and every third layer between.
bool use_more_bits(int i_layer, int n_layers);

struct TensorTypeChoice {
  GgmlType type;
  std::string fallback_note;   // non-empty when a shape fallback happened (for a warning event)
};

// `name` is the GGUF tensor name, `ne` its ggml shape, `layer` its block index (-1 outside blocks),
// `n_layers` the block count, `tied` whether token_embd doubles as the output (no output.weight).
TensorTypeChoice choose_tensor_type(const GgufPreset& preset, const std::string& name, const std::vector<int64_t>& ne,
                                    int layer, int n_layers, bool tied);

}  // namespace nxft
