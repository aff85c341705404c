// weights.cpp — load an HF folder into fp32 ModelWeights (F32/F16/BF16/F64 sources, every shape checked
// against config.json), deterministic random init, and saving as model.safetensors.
#include "model/weights.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "io/safetensors.h"
#include "model/quant4.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/parallel.h"
#include "util/rng.h"

namespace nxft {

const char* const kLoraTargets[7] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

int64_t HfTensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<HfTensorSpec> hf_tensor_specs(const ModelConfig& c) {
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t Q = int64_t(c.num_heads) * c.head_dim, KV = int64_t(c.num_kv_heads) * c.head_dim;
  std::vector<HfTensorSpec> out;
  out.push_back({"model.embed_tokens.weight", {V, C}});
  for (int l = 0; l < c.num_layers; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    out.push_back({p + "input_layernorm.weight", {C}});
    out.push_back({p + "self_attn.q_proj.weight", {Q, C}});
    out.push_back({p + "self_attn.k_proj.weight", {KV, C}});
    out.push_back({p + "self_attn.v_proj.weight", {KV, C}});
    if (c.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {Q}});
      out.push_back({p + "self_attn.k_proj.bias", {KV}});
      out.push_back({p + "self_attn.v_proj.bias", {KV}});
    }
    out.push_back({p + "self_attn.o_proj.weight", {C, Q}});
    out.push_back({p + "post_attention_layernorm.weight", {C}});
    out.push_back({p + "mlp.gate_proj.weight", {F, C}});
    out.push_back({p + "mlp.up_proj.weight", {F, C}});
    out.push_back({p + "mlp.down_proj.weight", {C, F}});
  }
  out.push_back({"model.norm.weight", {C}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {V, C}});
  return out;
}

// Maps an HF name to the vector holding it. Layer tensors are parsed from "model.layers.{l}.{rest}".
std::vector<float>* ModelWeights::tensor_by_name(const std::string& n) {
  if (n == "model.embed_tokens.weight") return &embed;
  if (n == "model.norm.weight") return &final_norm;
  if (n == "lm_head.weight") return config.tie_word_embeddings ? nullptr : &lm_head;
  const std::string pre = "model.layers.";
  if (n.compare(0, pre.size(), pre) != 0) return nullptr;
  size_t dot = n.find('.', pre.size());
  if (dot == std::string::npos) return nullptr;
  std::string num = n.substr(pre.size(), dot - pre.size());
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos) return nullptr;
  int l = std::stoi(num);
  if (l >= int(layers.size())) return nullptr;
  LayerWeights& L = layers[size_t(l)];
  std::string rest = n.substr(dot + 1);
  if (rest == "input_layernorm.weight") return &L.attn_norm;
  if (rest == "self_attn.q_proj.weight") return &L.wq;
  if (rest == "self_attn.k_proj.weight") return &L.wk;
  if (rest == "self_attn.v_proj.weight") return &L.wv;
  if (rest == "self_attn.o_proj.weight") return &L.wo;
  if (config.attention_bias) {
    if (rest == "self_attn.q_proj.bias") return &L.bq;
    if (rest == "self_attn.k_proj.bias") return &L.bk;
    if (rest == "self_attn.v_proj.bias") return &L.bv;
  }
  if (rest == "post_attention_layernorm.weight") return &L.mlp_norm;
  if (rest == "mlp.gate_proj.weight") return &L.w_gate;
  if (rest == "mlp.up_proj.weight") return &L.w_up;
  if (rest == "mlp.down_proj.weight") return &L.w_down;
  return nullptr;
}

std::vector<NamedTensor> ModelWeights::named_tensors() const {
  std::vector<NamedTensor> out;
  ModelWeights* self = const_cast<ModelWeights*>(this);  // tensor_by_name only looks up
  for (auto& spec : hf_tensor_specs(config)) out.push_back({spec, self->tensor_by_name(spec.name)});
  return out;
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

ModelWeights ModelWeights::load(const std::string& dir) {
  ModelWeights w;
  w.config = ModelConfig::load(path_join(dir, "config.json"));
  w.layers.resize(size_t(w.config.num_layers));
  auto st = SafetensorsModel::open_dir(dir);
  auto specs = hf_tensor_specs(w.config);

  // Check names, shapes and dtypes of everything before converting anything. A pre-quantized bitsandbytes
  // checkpoint stores its linear weights 4-bit (model/quant4.h): those are dequantized as bitsandbytes does.
  std::vector<const TensorView*> views;
  std::vector<std::optional<Bnb4bitWeight>> quantized;
  for (const auto& spec : specs) {
    std::optional<Bnb4bitWeight> q = bnb_4bit_weight(*st, spec.name);
    if (q) {
      if (q->shape != spec.shape)
        throw EngineError(q->file + ": tensor " + spec.name + " has shape " + shape_str(q->shape) + " (quant_state) but config.json implies " +
                              shape_str(spec.shape), q->file, spec.name);
      views.push_back(nullptr);
      quantized.push_back(std::move(q));
      continue;
    }
    const TensorView* tv = st->find(spec.name);
    if (!tv) throw EngineError(dir + ": missing tensor " + spec.name + " (expected shape " + shape_str(spec.shape) + " from config.json)", dir, spec.name);
    std::string file = path_join(dir, st->shard_of(spec.name));
    if (tv->shape != spec.shape)
      throw EngineError(file + ": tensor " + spec.name + " has shape " + shape_str(tv->shape) + " but config.json implies " +
                            shape_str(spec.shape), file, spec.name);
    if (tv->dtype != DType::F32 && tv->dtype != DType::F16 && tv->dtype != DType::BF16 && tv->dtype != DType::F64)
      throw EngineError(file + ": tensor " + spec.name + " has dtype " + dtype_name(tv->dtype) + " (expected F32, F16 or BF16)", file, spec.name);
    views.push_back(tv);
    quantized.push_back(std::nullopt);
  }
  // Tensors we do not use: old Llama checkpoints carry rotary_emb.inv_freq buffers (recomputed from the
  // config); a tied checkpoint may also carry a copy of lm_head. Anything else is reported once.
  std::vector<std::string> unused;
  for (const auto& name : st->names()) {
    bool known = std::any_of(specs.begin(), specs.end(), [&](const HfTensorSpec& s) { return s.name == name; });
    if (known) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (is_bnb_aux_tensor(name)) continue;
    if (name == "lm_head.weight" && w.config.tie_word_embeddings) continue;
    unused.push_back(name);
  }
  if (!unused.empty())
    emit_warning(dir + ": " + std::to_string(unused.size()) + " tensor(s) not used by the model, e.g. " + unused[0]);

  std::atomic<size_t> done{0};
  parallel_for(specs.size(), [&](size_t i) {
    std::vector<float>* dst = w.tensor_by_name(specs[i].name);
    dst->resize(size_t(specs[i].numel()));
    if (quantized[i]) bnb_dequantize(*quantized[i], 0, int64_t(dst->size()), dst->data());
    else convert_to_f32(views[i]->data, views[i]->dtype, dst->data(), dst->size());
    done++;
  });
  return w;
}

ModelWeights ModelWeights::random_init(const ModelConfig& config, uint64_t seed) {
  // Matches transformers' _init_weights in distribution (not in values): Linear and Embedding weights
  // ~ N(0, initializer_range), biases 0, RMSNorm weights 1 (0 for Gemma, whose norm multiplies by 1 + w),
  // the padding_idx row of the embedding zeroed. Each tensor draws from its own stream
  // Rng::stream(seed, name) (util/rng.h), so values do not depend on order or thread count.
  ModelWeights w;
  w.config = config;
  w.layers.resize(size_t(config.num_layers));
  auto specs = hf_tensor_specs(config);
  const double std_dev = config.initializer_range;
  parallel_for(specs.size(), [&](size_t i) {
    const HfTensorSpec& spec = specs[i];
    std::vector<float>* dst = w.tensor_by_name(spec.name);
    dst->assign(size_t(spec.numel()), 0.0f);
    const bool is_norm = spec.name.find("norm.weight") != std::string::npos;
    const bool is_bias = spec.name.size() > 5 && spec.name.compare(spec.name.size() - 5, 5, ".bias") == 0;
    if (is_norm) {
      std::fill(dst->begin(), dst->end(), config.norm_plus_one ? 0.0f : 1.0f);
    } else if (!is_bias) {
      Rng rng = Rng::stream(seed, spec.name);
      for (float& v : *dst) v = float(rng.normal(0.0, std_dev));
    }
  });
  if (config.pad_token_id >= 0 && config.pad_token_id < config.vocab_size)
    std::fill(w.embed.begin() + int64_t(config.pad_token_id) * config.hidden_size,
              w.embed.begin() + int64_t(config.pad_token_id + 1) * config.hidden_size, 0.0f);
  return w;
}

void ModelWeights::save_safetensors(const std::string& path, const std::string& dtype_name) const {
  DType dt = float_dtype_from_string(dtype_name, path + ": ");
  std::vector<TensorToWrite> out;
  auto named = named_tensors();
  std::sort(named.begin(), named.end(), [](const NamedTensor& a, const NamedTensor& b) { return a.spec.name < b.spec.name; });
  for (const auto& nt : named) {
    if (int64_t(nt.data->size()) != nt.spec.numel())
      throw EngineError(path + ": tensor " + nt.spec.name + " holds " + std::to_string(nt.data->size()) + " values, expected " +
                            std::to_string(nt.spec.numel()), path, nt.spec.name);
    TensorToWrite t;
    t.name = nt.spec.name;
    t.dtype = dt;
    t.shape = nt.spec.shape;
    t.f32 = nt.data->data();
    out.push_back(t);
  }
  write_safetensors(path, out);
}

}  // namespace nxft
