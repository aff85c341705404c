// cpu_collective.cpp — the collective for processes on one machine (or a few, over TCP): sums travel over the
// rendezvous sockets to rank 0, which adds them in rank order 0, 1, …, W−1 and sends the result back.
//
// Exactness: rank 0 computes ((x₀ + x₁) + x₂) + … in fp32 (doubles for host values), the same additions a single
// process makes when it accumulates the ranks' micro-batches one after another into a zeroed gradient buffer
// (0 + x₀ = x₀ exactly). So W ranks × B/W rows give bit for bit the adapter of one rank with B/W rows and W-fold
// gradient accumulation (docs/multi-gpu.md "Determinism"). A star is O(W·n) on rank 0: fine for CI's tiny models
// and a few CPU ranks, not meant for large W (the GPU path is NCCL).
#include <memory>
#include <vector>
#include "dist/collective.h"
#include "dist/rendezvous.h"

namespace nxft {

namespace {

class CpuCollective : public Collective {
 public:
  CpuCollective(const DistConfig& cfg, Backend& be, const std::string& fingerprint)
      : Collective(cfg.rank, cfg.world), be_(be), rv_(cfg, fingerprint) {}
  std::string name() const override { return "cpu"; }

  // Synchronous: the CPU backend runs ops in call order, and on a GPU backend download() waits for the work
  // that wrote the range, so the sum is complete when this returns.
  void all_reduce_async(const Tensor& t, size_t offset, size_t n) override {
    if (t.dtype != DType::F32) throw EngineError("dist: the cpu collective sums fp32 tensors only (got another dtype)");
    if (n == 0) return;
    buf_.resize(n);
    be_.download(t, buf_.data(), n, offset);
    sum_in_rank_order(buf_.data(), n, &tmp_);
    be_.upload(t, buf_.data(), n, offset);
  }
  void wait_all() override {}
  void all_reduce_host(double* x, size_t n) override {
    std::vector<double> tmp;
    sum_in_rank_order(x, n, &tmp);
  }
  void barrier() override { rv_.barrier(); }

 private:
  template <typename T>
  void sum_in_rank_order(T* x, size_t n, std::vector<T>* tmp) {
    const size_t bytes = n * sizeof(T);
    if (rank_ == 0) {
      tmp->resize(n);
      for (int r = 1; r < world_; r++) {
        rv_.recv(r, tmp->data(), bytes);
        const T* y = tmp->data();
        for (size_t i = 0; i < n; i++) x[i] += y[i];
      }
      for (int r = 1; r < world_; r++) rv_.send(r, x, bytes);
    } else {
      rv_.send(0, x, bytes);
      rv_.recv(0, x, bytes);
    }
  }

  Backend& be_;
  Rendezvous rv_;
  std::vector<float> buf_, tmp_;
};

}  // namespace

std::unique_ptr<Collective> make_cpu_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint) {
  return std::make_unique<CpuCollective>(cfg, be, fingerprint);
}

}  // namespace nxft
