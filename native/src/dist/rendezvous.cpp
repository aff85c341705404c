// rendezvous.cpp — the TCP star of dist/rendezvous.h (POSIX sockets, poll() for every wait so nothing blocks
// past the timeout).
#include "dist/rendezvous.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>
#include <thread>
#include "util/events.h"
#include "util/fs.h"

namespace nxft {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kHelloMagic = 0x4E584454;   // "NXDT"
constexpr size_t kMaxFingerprint = 4096;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string sys_error(const std::string& what) { return "dist: " + what + ": " + std::strerror(errno); }

EngineError peer_gone(int peer) {
  return EngineError("dist: rank " + std::to_string(peer) + " ended (its connection closed); this rank stops too — " +
                         "the failing rank's own error says why",
                     "", "dist.peer");
}

// Waits until fd is ready for `events`; throws after timeout_s (naming the peer and what we waited for).
void wait_fd(int fd, short events, double timeout_s, int peer, const char* what) {
  const auto t0 = Clock::now();
  for (;;) {
    const double left = timeout_s - seconds_since(t0);
    if (left <= 0)
      throw EngineError("dist: timed out after " + std::to_string(int(timeout_s)) + " s waiting for rank " + std::to_string(peer) +
                            " (" + what + "); raise dist.timeout_s if a step, eval or checkpoint legitimately takes longer",
                        "", "dist.timeout_s");
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, int(std::min(left, 1.0) * 1000) + 1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) throw EngineError(sys_error("poll"));
    if (rc > 0) return;
  }
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Resolves host:port to an IPv4 address.
sockaddr_in resolve(const std::string& host, int port) {
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) throw EngineError("dist: cannot resolve master address \"" + host + "\": " + gai_strerror(rc), "", "dist.master_addr");
  sockaddr_in a = *reinterpret_cast<sockaddr_in*>(res->ai_addr);
  ::freeaddrinfo(res);
  a.sin_port = htons(uint16_t(port));
  return a;
}

struct Hello {
  uint32_t magic, rank, world, fingerprint_bytes;
};

}  // namespace

int& Rendezvous::fd_of(int peer) {
  const size_t i = rank_ == 0 ? size_t(peer) : 0;
  if ((rank_ == 0 && (peer <= 0 || peer >= world_)) || (rank_ != 0 && peer != 0))
    throw EngineError("internal: rank " + std::to_string(rank_) + " has no connection to rank " + std::to_string(peer));
  return fd_[i];
}

Rendezvous::Rendezvous(const DistConfig& cfg, const std::string& fingerprint)
    : rank_(cfg.rank), world_(cfg.world), timeout_s_(cfg.timeout_s) {
  if (fingerprint.size() > kMaxFingerprint) throw EngineError("internal: dist fingerprint too long");
  fd_.assign(rank_ == 0 ? size_t(world_) : 1, -1);
  sent_.assign(fd_.size(), 0);
  received_.assign(fd_.size(), 0);
  if (world_ == 1) return;   // alone: nobody to meet
  const bool by_file = cfg.master_addr.empty();
  if (by_file && cfg.rendezvous_dir.empty())
    throw EngineError("dist: world_size " + std::to_string(world_) + " needs dist.rendezvous (a folder shared by the ranks on one host) "
                      "or dist.master_addr + dist.master_port", "", "dist.rendezvous");
  const std::string addr_file = by_file ? path_join(cfg.rendezvous_dir, "rendezvous.addr") : "";
  const auto t0 = Clock::now();

  if (rank_ == 0) {
    const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) throw EngineError(sys_error("socket"));
    int one = 1;
    ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    if (by_file) {
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = 0;
    } else {
      a = resolve(cfg.master_addr, cfg.master_port);
      a.sin_addr.s_addr = htonl(INADDR_ANY);   // listen on every interface; peers dial master_addr
    }
    if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, world_) != 0) {
      const std::string err = sys_error("cannot listen on port " + std::to_string(ntohs(a.sin_port)));
      ::close(lfd);
      throw EngineError(err, "", by_file ? "dist.rendezvous" : "dist.master_port");
    }
    socklen_t len = sizeof a;
    ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
    if (by_file) write_file_atomic(addr_file, "127.0.0.1 " + std::to_string(ntohs(a.sin_port)) + "\n");
    std::string failure;
    for (int accepted = 0; accepted < world_ - 1 && failure.empty();) {
      const double left = timeout_s_ - seconds_since(t0);
      pollfd p{lfd, POLLIN, 0};
      if (left <= 0) {
        failure = "dist: timed out after " + std::to_string(int(timeout_s_)) + " s: " + std::to_string(accepted) + " of " +
                  std::to_string(world_ - 1) + " ranks joined";
        break;
      }
      const int rc = ::poll(&p, 1, int(std::min(left, 1.0) * 1000) + 1);
      if (rc <= 0) continue;
      const int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      set_nodelay(fd);
      Hello h{};
      std::string fp;
      try {
        wait_fd(fd, POLLIN, timeout_s_, -1, "hello");
        if (::recv(fd, &h, sizeof h, MSG_WAITALL) != ssize_t(sizeof h) || h.magic != kHelloMagic || h.fingerprint_bytes > kMaxFingerprint) {
          ::close(fd);   // not one of ours (a port scanner, a stale client): ignore it
          continue;
        }
        fp.resize(h.fingerprint_bytes);
        if (h.fingerprint_bytes && ::recv(fd, &fp[0], fp.size(), MSG_WAITALL) != ssize_t(fp.size())) {
          ::close(fd);
          continue;
        }
      } catch (const EngineError&) {
        ::close(fd);
        continue;
      }
      if (int(h.world) != world_)
        failure = "dist: rank " + std::to_string(h.rank) + " was started with world_size " + std::to_string(h.world) + ", rank 0 with " + std::to_string(world_);
      else if (h.rank == 0 || int(h.rank) >= world_ || fd_[h.rank] >= 0)
        failure = "dist: two processes claim rank " + std::to_string(h.rank) + " (or it is outside 1…" + std::to_string(world_ - 1) + ")";
      else if (fp != fingerprint)
        failure = "dist: rank " + std::to_string(h.rank) + " runs a different job (" + fp + ") than rank 0 (" + fingerprint + ")";
      if (!failure.empty()) {
        ::close(fd);
        break;
      }
      fd_[h.rank] = fd;
      accepted++;
    }
    ::close(lfd);
    if (!failure.empty()) {
      for (int& fd : fd_) if (fd >= 0) ::close(fd), fd = -1;   // the others see a closed connection and stop
      throw EngineError(failure, "", "dist");
    }
    const char ok[2] = {'o', 'k'};
    for (int r = 1; r < world_; r++) write_all(r, ok, 2);
  } else {
    sockaddr_in a{};
    bool have_addr = false;
    int fd = -1;
    for (;;) {
      if (seconds_since(t0) > timeout_s_)
        throw EngineError("dist: rank " + std::to_string(rank_) + " could not reach rank 0 within " + std::to_string(int(timeout_s_)) +
                              " s (" + (by_file ? "no " + addr_file : cfg.master_addr + ":" + std::to_string(cfg.master_port)) + ")",
                          "", "dist.timeout_s");
      if (!have_addr) {
        if (by_file) {
          if (path_exists(addr_file)) {
            std::istringstream is(read_file(addr_file));
            std::string host;
            int port = 0;
            if (is >> host >> port) a = resolve(host, port), have_addr = true;
          }
        } else {
          a = resolve(cfg.master_addr, cfg.master_port);
          have_addr = true;
        }
      }
      if (have_addr) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw EngineError(sys_error("socket"));
        if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) break;
        ::close(fd);
        fd = -1;
        have_addr = !by_file;   // a file left by an earlier run names a dead port: read it again
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    set_nodelay(fd);
    fd_[0] = fd;
    const Hello h{kHelloMagic, uint32_t(rank_), uint32_t(world_), uint32_t(fingerprint.size())};
    std::string hello(reinterpret_cast<const char*>(&h), sizeof h);
    hello += fingerprint;
    if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != ssize_t(hello.size())) throw peer_gone(0);
    char ok[2];
    read_all(0, ok, 2);
  }
}

Rendezvous::~Rendezvous() {
  for (int fd : fd_)
    if (fd >= 0) ::close(fd);
}

std::vector<int> Rendezvous::sockets() const {
  if (rank_ != 0) return {fd_[0]};
  return std::vector<int>(fd_.begin() + 1, fd_.end());
}

void Rendezvous::write_all(int peer, const void* data, size_t bytes) {
  const int fd = fd_of(peer);
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    wait_fd(fd, POLLOUT, timeout_s_, peer, "sending");
    const ssize_t n = ::send(fd, p, bytes, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) throw peer_gone(peer);
    p += n;
    bytes -= size_t(n);
  }
}

void Rendezvous::read_all(int peer, void* data, size_t bytes) {
  const int fd = fd_of(peer);
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    wait_fd(fd, POLLIN, timeout_s_, peer, "receiving");
    const ssize_t n = ::recv(fd, p, bytes, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) throw peer_gone(peer);
    p += n;
    bytes -= size_t(n);
  }
}

void Rendezvous::send(int peer, const void* data, size_t bytes) {
  uint64_t& seq = sent_[rank_ == 0 ? size_t(peer) : 0];
  const uint64_t header[2] = {seq++, uint64_t(bytes)};
  write_all(peer, header, sizeof header);
  write_all(peer, data, bytes);
}

void Rendezvous::recv(int peer, void* data, size_t bytes) {
  uint64_t& seq = received_[rank_ == 0 ? size_t(peer) : 0];
  uint64_t header[2];
  read_all(peer, header, sizeof header);
  if (header[0] != seq || header[1] != bytes)
    throw EngineError("dist: rank " + std::to_string(peer) + " is out of step (message " + std::to_string(header[0]) + " of " +
                          std::to_string(header[1]) + " bytes, expected message " + std::to_string(seq) + " of " + std::to_string(bytes) + ")",
                      "", "dist");
  seq++;
  read_all(peer, data, bytes);
}

void Rendezvous::broadcast(void* data, size_t bytes) {
  if (rank_ == 0) {
    for (int r = 1; r < world_; r++) send(r, data, bytes);
  } else {
    recv(0, data, bytes);
  }
}

void Rendezvous::barrier() {
  char token = 'b';
  if (rank_ == 0) {
    for (int r = 1; r < world_; r++) recv(r, &token, 1);
    for (int r = 1; r < world_; r++) send(r, &token, 1);
  } else {
    send(0, &token, 1);
    recv(0, &token, 1);
  }
}

}  // namespace nxft
