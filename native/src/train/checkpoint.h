// checkpoint.h — training checkpoints under <root>/step-N/ (root: the job's checkpoint_dir, else <out>/checkpoints):
//   adapter_config.json + adapter_model.safetensors   the LoRA weights (PEFT format, F32: exact round trip)
//   optimizer.safetensors                            AdamW moments "adam_m", "adam_v" (flat F32, the model's
//                                                    parameter order)
//   trainer_state.json                               {"step", "total_steps", "n_params", "rows_consumed",
//                                                    "fingerprint", "metrics": [lines of metrics.jsonl so far]}
// A checkpoint is written into a temporary folder (.step-N.tmp-<pid>), trainer_state.json last, and renamed into
// place, so step-N either exists complete or not at all; only folders holding trainer_state.json (the completion
// marker) are resumed from, so a kill -9 at any moment never leaves a checkpoint that looks complete but is torn. Everything else a resumed run needs is a pure function of (seed, step): the data order (seeded
// per-epoch shuffle) and the LoRA dropout masks (counter-based RNG) — so resuming is bit-identical.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "model/lora.h"
#include "util/json.h"

namespace nxft {

struct TrainerState {
  int64_t step = 0;              // optimizer steps completed
  int64_t total_steps = 0;
  int64_t n_params = 0;
  int64_t rows_consumed = 0;
  std::string fingerprint;       // settings that must match to resume
  std::vector<std::string> metrics;
};

// Writes <root>/step-<state.step>/ atomically; returns its path.
std::string save_checkpoint(const std::string& root, const LoraAdapter& adapter, const std::string& base_name,
                            const std::vector<float>& adam_m, const std::vector<float>& adam_v, const TrainerState& state);
// Newest complete checkpoint folder under <root>, or "" when there is none.
std::string find_latest_checkpoint(const std::string& root);
// Loads a checkpoint folder (validating sizes against n_params); throws EngineError naming the file.
void load_checkpoint(const std::string& dir, const ModelConfig& cfg, LoraAdapter* adapter, std::vector<float>* adam_m,
                     std::vector<float>* adam_v, TrainerState* state);

}  // namespace nxft
