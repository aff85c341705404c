// validate.h — does a checkpoint folder agree with its config.json, and are its weights finite?
// Called wherever a base model is loaded (train, eval, generate, merge), before any work starts, so a config.json
// that declares two layers fewer than the weights hold fails at once naming config.json and a tensor, instead of
// training a model that ignores half its weights.
#pragma once
#include <cstddef>
#include <string>
#include "io/safetensors.h"
#include "model/config.h"

namespace nxft {

// Every tensor config.json implies must be present with that shape, and every tensor present must be one the
// model uses (allowed extras: rotary_emb.inv_freq buffers, a tied model's copy of lm_head, and auxiliary tensors
// of a used one such as "<name>.absmax" of a quantized checkpoint). EngineError(file = config.json, field =
// tensor) otherwise. `dir` is the checkpoint folder.
void validate_checkpoint(const ModelConfig& config, const SafetensorsModel& st, const std::string& dir);

// The first NaN/Inf of `values` (fp32, converted from `name`) is an EngineError naming the file and the tensor.
void check_finite(const float* values, size_t n, const std::string& file, const std::string& name);

}  // namespace nxft
