// collective.h — what data-parallel training needs from the other ranks (docs/multi-gpu.md): sums of the LoRA
// gradients and of a few host numbers, in a fixed rank order, and an end to the run when any rank fails.
//
// One process per rank. Ranks meet through a rendezvous (dist/rendezvous.h: a TCP star around rank 0, whose
// address is a file in a shared folder on one host, or MASTER_ADDR:PORT across hosts). Two implementations:
//   cpu   (dist/cpu_collective.cpp): the sums travel over the rendezvous sockets; rank 0 adds the ranks' values
//         in the order 0, 1, …, W−1, so W ranks give exactly the numbers of one rank that accumulates the same
//         micro-batches in that order (CI checks this bit for bit, test/unit/engine-dist.test.ts).
//   nccl  (dist/nccl_collective.cpp, built with CUDA + NCCL): ncclAllReduce on a communication stream; the
//         rendezvous only hands out the NCCL unique id and watches for ranks that die.
// Not: model or tensor parallelism, parameter broadcast (every rank builds the same initial adapter from the
// seed and applies the same update to the same summed gradients, as DDP does).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include "backend/backend.h"
#include "util/job.h"

namespace nxft {

// Who this process is and how to find the others. From the job's "dist" object; the environment fills what the
// job leaves out (a launcher sets the rank per process): NXFT_RANK, NXFT_WORLD_SIZE, NXFT_LOCAL_RANK,
// NXFT_RENDEZVOUS, NXFT_MASTER_ADDR, NXFT_MASTER_PORT, NXFT_DIST_TIMEOUT_S, NXFT_COLLECTIVE.
struct DistConfig {
  int rank = 0, world = 1;
  int local_rank = 0;          // rank on this host: the process with local rank 0 writes this host's outputs
  std::string rendezvous_dir;  // one host: rank 0 writes its address here (a fresh folder per run)
  std::string master_addr;     // several hosts: where rank 0 listens (with master_port)
  int master_port = 0;
  std::string collective = "auto";   // auto (nccl on the CUDA backend when built, else cpu) | cpu | nccl
  double timeout_s = 600;      // a rank waiting longer than this for another ends the run
  // A collective is used with several ranks, or with one when asked for by name (collective "nccl" or "cpu"):
  // bench/multi-gpu.sh runs the NCCL path on a one-GPU machine that way.
  bool enabled() const { return world > 1 || collective != "auto"; }
  bool writes_outputs() const { return local_rank == 0; }   // rank 0 of every host (same bytes on all)
};

// Reads the optional "dist" object of a job (and the environment); world 1 when neither asks for more.
DistConfig read_dist_config(JobReader& job);

class Collective {
 public:
  virtual ~Collective() = default;
  virtual std::string name() const = 0;   // "cpu" | "nccl"
  int rank() const { return rank_; }
  int world() const { return world_; }

  // Starts summing elements [offset, offset+n) of the fp32 tensor `t` over all ranks; every rank ends with the
  // sum in place. Issue it after the backend work that writes the range (it is ordered after all work issued so
  // far, main and side); nothing may read or write the range before wait_all().
  virtual void all_reduce_async(const Tensor& t, size_t offset, size_t n) = 0;
  // Backend work issued after this sees every all-reduce issued before it (a GPU implementation makes the
  // compute stream wait; the host does not block).
  virtual void wait_all() = 0;
  // Sums n host doubles over all ranks in rank order 0, 1, …; blocks. For counts and losses (exact for integers).
  virtual void all_reduce_host(double* x, size_t n) = 0;
  // Returns when every rank has called it.
  virtual void barrier() = 0;

 protected:
  Collective(int rank, int world) : rank_(rank), world_(world) {}
  int rank_, world_;
};

// The collective for `cfg` on `be` (cfg.enabled() must be true). `fingerprint` names what must agree between
// ranks (the job's training settings): a rank started with another job is refused at the rendezvous.
std::unique_ptr<Collective> make_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint);

// Implementations (make_collective picks one).
std::unique_ptr<Collective> make_cpu_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint);
#if defined(NXFT_HAVE_NCCL)
std::unique_ptr<Collective> make_nccl_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint);
#endif

}  // namespace nxft
