// lora.h — LoRA adapter weights and the PEFT on-disk format (adapter_config.json + adapter_model.safetensors).
// y = W x + scale · B (A x), scale = alpha / r (or alpha / √r with rsLoRA). A: (r, in), B: (out, r).
// PEFT names: base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight (mlp.* for gate/up/down).
// Trainable tokens (PEFT's LoraConfig.trainable_token_indices, used for special tokens a template adds to the
// tokenizer): the listed rows of embed_tokens (and of lm_head when it is not tied) are trained whole and saved as
//   base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta   (K, C)
//   base_model.model.lm_head.token_adapter.trainable_tokens_delta              (K, C)  untied heads only
// holding the rows' values (not differences: PEFT index_copy's them over the base rows). Indices at or beyond the
// base's vocab_size grow the vocabulary: the model has max(vocab_size, max index + 1) rows, the new ones first set
// to the mean of the base's rows (transformers' resize_token_embeddings), then trained.
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
  std::vector<int> token_indices;     // trainable embedding (and untied lm_head) rows, ascending, no repeats
  double scale() const;               // alpha/r or alpha/sqrt(r)
  // Rows of the adapted model's embedding: max(base vocab_size, max token index + 1).
  int vocab_size(const ModelConfig& base) const;
};

// The base config with vocab_size grown to what `spec`'s trainable tokens need (unchanged without them).
ModelConfig with_adapter_vocab(const ModelConfig& base, const LoraSpec& spec);
// Checks trainable token indices (ascending, no repeats, 0 ≤ i < 2^24); `where` prefixes messages.
void check_token_indices(const std::vector<int>& indices, const std::string& where);

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
  // Values of the spec.token_indices rows, (K, C) each: embed_tokens, and lm_head (empty when the head is tied).
  // Empty until trained or loaded: training starts them from the (resized) base rows.
  std::vector<float> embed_rows, head_rows;
  LoraPair* find(int layer, const std::string& target);
  const LoraPair* find(int layer, const std::string& target) const;

  // PEFT default init: A ~ kaiming_uniform(a=√5) = U(-1/√in, 1/√in), B = 0, from `seed` (deterministic).
  static LoraAdapter init(const ModelConfig& cfg, const LoraSpec& spec, uint64_t seed);
  static LoraAdapter load_peft(const std::string& dir, const ModelConfig& cfg);   // validates shapes
  void save_peft(const std::string& dir, const std::string& base_model_name_or_path) const;  // atomic
  static std::string peft_name(int layer, const std::string& target, char which /* 'A' or 'B' */);
};

}  // namespace nxft
