// parallel.h — a minimal parallel-for for the engine's I/O-side work (loading, converting, merging).
// Threads are started per call (cheap next to the per-tensor work they do here); the first exception thrown by
// any worker is rethrown on the caller's thread after all workers stopped.
#pragma once
#include <cstddef>
#include <functional>

namespace nxft {

// Number of worker threads to use: `requested` if > 0, else the hardware concurrency (at least 1).
int resolve_threads(int requested);

// Calls fn(i) for every i in [0, n), spread over `threads` threads (0 = all cores). Items are handed out one at
// a time in increasing order, so put coarse work in each item.
void parallel_for(size_t n, const std::function<void(size_t)>& fn, int threads = 0);

// Splits [0, n) into contiguous ranges of at least `min_chunk` and calls fn(begin, end) for each in parallel.
void parallel_ranges(size_t n, size_t min_chunk, const std::function<void(size_t, size_t)>& fn, int threads = 0);

}  // namespace nxft
