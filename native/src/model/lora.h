// lora.h — LoRA adapter weights and the PEFT on-disk format (adapter_config.json + adapter_model.safetensors).
// y = W x + scale · B (A x), scale = alpha / r (or alpha / √r with rsLoRA). A: (r, in), B: (out, r).
// PEFT names: base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight (mlp.* for gate/up/down).
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "model/config.h"

namespace nxft {

struct LoraSpec {
  int r = 8;
  double alpha = 16;
  double dropout = 0.0;
  bool rslora = false;
  std::vector<std::string> targets;   // subset of kLoraTargets
  double scale() const;               // alpha/r or alpha/sqrt(r)
};

struct LoraPair {
  std::string target;                 // "q_proj", …
  int layer = 0;
  int in = 0, out = 0;
  std::vector<float> A;               // (r, in)
  std::vector<float> B;               // (out, r)
};

struct LoraAdapter {
  LoraSpec spec;
  std::vector<LoraPair> pairs;        // ordered by layer, then kLoraTargets order
  LoraPair* find(int layer, const std::string& target);
  const LoraPair* find(int layer, const std::string& target) const;

  // PEFT default init: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0, from `seed` (deterministic).
  static LoraAdapter init(const ModelConfig& cfg, const LoraSpec& spec, uint64_t seed);
  static LoraAdapter load_peft(const std::string& dir, const ModelConfig& cfg);   // validates shapes
  void save_peft(const std::string& dir, const std::string& base_model_name_or_path) const;  // atomic
  static std::string peft_name(int layer, const std::string& target, char which /* 'A' or 'B' */);
};

}  // namespace nxft
