// nccl_collective.cpp — the collective of GPU ranks: NCCL all-reduces on a communication stream, overlapped with
// the backward (built only with CUDA + NCCL, see native/CMakeLists.txt NXFT_NCCL_DIR).
//
// - The rendezvous (dist/rendezvous.h) hands rank 0's ncclUniqueId to the others, sums the few host numbers
//   (target counts, losses: exact, rank order) and stays open as a liveness channel: a watchdog thread sees a
//   peer's socket close the moment that process ends.
// - The communicator is non-blocking (ncclConfig_t.blocking = 0): every wait is a host loop that checks
//   ncclCommGetAsyncError, the watchdog and dist.timeout_s, and on any of them calls ncclCommAbort and throws, so
//   one failing rank ends all ranks instead of leaving them spinning in NCCL kernels.
// - NVLink SHARP (multicast objects) stays off: NCCL_NVLS_ENABLE=0 is set in this process before NCCL reads its
//   environment (the machines this runs on forbid cuMulticastCreate).
// - Sums are NCCL's (ring/tree): deterministic for a fixed topology and world size, but not in the cpu
//   collective's rank order, so GPU runs equal one GPU with W-fold accumulation within fp32 rounding, not bitwise.
#include <cuda_runtime.h>
#include <nccl.h>
#include <poll.h>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include "backend/cuda/cuda_backend.h"
#include "dist/collective.h"
#include "dist/rendezvous.h"
#include "util/events.h"

namespace nxft {

namespace {

using Clock = std::chrono::steady_clock;

#define NCCL_CALL(call) nccl_check((call), #call, __FILE__, __LINE__)
#define CUDA_CALL(call) cuda_check((call), #call, __FILE__, __LINE__)

void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw EngineError(std::string("cuda: ") + what + " failed: " + cudaGetErrorString(e) + " (" + file + ":" + std::to_string(line) + ")");
}

class NcclCollective : public Collective {
 public:
  NcclCollective(const DistConfig& cfg, Backend& be, const std::string& fingerprint)
      : Collective(cfg.rank, cfg.world), be_(be), timeout_s_(cfg.timeout_s), rv_(cfg, fingerprint) {
    setenv("NCCL_NVLS_ENABLE", "0", 1);   // before the first NCCL call: NCCL reads its environment once
    ncclUniqueId id{};
    if (rank_ == 0) NCCL_CALL(ncclGetUniqueId(&id));
    rv_.broadcast(&id, sizeof id);
    int lo = 0, hi = 0;
    CUDA_CALL(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    // Highest priority: a gradient bucket's all-reduce should not wait behind the backward's GEMMs.
    CUDA_CALL(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi));
    CUDA_CALL(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    watchdog_ = std::thread([this] { watch_peers(); });
    try {
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;
      NCCL_CALL(ncclCommInitRankConfig(&comm_, world_, id, rank_, &config));
      wait_comm("ncclCommInitRank");
    } catch (...) {   // no destructor runs for a half-built object: stop the watchdog here
      stop_ = true;
      watchdog_.join();
      if (comm_) ncclCommAbort(comm_);
      if (done_) cudaEventDestroy(done_);
      if (stream_) cudaStreamDestroy(stream_);
      throw;
    }
  }

  // The trainer calls barrier() first, so every rank tears down together. Finalize flushes this rank's work
  // (non-blocking: it reports ncclInProgress until done); if it fails or takes longer than a few seconds, abort.
  ~NcclCollective() override {
    stop_ = true;
    if (watchdog_.joinable()) watchdog_.join();
    // Unwinding from an error (this rank failed mid-step): its collectives may never complete, so abort.
    if (std::uncaught_exceptions() > 0) failed_ = true;
    if (comm_ && !failed_) {
      ncclResult_t st = ncclCommFinalize(comm_);
      const auto t0 = Clock::now();
      while (st == ncclInProgress && seconds_since(t0) < 10) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        if (ncclCommGetAsyncError(comm_, &st) != ncclSuccess) break;
      }
      if (st == ncclSuccess) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
    } else if (comm_) {
      ncclCommAbort(comm_);
    }
    if (done_) cudaEventDestroy(done_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return "nccl"; }

  // One bucket: the communication stream waits for the backend's work so far (this layer's gradient GEMMs
  // run on the side stream), then sums the range in place while the backward continues on the layers below.
  void all_reduce_async(const Tensor& t, size_t offset, size_t n) override {
    if (t.dtype != DType::F32) throw EngineError("dist: NCCL all-reduce of a non-fp32 tensor");
    if (n == 0) return;
    check_peers();
    cuda_stream_wait_backend(be_, stream_);
    float* p = static_cast<float*>(t.ptr) + offset;
    NCCL_CALL(ncclAllReduce(p, p, n, ncclFloat32, ncclSum, comm_, stream_));
    wait_comm("ncclAllReduce enqueue");   // non-blocking mode: the enqueue itself may still be in progress
    pending_ = true;
  }

  // The host waits here (not inside a CUDA synchronize, which could never be interrupted) until every bucket is
  // summed, watching NCCL's error state, the peers and the timeout; then the compute stream is ordered after it.
  void wait_all() override {
    if (!pending_) return;
    CUDA_CALL(cudaEventRecord(done_, stream_));
    const auto t0 = Clock::now();
    for (;;) {
      const cudaError_t q = cudaEventQuery(done_);
      if (q == cudaSuccess) break;
      if (q != cudaErrorNotReady) cuda_check(q, "cudaEventQuery(all-reduce done)", __FILE__, __LINE__);
      check_comm("ncclAllReduce");
      check_peers();
      if (seconds_since(t0) > timeout_s_) fail("dist: the gradient all-reduce did not finish within " + std::to_string(int(timeout_s_)) +
                                               " s (a rank is stuck); raise dist.timeout_s if steps legitimately take longer", "dist.timeout_s");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    cuda_backend_wait_stream(be_, stream_);
    pending_ = false;
  }

  void all_reduce_host(double* x, size_t n) override {
    check_peers();
    rv_.sum_in_rank_order(x, n);
  }
  void barrier() override { rv_.barrier(); }

 private:
  static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

  [[noreturn]] void fail(const std::string& message, const std::string& field) {
    failed_ = true;
    if (comm_) {
      ncclCommAbort(comm_);   // frees this rank's NCCL kernels; the other ranks see this process end
      comm_ = nullptr;
    }
    throw EngineError(message, "", field);
  }

  void nccl_check(ncclResult_t r, const char* what, const char* file, int line) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    fail(std::string("nccl: ") + what + " failed: " + ncclGetErrorString(r) + (comm_ ? std::string(" (") + ncclGetLastError(comm_) + ")" : "") +
             " at " + file + ":" + std::to_string(line),
         "dist");
  }

  void check_comm(const char* what) {
    ncclResult_t st = ncclSuccess;
    ncclCommGetAsyncError(comm_, &st);
    if (st != ncclSuccess && st != ncclInProgress)
      fail(std::string("nccl: ") + what + ": " + ncclGetErrorString(st) + " (" + ncclGetLastError(comm_) + ")", "dist");
  }

  // Waits until a non-blocking NCCL call has completed (ncclInProgress → success), or fails.
  void wait_comm(const char* what) {
    const auto t0 = Clock::now();
    for (;;) {
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st == ncclSuccess) return;
      if (st != ncclInProgress) fail(std::string("nccl: ") + what + ": " + ncclGetErrorString(st) + " (" + ncclGetLastError(comm_) + ")", "dist");
      check_peers();
      if (seconds_since(t0) > timeout_s_) fail(std::string("nccl: ") + what + " did not complete within " + std::to_string(int(timeout_s_)) + " s", "dist.timeout_s");
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void check_peers() {
    const int peer = dead_peer_.load();
    if (peer >= 0)
      fail("dist: rank " + std::to_string(peer) + " ended (its connection closed); this rank stops too — the failing rank's own error says why",
           "dist.peer");
  }

  // The watchdog: only a hang-up counts (POLLRDHUP / POLLHUP / POLLERR); data for barrier() is left alone.
  void watch_peers() {
    const std::vector<int> fds = rv_.sockets();
    std::vector<pollfd> p(fds.size());
    while (!stop_ && dead_peer_.load() < 0) {
      for (size_t i = 0; i < fds.size(); i++) p[i] = pollfd{fds[i], POLLRDHUP, 0};
      if (::poll(p.data(), p.size(), 100) <= 0) continue;
      for (size_t i = 0; i < p.size(); i++)
        if (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
          dead_peer_ = rv_.peer_of_socket(int(i));
          break;
        }
    }
  }

  Backend& be_;
  double timeout_s_;
  Rendezvous rv_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  bool pending_ = false, failed_ = false;
  std::thread watchdog_;
  std::atomic<bool> stop_{false};
  std::atomic<int> dead_peer_{-1};
};

}  // namespace

std::unique_ptr<Collective> make_nccl_collective(const DistConfig& cfg, Backend& be, const std::string& fingerprint) {
  return std::make_unique<NcclCollective>(cfg, be, fingerprint);
}

}  // namespace nxft
