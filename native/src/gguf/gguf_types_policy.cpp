// gguf_types_policy.cpp — per-tensor type choice for the export presets (see the table in the header).
#include "gguf/gguf_types_policy.h"

#include "util/events.h"

namespace nxft {

const std::vector<std::string>& gguf_preset_names() {
  static const std::vector<std::string> names = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"};
  return names;
}

GgufPreset gguf_preset(const std::string& name) {
  if (name == "f32") return {name, 0, GgmlType::F32};
  if (name == "f16") return {name, 1, GgmlType::F16};
  if (name == "bf16") return {name, 32, GgmlType::BF16};
  if (name == "q8_0") return {name, 7, GgmlType::Q8_0};
  if (name == "q4_0") return {name, 2, GgmlType::Q4_0};
  if (name == "q4_k_m") return {name, 15, GgmlType::Q4_K};
  if (name == "q5_k_m") return {name, 17, GgmlType::Q5_K};
  if (name == "q6_k") return {name, 18, GgmlType::Q6_K};
  std::string list;
  for (const std::string& n : gguf_preset_names()) list += (list.empty() ? "" : ", ") + n;
  throw EngineError("unknown GGUF type \"" + name + "\" (expected one of: " + list + ")");
}

bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

TensorTypeChoice choose_tensor_type(const GgufPreset& preset, const std::string& name, const std::vector<int64_t>& ne,
                                    int layer, int n_layers, bool tied) {
  // Kept in F32 whatever the preset: vectors (norms, biases, rope_freqs) and anything named *_norm.weight.
  if (ne.size() < 2 || name.find("_norm.weight") != std::string::npos || name == "rope_freqs.weight")
    return {GgmlType::F32, ""};
  GgmlType t = preset.default_type;
  if (!ggml_is_quantized(t)) return {t, ""};

  const int64_t ncols = ne[0];
  const bool is_output = name == "output.weight" || (tied && name == "token_embd.weight");
  if (is_output) {
    if (ncols % ggml_block_elems(t) != 0) t = GgmlType::Q8_0;
    else if (t != GgmlType::Q8_0) t = GgmlType::Q6_K;
  } else if (name.find("attn_v.weight") != std::string::npos) {
    if ((preset.name == "q4_k_m" || preset.name == "q5_k_m") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
  } else if (name.find("ffn_down") != std::string::npos) {
    if ((preset.name == "q4_k_m" || preset.name == "q5_k_m") && use_more_bits(layer, n_layers)) t = GgmlType::Q6_K;
  }

  std::string note;
  if (ncols % ggml_block_elems(t) != 0) {
    GgmlType fb;
    switch (t) {
      case GgmlType::Q4_K: fb = GgmlType::Q5_0; break;
      case GgmlType::Q5_K: fb = GgmlType::Q5_1; break;
      case GgmlType::Q6_K: fb = GgmlType::Q8_0; break;
      default: fb = GgmlType::F16; break;   // convert_hf_to_gguf's fallback for Q8_0/Q4_0
    }
    if (ncols % ggml_block_elems(fb) != 0) fb = GgmlType::F16;
    note = name + ": row length " + std::to_string(ncols) + " is not a multiple of " +
           std::to_string(ggml_block_elems(t)) + " (" + ggml_type_name(t) + "), using " + ggml_type_name(fb);
    t = fb;
  }
  return {t, note};
}

}  // namespace nxft
