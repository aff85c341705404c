// weights.h — the frozen base model in memory, one struct of pointers like llm.c's ParameterTensors.
// On the CPU every tensor is fp32 (converted from F16/BF16 at load); the CUDA backend keeps its own bf16
// copies. Names follow HF: model.layers.{l}.self_attn.q_proj.weight, …
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include "model/config.h"

namespace nxft {

// Every tensor an HF checkpoint of `config` holds, in a fixed order (embed, per layer: norms, q/k/v(+bias),
// o, gate, up, down; final norm; lm_head unless tied), with shapes in PyTorch order.
struct HfTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
};
std::vector<HfTensorSpec> hf_tensor_specs(const ModelConfig& config);

// ModelWeights' tensors by HF name (same order as hf_tensor_specs); pointers into the struct.
struct NamedTensor {
  HfTensorSpec spec;
  const std::vector<float>* data;
};

// Shapes use C = hidden, F = intermediate, NH/NKV heads, HD head_dim, V vocab. Linear weights are [out, in].
struct LayerWeights {
  std::vector<float> attn_norm;    // (C)            input_layernorm.weight
  std::vector<float> wq;           // (NH*HD, C)     self_attn.q_proj.weight
  std::vector<float> wk;           // (NKV*HD, C)    self_attn.k_proj.weight
  std::vector<float> wv;           // (NKV*HD, C)    self_attn.v_proj.weight
  std::vector<float> wo;           // (C, NH*HD)     self_attn.o_proj.weight
  std::vector<float> bq, bk, bv;   // (NH*HD), (NKV*HD), (NKV*HD) — qwen2 only, else empty
  std::vector<float> mlp_norm;     // (C)            post_attention_layernorm.weight
  std::vector<float> w_gate;       // (F, C)         mlp.gate_proj.weight
  std::vector<float> w_up;         // (F, C)         mlp.up_proj.weight
  std::vector<float> w_down;       // (C, F)         mlp.down_proj.weight
};

struct ModelWeights {
  ModelConfig config;
  std::vector<float> embed;        // (V, C)         model.embed_tokens.weight
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;   // (C)            model.norm.weight
  std::vector<float> lm_head;      // (V, C)         lm_head.weight; EMPTY when tied (use embed)
  const float* head() const { return lm_head.empty() ? embed.data() : lm_head.data(); }

  // Load an HF folder (config.json + safetensors). Checks every shape against the config.
  static ModelWeights load(const std::string& dir);
  // Deterministic random init from a config (N(0, 0.02) like transformers' initializer_range, norms = 1,
  // or 0 for gemma's (1+w) norms), from a seed — the demo's tiny base and test models.
  static ModelWeights random_init(const ModelConfig& config, uint64_t seed);
  // Write as an HF folder's model.safetensors (dtype "F32"/"F16"/"BF16", or f32/f16/bf16), names as HF.
  void save_safetensors(const std::string& path, const std::string& dtype_name) const;
  std::vector<NamedTensor> named_tensors() const;
  std::vector<float>* tensor_by_name(const std::string& hf_name);   // nullptr if not part of this model
};

// Names of the seven LoRA-able projections, HF spelling.
extern const char* const kLoraTargets[7];  // q_proj k_proj v_proj o_proj gate_proj up_proj down_proj

}  // namespace nxft
