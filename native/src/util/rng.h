// rng.h — a portable, deterministic random number generator. std:: distributions differ between standard
// libraries, so every random number the engine draws comes from here and is bit-identical on every platform.
//
// Generator: splitmix64 (Steele, Lea, Flood 2014): state += 0x9e3779b97f4a7c15, then a 64-bit finalizer.
// uniform(): the top 53 bits of a draw scaled by 2^-53, in [0, 1).
// normal(): Box-Muller, one normal per two uniforms (the cosine branch only, no cached second value, so a
// stream's n-th normal never depends on how earlier values were consumed): √(-2 ln(1-u1)) · cos(2π u2).
// Streams: Rng::stream(seed, key...) derives an independent stream per tensor/pair so results do not depend on
// iteration order or threading: state = mix(mix(seed) ^ fnv1a64(key) ...).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>

namespace nxft {

inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) { h ^= c; h *= 0x100000001b3ULL; }
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  // Independent stream for (seed, key): e.g. Rng::stream(seed, "model.layers.3.mlp.up_proj.weight").
  static Rng stream(uint64_t seed, const std::string& key) {
    return Rng(splitmix64_mix(splitmix64_mix(seed + 0x9e3779b97f4a7c15ULL) ^ fnv1a64(key)));
  }
  uint64_t next_u64() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return splitmix64_mix(state_);
  }
  double uniform() { return double(next_u64() >> 11) * (1.0 / 9007199254740992.0); }   // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(1.0 - u1)) * std::cos(2.0 * M_PI * u2);   // 1-u1 in (0, 1]: log is finite
  }
  double normal(double mean, double std) { return mean + std * normal(); }
  uint64_t below(uint64_t n) {   // uniform integer in [0, n), unbiased (rejection), n > 0
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do { x = next_u64(); } while (x >= limit);
    return x % n;
  }
  uint64_t state() const { return state_; }
 private:
  uint64_t state_;
};

}  // namespace nxft
