// schedule.cpp — see schedule.h.
#include "train/schedule.h"
#include <algorithm>
#include <cmath>
#include "util/events.h"

namespace nxft {

double lr_multiplier(const std::string& schedule, int64_t step, int64_t warmup, int64_t total) {
  if (schedule == "constant") {
    if (step < warmup) return double(step) / std::max(1.0, double(warmup));
    return 1.0;
  }
  if (step < warmup) return double(step) / double(std::max<int64_t>(1, warmup));
  if (schedule == "linear")
    return std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - warmup)));
  if (schedule == "cosine") {
    const double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
    const double num_cycles = 0.5;
    return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * double(num_cycles) * 2.0 * progress)));
  }
  throw EngineError("unknown schedule \"" + schedule + "\" (expected constant, linear or cosine)", "", "train.schedule");
}

}  // namespace nxft
