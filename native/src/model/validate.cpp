// validate.cpp — config.json ↔ safetensors agreement and finite weights (see validate.h).
#include "model/validate.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"

namespace nxft {

static std::string shape_text(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// "model.layers.17.mlp.up_proj.weight" → 17, else -1.
static int layer_of(const std::string& name) {
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return -1;
  size_t end = name.find('.', pre.size());
  std::string num = name.substr(pre.size(), end == std::string::npos ? std::string::npos : end - pre.size());
  if (num.empty() || num.size() > 6 || num.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoi(num);
}

void validate_checkpoint(const ModelConfig& config, const SafetensorsModel& st, const std::string& dir) {
  const std::string config_path = path_join(dir, "config.json");
  const std::vector<HfTensorSpec> specs = hf_tensor_specs(config);
  std::set<std::string> used;
  for (const HfTensorSpec& spec : specs) {
    used.insert(spec.name);
    const TensorView* tv = st.find(spec.name);
    if (!tv)
      throw EngineError(config_path + " implies tensor " + spec.name + " " + shape_text(spec.shape) + ", which the weights in " + dir +
                            " do not hold (does config.json belong to these weights?)",
                        config_path, spec.name);
    // A bitsandbytes 4-bit weight is stored packed (its logical shape is in its quant_state; quant4 checks it).
    const bool packed_4bit = st.find(spec.name + ".absmax") != nullptr;
    if (!packed_4bit && tv->shape != spec.shape)
      throw EngineError(config_path + " implies shape " + shape_text(spec.shape) + " for tensor " + spec.name + ", but " +
                            path_join(dir, st.shard_of(spec.name)) + " holds " + shape_text(tv->shape) +
                            " (does config.json belong to these weights?)",
                        config_path, spec.name);
  }
  int max_layer = -1;
  std::string first_unused;
  for (const std::string& name : st.names()) {
    if (used.count(name)) continue;
    if (name.find("rotary_emb.inv_freq") != std::string::npos) continue;     // recomputed from the config
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;    // a tied checkpoint's copy
    // Auxiliary tensors of a used one (quantization state: "<weight>.absmax", "<weight>.quant_state…").
    bool is_aux = false;
    for (size_t dot = name.rfind('.'); dot != std::string::npos && dot > 0 && !is_aux; dot = name.rfind('.', dot - 1))
      is_aux = used.count(name.substr(0, dot)) > 0;
    if (is_aux) continue;
    if (first_unused.empty()) first_unused = name;
    max_layer = std::max(max_layer, layer_of(name));
  }
  if (first_unused.empty()) return;
  if (max_layer >= config.num_layers)
    throw EngineError(config_path + " declares " + std::to_string(config.num_layers) + " layers (num_hidden_layers), but the weights in " +
                          dir + " hold " + std::to_string(max_layer + 1) + ", e.g. tensor " + first_unused + " is not used",
                      config_path, first_unused);
  throw EngineError(config_path + " does not use tensor " + first_unused + " of the weights in " + dir +
                        " (does config.json belong to these weights?)",
                    config_path, first_unused);
}

void check_finite(const float* values, size_t n, const std::string& file, const std::string& name) {
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(values[i]))
      throw EngineError(file + ": tensor " + name + " holds a non-finite value (" + (std::isnan(values[i]) ? "NaN" : "Inf") +
                            " at index " + std::to_string(i) + "); the weights file is damaged or was saved from a diverged run",
                        file, name);
  }
}

}  // namespace nxft
