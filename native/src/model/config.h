// config.h — a Hugging Face config.json reduced to what the engine needs, for the Llama family:
// llama (Llama 2, 3, 3.1 rope scaling), mistral, qwen2 (q/k/v bias), gemma (embed × √hidden, RMSNorm (1+w),
// GeGLU tanh, head_dim from config). Unknown model_type, missing or impossible fields → EngineError naming
// config.json and the field.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "util/json.h"

namespace nxft {

struct RopeScaling {
  std::string type;                 // "" (none), "llama3", "linear"
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;           // "llama" | "mistral" | "qwen2" | "gemma"
  std::string architecture;         // architectures[0], e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;              // C
  int intermediate_size = 0;        // F
  int num_layers = 0;               // L
  int num_heads = 0;                // NH
  int num_kv_heads = 0;             // NKV (GQA when < NH)
  int head_dim = 0;                 // HD (from config when given, else C / NH)
  int max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // qwen2: true (q,k,v have bias; o has none)
  bool mlp_bias = false;
  std::string hidden_act = "silu";  // "silu" (SwiGLU) | "gelu_pytorch_tanh" (GeGLU, gemma)
  bool norm_plus_one = false;       // gemma: RMSNorm multiplies by (1 + w)
  bool scale_embeddings = false;    // gemma: hidden = embed · √C (rounded to the activation dtype)
  int bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;   // eos: the first one when config lists several
  std::vector<int> eos_token_ids;   // all eos ids (Llama 3.1 Instruct lists three)
  int sliding_window = 0;           // mistral/qwen2 when enabled; 0 = none (informational: the engine's
                                    // sequences are far shorter than any released window)
  double initializer_range = 0.02;
  std::string torch_dtype;          // as found ("float32", "bfloat16", …)
  Json raw;                         // the whole parsed config.json, to copy and edit on merge

  static ModelConfig load(const std::string& config_json_path);
  static ModelConfig from_json(const Json& j, const std::string& source);
  // RoPE inverse frequencies, length head_dim/2, with linear/llama3 scaling applied (transformers' formula),
  // evaluated in float64: the mathematically intended values.
  std::vector<double> rope_inv_freq() const;
  // The same, evaluated the way transformers does it: every operation in float32, in the same order
  // (base ** (arange(0,d,2)/d) then 1/x, then the llama3 wavelength bands). Use this one for parity with
  // PyTorch: its results equal transformers' inv_freq buffer bit for bit for the configs in tests/config_test.cpp.
  std::vector<float> rope_inv_freq_f32() const;
  // Parameter count of the base model (embeddings, all layers, final norm, lm_head unless tied).
  int64_t num_params() const;
};

}  // namespace nxft
