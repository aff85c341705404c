// schedule.h — learning-rate schedules, exactly transformers' get_{constant,linear,cosine}_schedule_with_warmup
// (LambdaLR multipliers evaluated in double, as Python does):
//   warmup (step < W):  step / max(1, W)
//   constant:           1
//   linear:             max(0, (total − step) / max(1, total − W))
//   cosine:             max(0, 0.5 · (1 + cos(π · 2 · 0.5 · progress))),  progress = (step − W) / max(1, total − W)
// `step` is the 0-based index of the optimizer step about to run (LambdaLR's last_epoch), so the first step uses
// lr · multiplier(0).
#pragma once
#include <cstdint>
#include <string>

namespace nxft {

double lr_multiplier(const std::string& schedule, int64_t step, int64_t warmup_steps, int64_t total_steps);

}  // namespace nxft
