// select.cpp — picks the backend a job asked for ("auto" | "cpu" | "cuda").
#include "backend/backend.h"
#include "util/events.h"

namespace nxft {

std::unique_ptr<Backend> make_backend(const std::string& which, int threads) {
  if (which == "cpu") return make_cpu_backend(threads);
  if (which == "cuda" || which == "auto") {
#if defined(NXFT_HAVE_CUDA)
    std::unique_ptr<Backend> cuda = make_cuda_backend();
    if (cuda) return cuda;
#endif
    if (which == "cuda")
      throw EngineError("backend \"cuda\" requested but no CUDA device is available (built "
#if defined(NXFT_HAVE_CUDA)
                        "with CUDA"
#else
                        "without CUDA"
#endif
                        ")", "", "backend");
    return make_cpu_backend(threads);
  }
  throw EngineError("unknown backend \"" + which + "\" (expected auto, cpu or cuda)", "", "backend");
}

}  // namespace nxft
