// parallel.cpp — see parallel.h.
#include "util/parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace nxft {

int resolve_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? int(hc) : 1;
}

void parallel_for(size_t n, const std::function<void(size_t)>& fn, int threads) {
  if (n == 0) return;
  size_t nt = std::min<size_t>(size_t(resolve_threads(threads)), n);
  if (nt <= 1) {
    for (size_t i = 0; i < n; i++) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex err_mu;
  auto worker = [&] {
    while (true) {
      size_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!err) err = std::current_exception();
        next.store(n);  // stop handing out work
      }
    }
  };
  std::vector<std::thread> ts;
  for (size_t t = 1; t < nt; t++) ts.emplace_back(worker);
  worker();
  for (auto& t : ts) t.join();
  if (err) std::rethrow_exception(err);
}

void parallel_ranges(size_t n, size_t min_chunk, const std::function<void(size_t, size_t)>& fn, int threads) {
  if (n == 0) return;
  size_t nt = size_t(resolve_threads(threads));
  size_t chunk = std::max<size_t>(std::max<size_t>(min_chunk, 1), (n + nt * 4 - 1) / (nt * 4));
  size_t pieces = (n + chunk - 1) / chunk;
  parallel_for(pieces, [&](size_t p) { fn(p * chunk, std::min(n, (p + 1) * chunk)); }, threads);
}

}  // namespace nxft
