// math_test_util.h — small helpers shared by the engine-math tests (test_ops, test_gradcheck, test_train, …):
// a check macro that counts failures, a seeded RNG, and host<->backend helpers.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>
#include "backend/backend.h"

namespace mt {

inline int& failures() {
  static int n = 0;
  return n;
}

#define MT_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) {                                           \
      std::fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      std::fprintf(stderr, __VA_ARGS__);                     \
      std::fprintf(stderr, "\n");                            \
      mt::failures()++;                                      \
    }                                                        \
  } while (0)

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0,1)
  double normal() {
    double u1 = uniform() + 1e-300, u2 = uniform();
    return std::sqrt(-2 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  std::vector<double> normals(size_t n, double scale = 1.0) {
    std::vector<double> v(n);
    for (double& x : v) x = normal() * scale;
    return v;
  }
};

inline nxft::Tensor upload(nxft::Backend& be, const std::vector<double>& v, nxft::Role role = nxft::Role::Activation) {
  nxft::Tensor t = be.alloc(v.size(), role);
  be.upload(t, v.data(), v.size());
  return t;
}
inline nxft::Tensor upload_i(nxft::Backend& be, const std::vector<int32_t>& v) {
  nxft::Tensor t = be.alloc(v.size(), nxft::Role::Index);
  be.upload(t, v.data(), v.size());
  return t;
}
inline std::vector<double> download(nxft::Backend& be, const nxft::Tensor& t, size_t n) {
  std::vector<double> v(n);
  be.download(t, v.data(), n);
  return v;
}

// max |a-b| / max(1, |b|) style relative error
inline double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); i++) {
    double d = std::fabs(a[i] - b[i]) / std::max(1e-8, std::max(std::fabs(a[i]), std::fabs(b[i])));
    if (std::fabs(a[i] - b[i]) < 1e-10) d = 0;
    worst = std::max(worst, d);
  }
  return worst;
}

inline int finish(const char* name) {
  if (failures()) {
    std::fprintf(stderr, "%s: %d failure(s)\n", name, failures());
    return 1;
  }
  std::fprintf(stderr, "%s: ok\n", name);
  return 0;
}

}  // namespace mt
