// config.cpp — Hugging Face config.json → ModelConfig for llama, mistral, qwen2 and gemma.
// Defaults follow transformers' config classes (LlamaConfig, MistralConfig, Qwen2Config, GemmaConfig) for
// keys a config.json may omit. Features the engine does not implement (attention/MLP bias on Llama,
// sliding-window attention on Qwen2, partial rotary, yarn/dynamic/longrope scaling) are refused with an
// error naming the field rather than silently computing something else.
#include "model/config.h"

#include <cmath>

#include "util/events.h"
#include "util/fs.h"

namespace nxft {

namespace {

struct Reader {
  const Json& j;
  const std::string& source;

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw EngineError(source + ": " + field + ": " + what, source, field);
  }
  const Json* get(const Json& obj, const std::string& key) const {
    const Json* v = obj.find(key);
    return (v && !v->is_null()) ? v : nullptr;
  }
  int64_t int_of(const Json& v, const std::string& field) const {
    if (!v.is_number() || v.as_number() != std::floor(v.as_number()) || std::fabs(v.as_number()) > 2147483647.0)
      fail(field, "expected an integer, got " + v.dump());
    return int64_t(v.as_number());
  }
  int positive(const std::string& key) const {
    const Json* v = get(j, key);
    if (!v) fail(key, "missing (required)");
    int64_t x = int_of(*v, key);
    if (x <= 0) fail(key, "must be a positive integer, got " + v->dump());
    return int(x);
  }
  int positive_or(const std::string& key, int def) const { return get(j, key) ? positive(key) : def; }
  double number_or(const Json& obj, const std::string& key, double def, const std::string& field) const {
    const Json* v = get(obj, key);
    if (!v) return def;
    if (!v->is_number()) fail(field, "expected a number, got " + v->dump());
    return v->as_number();
  }
  double number_or(const std::string& key, double def) const { return number_or(j, key, def, key); }
  bool bool_or(const std::string& key, bool def) const {
    const Json* v = get(j, key);
    if (!v) return def;
    if (!v->is_bool()) fail(key, "expected true or false, got " + v->dump());
    return v->as_bool();
  }
  std::string string_or(const std::string& key, const std::string& def) const {
    const Json* v = get(j, key);
    if (!v) return def;
    if (!v->is_string()) fail(key, "expected a string, got " + v->dump());
    return v->as_string();
  }
  // A token id: integer, or a list of integers (first one is the primary); -1 when absent.
  int token_id(const std::string& key, std::vector<int>* all = nullptr) const {
    const Json* v = get(j, key);
    if (!v) return -1;
    if (v->is_array()) {
      if (v->size() == 0) return -1;
      int first = -1;
      for (size_t i = 0; i < v->size(); i++) {
        int id = int(int_of(v->as_array()[i], key + "[" + std::to_string(i) + "]"));
        if (i == 0) first = id;
        if (all) all->push_back(id);
      }
      return first;
    }
    int id = int(int_of(*v, key));
    if (all) all->push_back(id);
    return id;
  }
};

}  // namespace

ModelConfig ModelConfig::load(const std::string& config_json_path) {
  Json j;
  try {
    j = Json::parse(read_file(config_json_path), config_json_path);
  } catch (const JsonError& e) {
    throw EngineError(e.what(), config_json_path);
  }
  return from_json(j, config_json_path);
}

ModelConfig ModelConfig::from_json(const Json& j, const std::string& source) {
  if (!j.is_object()) throw EngineError(source + ": config must be a JSON object", source);
  Reader r{j, source};
  ModelConfig c;
  c.raw = j;
  c.model_type = r.string_or("model_type", "");
  if (c.model_type.empty()) r.fail("model_type", "missing (required)");
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" && c.model_type != "gemma")
    r.fail("model_type", "unsupported model type \"" + c.model_type + "\" (supported: llama, mistral, qwen2, gemma)");
  const bool gemma = c.model_type == "gemma";

  if (const Json* a = r.get(j, "architectures")) {
    if (!a->is_array() || a->size() == 0 || !a->as_array()[0].is_string())
      r.fail("architectures", "expected a non-empty array of strings");
    c.architecture = a->as_array()[0].as_string();
  } else {
    static const char* defaults[][2] = {{"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"},
                                        {"qwen2", "Qwen2ForCausalLM"}, {"gemma", "GemmaForCausalLM"}};
    for (auto& d : defaults)
      if (c.model_type == d[0]) c.architecture = d[1];
  }
  if (c.architecture.size() < 11 || c.architecture.compare(c.architecture.size() - 11, 11, "ForCausalLM") != 0)
    r.fail("architectures", "expected a *ForCausalLM architecture, got \"" + c.architecture + "\"");

  c.vocab_size = r.positive("vocab_size");
  c.hidden_size = r.positive("hidden_size");
  c.intermediate_size = r.positive("intermediate_size");
  c.num_layers = r.positive("num_hidden_layers");
  c.num_heads = r.positive("num_attention_heads");
  c.num_kv_heads = r.positive_or("num_key_value_heads", c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_key_value_heads", "num_attention_heads (" + std::to_string(c.num_heads) +
                                      ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  if (r.get(j, "head_dim")) {
    c.head_dim = r.positive("head_dim");
  } else {
    if (c.hidden_size % c.num_heads != 0)
      r.fail("hidden_size", "not divisible by num_attention_heads and no head_dim given");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for rotary embeddings, got " + std::to_string(c.head_dim));

  int default_max_pos = c.model_type == "llama" ? 2048 : (gemma ? 8192 : 32768);
  c.max_position_embeddings = r.positive_or("max_position_embeddings", default_max_pos);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0)) r.fail("rms_norm_eps", "must be positive");
  c.initializer_range = r.number_or("initializer_range", 0.02);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", gemma);

  // Attention and MLP biases.
  if (c.model_type == "qwen2") {
    c.attention_bias = true;  // Qwen2Attention: q/k/v always have a bias, o_proj never (not configurable)
  } else {
    if (r.bool_or("attention_bias", false))
      r.fail("attention_bias", "true is not supported for " + c.model_type + " (q/k/v/o biases)");
    c.attention_bias = false;
  }
  if (r.bool_or("mlp_bias", false)) r.fail("mlp_bias", "true is not supported");
  c.mlp_bias = false;

  // Activation: SwiGLU for the Llama family, GeGLU (tanh approximation) for Gemma. Gemma checkpoints carry a
  // legacy hidden_act "gelu" next to hidden_activation "gelu_pytorch_tanh"; transformers uses the tanh form.
  if (gemma) {
    std::string act = r.string_or("hidden_activation", "");
    std::string field = "hidden_activation";
    if (act.empty()) { act = r.string_or("hidden_act", "gelu_pytorch_tanh"); field = "hidden_act"; }
    if (act == "gelu") act = "gelu_pytorch_tanh";
    if (act != "gelu_pytorch_tanh") r.fail(field, "unsupported activation \"" + act + "\" for gemma (expected gelu_pytorch_tanh)");
    c.hidden_act = act;
    c.norm_plus_one = true;
    c.scale_embeddings = true;
  } else {
    c.hidden_act = r.string_or("hidden_act", "silu");
    if (c.hidden_act != "silu") r.fail("hidden_act", "unsupported activation \"" + c.hidden_act + "\" (expected silu)");
  }

  // Sliding windows: Mistral's (4096 in v0.1) only matters past 4096 tokens; refuse Qwen2's per-layer windows.
  if (c.model_type == "mistral") {
    if (const Json* sw = r.get(j, "sliding_window")) c.sliding_window = int(r.int_of(*sw, "sliding_window"));
  }
  if (c.model_type == "qwen2" && r.bool_or("use_sliding_window", false))
    r.fail("use_sliding_window", "sliding-window attention is not supported");

  // RoPE: rope_theta at the top level (older configs) or inside rope_parameters (transformers ≥ 5); scaling in
  // rope_scaling or rope_parameters, with "type" accepted as an alias of "rope_type".
  c.rope_theta = r.number_or("rope_theta", 10000.0);
  const Json* rp = r.get(j, "rope_parameters");
  std::string rp_field = "rope_parameters";
  const Json* rs = r.get(j, "rope_scaling");
  if (rp && rs) {
    // transformers prefers rope_scaling when both are given (convert_rope_params_to_dict).
    rp = rs;
    rp_field = "rope_scaling";
  } else if (!rp && rs) {
    rp = rs;
    rp_field = "rope_scaling";
  }
  if (rp) {
    if (!rp->is_object()) r.fail(rp_field, "expected an object");
    c.rope_theta = r.number_or(*rp, "rope_theta", c.rope_theta, rp_field + ".rope_theta");
    std::string type;
    if (const Json* t = r.get(*rp, "rope_type")) {
      if (!t->is_string()) r.fail(rp_field + ".rope_type", "expected a string");
      type = t->as_string();
    } else if (const Json* t2 = r.get(*rp, "type")) {
      if (!t2->is_string()) r.fail(rp_field + ".type", "expected a string");
      type = t2->as_string();
    } else {
      type = "default";
    }
    double prf = r.number_or(*rp, "partial_rotary_factor", 1.0, rp_field + ".partial_rotary_factor");
    if (prf != 1.0) r.fail(rp_field + ".partial_rotary_factor", "partial rotary embeddings are not supported");
    if (type == "default") {
      c.rope_scaling.type = "";
    } else if (type == "linear") {
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = r.number_or(*rp, "factor", 0.0, rp_field + ".factor");
      if (!(c.rope_scaling.factor >= 1.0)) r.fail(rp_field + ".factor", "must be a number >= 1");
    } else if (type == "llama3") {
      c.rope_scaling.type = "llama3";
      auto need = [&](const char* key) {
        const Json* v = r.get(*rp, key);
        if (!v || !v->is_number()) r.fail(rp_field + "." + key, "missing or not a number (required for llama3 scaling)");
        return v->as_number();
      };
      c.rope_scaling.factor = need("factor");
      c.rope_scaling.low_freq_factor = need("low_freq_factor");
      c.rope_scaling.high_freq_factor = need("high_freq_factor");
      if (const Json* o = r.get(*rp, "original_max_position_embeddings"))
        c.rope_scaling.original_max_position_embeddings = int(r.int_of(*o, rp_field + ".original_max_position_embeddings"));
      else
        c.rope_scaling.original_max_position_embeddings = c.max_position_embeddings;  // transformers' fallback
      if (!(c.rope_scaling.factor >= 1.0)) r.fail(rp_field + ".factor", "must be >= 1");
      if (!(c.rope_scaling.high_freq_factor > c.rope_scaling.low_freq_factor) || !(c.rope_scaling.low_freq_factor > 0))
        r.fail(rp_field + ".high_freq_factor", "need 0 < low_freq_factor < high_freq_factor");
      if (c.rope_scaling.original_max_position_embeddings <= 0)
        r.fail(rp_field + ".original_max_position_embeddings", "must be positive");
    } else {
      r.fail(rp_field + ".rope_type", "unsupported RoPE scaling type \"" + type + "\" (supported: default, linear, llama3)");
    }
  }
  if (!(c.rope_theta > 0)) r.fail("rope_theta", "must be positive");

  c.bos_token_id = r.token_id("bos_token_id");
  c.eos_token_id = r.token_id("eos_token_id", &c.eos_token_ids);
  c.pad_token_id = r.token_id("pad_token_id");
  c.torch_dtype = r.string_or("torch_dtype", "");
  if (c.torch_dtype.empty()) c.torch_dtype = r.string_or("dtype", "");
  return c;
}

std::vector<double> ModelConfig::rope_inv_freq() const {
  const int d = head_dim;
  std::vector<double> inv(size_t(d / 2));
  for (int i = 0; i < d / 2; i++) inv[size_t(i)] = 1.0 / std::pow(rope_theta, double(2 * i) / double(d));
  if (rope_scaling.type == "linear") {
    for (double& f : inv) f /= rope_scaling.factor;
  } else if (rope_scaling.type == "llama3") {
    const double factor = rope_scaling.factor, lo = rope_scaling.low_freq_factor, hi = rope_scaling.high_freq_factor;
    const double old_ctx = rope_scaling.original_max_position_embeddings;
    const double low_wl = old_ctx / lo, high_wl = old_ctx / hi;
    for (double& f : inv) {
      double wl = 2 * M_PI / f;
      if (wl > low_wl) {
        f = f / factor;  // long wavelengths: interpolate fully
      } else if (wl >= high_wl) {
        double smooth = (old_ctx / wl - lo) / (hi - lo);  // medium band: blend
        f = (1 - smooth) * f / factor + smooth * f;
      }  // short wavelengths: unchanged
    }
  }
  return inv;
}

std::vector<float> ModelConfig::rope_inv_freq_f32() const {
  // Mirrors transformers (modeling_rope_utils.py, _compute_default_rope_parameters / _compute_llama3_parameters):
  //   inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=int64).float() / dim))      # all float32
  // The power is computed here in double and rounded once to float32 (the correctly rounded result); PyTorch's
  // float32 pow is accurate to within 1 ulp, and tests/config_test.cpp checks the results equal transformers'.
  const int d = head_dim;
  const float base = float(rope_theta);
  std::vector<float> inv(size_t(d / 2));
  for (int i = 0; i < d / 2; i++) {
    float e = float(2 * i) / float(d);                       // float32 division
    float p = float(std::pow(double(base), double(e)));      // float32 pow
    inv[size_t(i)] = 1.0f / p;
  }
  if (rope_scaling.type == "linear") {
    const float factor = float(rope_scaling.factor);
    for (float& f : inv) f = f / factor;
  } else if (rope_scaling.type == "llama3") {
    // Python scalars meet float32 tensors: the scalars are rounded to float32 and every op is float32.
    const float factor = float(rope_scaling.factor);
    const float lo = float(rope_scaling.low_freq_factor);
    const float hi_minus_lo = float(rope_scaling.high_freq_factor - rope_scaling.low_freq_factor);  // python floats
    const double old_ctx_d = double(rope_scaling.original_max_position_embeddings);
    const float old_ctx = float(old_ctx_d);
    const float low_wl = float(old_ctx_d / rope_scaling.low_freq_factor);   // python float division, then f32
    const float high_wl = float(old_ctx_d / rope_scaling.high_freq_factor);
    const float two_pi = float(2 * M_PI);
    for (float& f : inv) {
      float wl = two_pi / f;
      float llama = (wl > low_wl) ? f / factor : f;
      float smooth = (old_ctx / wl - lo) / hi_minus_lo;
      float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
      bool medium = !(wl < high_wl) && !(wl > low_wl);
      f = medium ? smoothed : llama;
    }
  }
  return inv;
}

int64_t ModelConfig::num_params() const {
  const int64_t C = hidden_size, F = intermediate_size, V = vocab_size;
  const int64_t q = int64_t(num_heads) * head_dim, kv = int64_t(num_kv_heads) * head_dim;
  int64_t per_layer = 2 * C                       // two norms
                      + q * C + 2 * kv * C + C * q  // q, k, v, o
                      + 3 * F * C;                  // gate, up, down
  if (attention_bias) per_layer += q + 2 * kv;
  int64_t total = V * C + int64_t(num_layers) * per_layer + C;
  if (!tie_word_embeddings) total += V * C;
  return total;
}

}  // namespace nxft
