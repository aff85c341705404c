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

  // On the CPU backend (ops run in call order, side work included) the bucket is summed right here, inside the
  // backward, exactly when the NCCL collective would start it: so CI's bitwise checks also prove that no gradient
  // of a layer is written after its hook (what the overlap on GPUs relies on). On a stream backend a download
  // from inside the backward could read gradients the side stream is still writing: those sums wait for
  // wait_all(), which the trainer calls after forward_backward has joined the side work.
  void all_reduce_async(const Tensor& t, size_t offset, size_t n) override {
    if (t.dtype != DType::F32) throw EngineError("dist: the cpu collective sums fp32 tensors only (got another dtype)");
    if (n == 0) return;
    pending_.push_back({t, offset, n});
    if (be_.name() == "cpu") wait_all();
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
