// thread_pool.h — a tiny fixed-size worker pool for the CPU backend.
// parallel_for(n, fn) runs fn(0..n-1) across the workers and the calling thread and returns when all are done.
// Determinism: tasks are handed out dynamically, but every kernel makes each task own a disjoint part of the
// output and compute it in a fixed order, so results never depend on which thread ran what.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace nxft {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);   // threads <= 0: all cores
  ~ThreadPool();
  int size() const { return n_threads_; }
  void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

 private:
  void worker_loop();
  void run_tasks();
  int n_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;            // workers still inside the current job
  uint64_t generation_ = 0; // bumped for every job so sleeping workers know there is new work
  bool stop_ = false;
};

}  // namespace nxft
