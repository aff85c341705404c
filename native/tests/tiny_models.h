// tiny_models.h — the tiny models of the whole-model CPU tests (test_gradcheck, test_head_rows, test_keep_mlp_input),
// their LoRA on all seven projections and their batches of rows: one config per
// family (llama: GQA, tied head; qwen2: q/k/v bias, untied head; gemma: embed·√C, RMSNorm (1+w), GeGLU tanh,
// head_dim from config) and random weights with std 0.4 everywhere (norm weights and biases too, so every path
// carries signal).
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "math_test_util.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "util/json.h"

namespace nxft {

inline ModelConfig tiny_config(const std::string& type) {
  std::string j;
  if (type == "llama")
    j = R"({"model_type":"llama","architectures":["LlamaForCausalLM"],"vocab_size":13,"hidden_size":8,
           "intermediate_size":12,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
           "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu"})";
  else if (type == "qwen2")
    j = R"({"model_type":"qwen2","architectures":["Qwen2ForCausalLM"],"vocab_size":13,"hidden_size":8,
           "intermediate_size":12,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
           "rms_norm_eps":1e-6,"rope_theta":1000000.0,"tie_word_embeddings":false,"hidden_act":"silu"})";
  else
    j = R"({"model_type":"gemma","architectures":["GemmaForCausalLM"],"vocab_size":13,"hidden_size":8,
           "intermediate_size":12,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,
           "head_dim":6,"rms_norm_eps":1e-6,"rope_theta":10000.0,"hidden_activation":"gelu_pytorch_tanh"})";
  return ModelConfig::from_json(Json::parse(j), type + "-tiny");
}

inline ModelWeights random_weights(const ModelConfig& c, uint64_t seed) {
  ModelWeights w = ModelWeights::random_init(c, seed);
  mt::Rng rng(seed + 99);
  auto fill = [&](std::vector<float>& v) {
    for (float& x : v) x = float(rng.normal() * 0.4);
  };
  fill(w.embed);
  fill(w.final_norm);
  if (!w.lm_head.empty()) fill(w.lm_head);
  for (LayerWeights& L : w.layers) {
    for (auto* v : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.bq, &L.bk, &L.bv, &L.mlp_norm, &L.w_gate, &L.w_up, &L.w_down})
      fill(*v);
  }
  return w;
}

// LoRA r2 α3 on all seven projections; dropout > 0 takes the unfolded path (per-projection masks).
inline LoraSpec all_targets(double dropout) {
  LoraSpec s;
  s.r = 2;
  s.alpha = 3;
  s.dropout = dropout;
  s.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return s;
}

// A batch of B rows of T tokens, as a token shard holds them (targets -100 = no loss, positions 0 = a document starts).
struct Rows {
  std::vector<int32_t> tokens, targets, positions;
  int B = 0, T = 0;
  Batch batch() const { return Batch{tokens.data(), targets.data(), positions.data(), B, T}; }
  int with_target() const {
    int m = 0;
    for (int32_t t : targets) m += t != -100;
    return m;
  }
};

}  // namespace nxft
