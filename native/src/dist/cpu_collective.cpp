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

  // Deferred to wait_all(), which the trainer calls after forward_backward has joined the backend's side work:
  // on a stream backend a download issued from inside the backward could read gradients still being written.
  // The CPU backend overlaps nothing anyway (ops run in call order), so nothing is lost there.
  void all_reduce_async(const Tensor& t, size_t offset, size_t n) override {
    if (t.dtype != DType::F32) throw EngineError("dist: the cpu collective sums fp32 tensors only (got another dtype)");
    if (n > 0) pending_.push_back({t, offset, n});
  }
  void wait_all() override {
    for (const Pending& p : pending_) {   // in issue order, the same on every rank
      buf_.resize(p.n);
      be_.download(p.t, buf_.data(), p.n, p.offset);
      rv_.sum_in_rank_order(buf_.data(), p.n);
      be_.upload(p.t, buf_.data(), p.n, p.offset);
    }
    pending_.clear();
  }
  void all_reduce_host(double* x, size_t n) override { rv_.sum_in_rank_order(x, n); }
  void barrier() override { rv_.barrier(); }

 private:
  Backend& be_;
  Rendezvous rv_;
  struct Pending {
    Tensor t;
    size_t offset, n;
  };
  std::vector<Pending> pending_;
  std::vector<float> buf_;
};

}  // namespace

std::unique_ptr<Collective> make_cpu_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint) {
  return std::make_unique<CpuCollective>(cfg, be, fingerprint);
}

}  // namespace nxft
