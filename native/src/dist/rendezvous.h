// rendezvous.h — how the ranks of a data-parallel run find each other: a TCP star around rank 0.
//
// Rank 0 listens (on one host: 127.0.0.1, any free port, and writes "<host> <port>" to <rendezvous_dir>/
// rendezvous.addr atomically; across hosts: master_addr:master_port). Every other rank connects (retrying until
// the timeout) and says hello: rank, world size, fingerprint. Rank 0 refuses a duplicate or out-of-range rank, a
// different world size or fingerprint, and answers "ok" to all once all W−1 have arrived. After that the sockets
// carry framed messages (sequence number + size, so a rank that got out of step is an error, not garbage).
// A closed socket means the peer process ended: an EngineError with field "dist.peer", so a launcher can tell
// "this rank failed" from "this rank stopped because another failed".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>
#include "dist/collective.h"

namespace nxft {

class Rendezvous {
 public:
  Rendezvous(const DistConfig& cfg, const std::string& fingerprint);
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  // Rank 0 talks to peers 1…W−1; every other rank only to peer 0.
  void send(int peer, const void* data, size_t bytes);
  void recv(int peer, void* data, size_t bytes);   // exactly `bytes`, in a message of that size
  void broadcast(void* data, size_t bytes);        // rank 0's bytes to every rank
  void barrier();
  // x ← Σ over ranks of x, added on rank 0 in the order ((x₀ + x₁) + x₂) + … and sent back: exact and the
  // same on every rank.
  template <typename T>
  void sum_in_rank_order(T* x, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (rank_ == 0) {
      scratch_.resize((bytes + sizeof(double) - 1) / sizeof(double));
      const T* y = reinterpret_cast<const T*>(scratch_.data());
      for (int r = 1; r < world_; r++) {
        recv(r, scratch_.data(), bytes);
        for (size_t i = 0; i < n; i++) x[i] += y[i];
      }
      for (int r = 1; r < world_; r++) send(r, x, bytes);
    } else {
      send(0, x, bytes);
      recv(0, x, bytes);
    }
  }
  // The sockets to watch for a peer that dies (rank 0: one per peer; others: the one to rank 0).
  std::vector<int> sockets() const;
  // Which rank a socket of sockets() belongs to.
  int peer_of_socket(int index) const { return rank_ == 0 ? index + 1 : 0; }

 private:
  int rank_, world_;
  double timeout_s_;
  std::vector<int> fd_;          // indexed by peer rank (rank 0: 1…W−1; others: [0])
  std::vector<uint64_t> sent_, received_;   // message sequence numbers per peer
  std::vector<double> scratch_;             // a peer's values while rank 0 adds them (double-aligned)
  int& fd_of(int peer);
  void write_all(int peer, const void* data, size_t bytes);
  void read_all(int peer, void* data, size_t bytes);
};

}  // namespace nxft
