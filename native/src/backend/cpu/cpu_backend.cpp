// cpu_backend.cpp — the reference backend: every op of backend.h in plain C++ over a scalar type T
// (float for the engine, double for finite-difference gradient checks), multithreaded with ThreadPool.
// Every output element is computed by exactly one task in a fixed order, so results are deterministic for a
// given thread count (in fact independent of it: the work split never changes the arithmetic order).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>
#include "backend/backend.h"
#include "backend/cpu/thread_pool.h"
#include "model/quant4.h"
#include "util/events.h"

// The kernels below rely on loop vectorization: ask GCC for -O3 here whatever the build type says.
// (Clang vectorizes at -O2 and contracts a*b+c into FMA by default.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#define NXFT_FP_CONTRACT optimize("fp-contract=fast")
#else
#define NXFT_FP_CONTRACT
#endif

namespace nxft {

namespace {

// Element idx of a 4-bit weight (backend.h): code[q]·absmax in fp32, as bitsandbytes dequantizes for an fp32 input.
inline float q4_value(const float* code, const uint8_t* codes, const float* scales, size_t idx) {
  uint8_t byte = codes[idx >> 1];
  int q = (idx & 1) ? (byte & 0xF) : (byte >> 4);   // element 2k in the high nibble
  return code[q] * scales[idx >> 6];
}

// Matmul micro-kernel (register tiled): C_tile (4 × W) += A_panel (4 × kc) · B_panel (kc × W), W = two
// 32-byte vectors (16 floats / 8 doubles). A_panel is packed k-major (a[4k + r]), B_panel row-major (b[W·k + j]).
// Every C element sums over k in increasing order, whatever the tiling or thread split. Compiled twice
// (generic and AVX2) and picked at run time.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = 32 / int(sizeof(T));
};

template <typename T>
inline __attribute__((always_inline)) void mm_micro_body(const T* __restrict a, const T* __restrict b, int kc,
                                                         T* __restrict c, int ldc) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::lanes;
  V c00, c01, c10, c11, c20, c21, c30, c31;
  __builtin_memcpy(&c00, c, sizeof(V));
  __builtin_memcpy(&c01, c + L, sizeof(V));
  __builtin_memcpy(&c10, c + ldc, sizeof(V));
  __builtin_memcpy(&c11, c + ldc + L, sizeof(V));
  __builtin_memcpy(&c20, c + 2 * ldc, sizeof(V));
  __builtin_memcpy(&c21, c + 2 * ldc + L, sizeof(V));
  __builtin_memcpy(&c30, c + 3 * ldc, sizeof(V));
  __builtin_memcpy(&c31, c + 3 * ldc + L, sizeof(V));
  for (int k = 0; k < kc; k++) {
    V b0, b1;
    __builtin_memcpy(&b0, b + size_t(k) * 2 * L, sizeof(V));
    __builtin_memcpy(&b1, b + size_t(k) * 2 * L + L, sizeof(V));
    const T a0 = a[4 * k], a1 = a[4 * k + 1], a2 = a[4 * k + 2], a3 = a[4 * k + 3];
    c00 += a0 * b0;
    c01 += a0 * b1;
    c10 += a1 * b0;
    c11 += a1 * b1;
    c20 += a2 * b0;
    c21 += a2 * b1;
    c30 += a3 * b0;
    c31 += a3 * b1;
  }
  __builtin_memcpy(c, &c00, sizeof(V));
  __builtin_memcpy(c + L, &c01, sizeof(V));
  __builtin_memcpy(c + ldc, &c10, sizeof(V));
  __builtin_memcpy(c + ldc + L, &c11, sizeof(V));
  __builtin_memcpy(c + 2 * ldc, &c20, sizeof(V));
  __builtin_memcpy(c + 2 * ldc + L, &c21, sizeof(V));
  __builtin_memcpy(c + 3 * ldc, &c30, sizeof(V));
  __builtin_memcpy(c + 3 * ldc + L, &c31, sizeof(V));
}

template <typename T>
void mm_micro_generic(const T* a, const T* b, int kc, T* c, int ldc) {
  mm_micro_body<T>(a, b, kc, c, ldc);
}
#if defined(__x86_64__) || defined(__i386__)
// AVX2 + FMA: fused multiply-adds (one rounding per step, as MKL/OpenBLAS kernels do).
template <typename T>
__attribute__((target("avx2,fma"), NXFT_FP_CONTRACT)) void mm_micro_avx2(const T* a, const T* b, int kc,
                                                                                    T* c, int ldc) {
  mm_micro_body<T>(a, b, kc, c, ldc);
}
#else
// Other architectures (arm64, …): the generic kernel; the compiler vectorizes it for the native SIMD width.
template <typename T>
void mm_micro_avx2(const T* a, const T* b, int kc, T* c, int ldc) {
  mm_micro_body<T>(a, b, kc, c, ldc);
}
#endif

// Dot product over n elements with 8 independent partial sums (lane k sums elements ≡ k mod 8, then the lanes
// are added in a fixed order), so the compiler can vectorize it without -ffast-math. Deterministic.
template <typename T>
inline T dot8(const T* __restrict a, const T* __restrict b, int n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
  for (; i < n; i++) acc[i & 7] += a[i] * b[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

template <typename T>
DType dtype_for() {
  return sizeof(T) == 8 ? DType::F64 : DType::F32;
}

template <typename T>
class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}
  ~CpuBackend() override {
    for (auto& kv : allocs_) std::free(kv.first);
  }

  std::string name() const override { return "cpu"; }
  std::string device() const override {
    return std::string("cpu (") + std::to_string(pool_.size()) + " threads, " + (sizeof(T) == 8 ? "f64" : "f32") +
           (cpu_has_avx2() ? ", avx2" : "") + ")";
  }
  int threads() const override { return pool_.size(); }
  DType dtype_of(Role role) const override { return role == Role::Index ? DType::I32 : dtype_for<T>(); }

  Tensor alloc(size_t n, Role role) override {
    Tensor t;
    t.dtype = dtype_of(role);
    t.n = n;
    size_t bytes = std::max<size_t>(64, (n * dtype_size(t.dtype) + 63) / 64 * 64);
    t.ptr = std::aligned_alloc(64, bytes);
    if (!t.ptr) throw EngineError("out of memory allocating " + std::to_string(bytes) + " bytes");
    track_alloc(t.ptr, bytes);
    return t;
  }
  void free(Tensor& t) override {
    if (t.ptr) {
      untrack(t.ptr);
      std::free(t.ptr);
    }
    if (t.scales) {
      untrack(t.scales);
      std::free(t.scales);
    }
    t = Tensor();
  }
  size_t bytes_in_use() const override { return in_use_; }
  size_t peak_bytes() const override { return peak_; }
  void synchronize() override {}
  // Offload staging is ordinary host memory here: the copies run at once (the model's slot logic is the same
  // as on a GPU, so the CPU tests check it).
  void* alloc_host(size_t bytes) override {
    void* p = std::malloc(std::max<size_t>(bytes, 1));
    if (!p) throw EngineError("cpu backend: out of host memory for " + std::to_string(bytes) + " bytes of offload");
    return p;
  }
  void free_host(void* p) override { std::free(p); }
  void to_host_async(void* dst, const Tensor& src, size_t n) override {
    check_range(src, n, 0, "to_host_async");
    std::memcpy(dst, src.ptr, n * dtype_size(src.dtype));
  }
  void from_host_async(const Tensor& dst, const void* src, size_t n) override {
    check_range(dst, n, 0, "from_host_async");
    std::memcpy(dst.ptr, src, n * dtype_size(dst.dtype));
  }
  void wait_transfers() override {}

  // ---- transfers ----
  void upload(const Tensor& dst, const float* src, size_t n, size_t offset) override { upload_any(dst, src, n, offset); }
  void upload(const Tensor& dst, const double* src, size_t n, size_t offset) override { upload_any(dst, src, n, offset); }
  void upload(const Tensor& dst, const int32_t* src, size_t n, size_t offset) override {
    check_range(dst, n, offset, "upload");
    if (dst.dtype != DType::I32) throw EngineError("cpu backend: int32 upload into a non-index tensor");
    std::memcpy(static_cast<int32_t*>(dst.ptr) + offset, src, n * sizeof(int32_t));
  }
  void download(const Tensor& src, float* dst, size_t n, size_t offset) override { download_any(src, dst, n, offset); }
  void download(const Tensor& src, double* dst, size_t n, size_t offset) override { download_any(src, dst, n, offset); }
  void copy(const Tensor& dst, const Tensor& src, size_t n) override {
    check_range(dst, n, 0, "copy");
    check_range(src, n, 0, "copy");
    std::memmove(dst.ptr, src.ptr, n * dtype_size(src.dtype));
  }
  void copy_2d(const Tensor& dst, int ld_dst, const Tensor& src, int ld_src, int rows, int cols) override {
    if (rows == 0 || cols == 0) return;
    if (cols > ld_dst || cols > ld_src) throw EngineError("cpu backend: copy_2d row wider than its pitch");
    check_range(dst, size_t(rows - 1) * ld_dst + cols, 0, "copy_2d dst");
    check_range(src, size_t(rows - 1) * ld_src + cols, 0, "copy_2d src");
    const size_t es = dtype_size(src.dtype);
    for (int i = 0; i < rows; i++)
      std::memmove(static_cast<char*>(dst.ptr) + size_t(i) * ld_dst * es,
                   static_cast<const char*>(src.ptr) + size_t(i) * ld_src * es, size_t(cols) * es);
  }
  void fill(const Tensor& dst, float value, size_t n) override {
    check_range(dst, n, 0, "fill");
    if (dst.dtype == DType::I32) {
      std::fill(static_cast<int32_t*>(dst.ptr), static_cast<int32_t*>(dst.ptr) + n, int32_t(value));
    } else {
      std::fill(p(dst), p(dst) + n, T(value));
    }
  }

  // quantize_base "nf4": bitsandbytes' quantize_4bit on the host, over this backend's threads (model/quant4.h).
  Tensor upload_nf4(const float* w, int rows, int cols, bool double_quant) override {
    const size_t n = size_t(rows) * cols;
    std::vector<uint8_t> packed((n + 1) / 2);
    std::vector<float> absmax((n + 63) / 64);
    quantize_nf4(w, n, packed.data(), absmax.data(), pool_.size());
    if (double_quant) {
      const NestedAbsmax nested = double_quantize(absmax.data(), absmax.size(), int(pool_.size()));
      return upload_4bit_nested(packed.data(), nested.q.data(), nested.absmax2.data(), nested.offset, Quant::NF4, rows, cols);
    }
    return upload_4bit(packed.data(), absmax.data(), Quant::NF4, rows, cols);
  }

  Tensor upload_4bit(const uint8_t* packed, const float* absmax64, Quant quant, int rows, int cols) override {
    if (quant == Quant::None) throw EngineError("internal: upload_4bit without a 4-bit type");
    const size_t n = size_t(rows) * cols, nblocks = (n + 63) / 64;
    Tensor t;
    t.dtype = DType::U8;
    t.n = n;
    t.quant = quant;
    const size_t code_bytes = std::max<size_t>(64, ((n + 1) / 2 + 63) / 64 * 64);
    const size_t scale_bytes = std::max<size_t>(64, (nblocks * 4 + 63) / 64 * 64);
    t.ptr = std::aligned_alloc(64, code_bytes);
    t.scales = std::aligned_alloc(64, scale_bytes);
    if (!t.ptr || !t.scales) throw EngineError("out of memory for a 4-bit weight");
    track_alloc(t.ptr, code_bytes);
    track_alloc(t.scales, scale_bytes);
    std::memcpy(t.ptr, packed, (n + 1) / 2);
    std::memcpy(t.scales, absmax64, nblocks * 4);
    return t;
  }

  // ---- matmul ----
  // Work split: tasks are (row block of MB) × (column block of NB) tiles of C; each task sweeps all of K in
  // blocks of KB, packing op(A) into 4-row k-major panels and op(B) into W-column panels (zero padded to full
  // panels), accumulating in a tile buffer with the register-tiled micro-kernel, then writes
  // C = alpha·acc + beta·C once.
  void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K,
                 bool trans_a, bool trans_b, float alpha, float beta, int lda, int ldb, int ldd) override {
    const MatmulLayout lay = matmul_layout(M, N, K, trans_a, trans_b, lda, ldb, ldd);
    if (!lay.ok) throw EngineError("cpu backend: matmul leading dimension too small");
    lda = lay.lda, ldb = lay.ldb, ldd = lay.ldd;
    check_range(d, lay.span_d, 0, "matmul D");
    if (beta != 0.0f) check_range(c, lay.span_d, 0, "matmul C");
    check_range(a, lay.span_a, 0, "matmul A");
    const bool b_nf4 = b.quant != Quant::None;   // NF4 or FP4
    if (b_nf4 && ldb != lay.b_cols) throw EngineError("cpu backend: a 4-bit matmul operand must be packed");
    check_range(b, b_nf4 ? size_t(K) * N : lay.span_b, 0, "matmul B");
    if (M <= 4 && !trans_a && trans_b && !b_nf4) {
      gemv_rows(d, c, a, b, M, N, K, alpha, beta, lda, ldb, ldd);   // decode: y = x·Wᵀ for a few tokens, no packing
      return;
    }
    constexpr int W = 2 * Vec<T>::lanes;   // micro-tile width
    constexpr int MB = 128, NB = 8 * W, KB = 256;
    T* D = p(d);
    const T* Cin = beta != 0.0f ? p(c) : nullptr;
    const T* A = p(a);
    const T* Bm = b_nf4 ? nullptr : p(b);
    const uint8_t* Bcodes = b_nf4 ? static_cast<const uint8_t*>(b.ptr) : nullptr;
    const float* Bscales = b_nf4 ? static_cast<const float*>(b.scales) : nullptr;
    const float* Bcode = b.quant == Quant::FP4 ? kFP4Code : kNF4Code;
    const int mblocks = (M + MB - 1) / MB, nblocks = (N + NB - 1) / NB;
    const bool avx2 = cpu_has_avx2();
    pool_.parallel_for(int64_t(mblocks) * nblocks, [&](int64_t task) {
      const int i0 = int(task / nblocks) * MB, j0 = int(task % nblocks) * NB;
      const int mc = std::min(MB, M - i0), nc = std::min(NB, N - j0);
      const int mcp = (mc + 3) / 4 * 4, ncp = (nc + W - 1) / W * W;   // padded to whole micro-tiles
      thread_local std::vector<T> acc, apack, bpack;
      acc.assign(size_t(mcp) * ncp, T(0));
      apack.resize(size_t(MB) * KB);
      bpack.resize(size_t(KB) * NB);
      for (int k0 = 0; k0 < K; k0 += KB) {
        const int kc = std::min(KB, K - k0);
        // op(A)[i0:i0+mc, k0:k0+kc] → panels of 4 rows, k-major: apack[(i/4)·4kc + 4k + i%4]
        for (int i = 0; i < mcp; i++) {
          T* dst = apack.data() + size_t(i / 4) * 4 * kc + (i % 4);
          if (i >= mc) {
            for (int k = 0; k < kc; k++) dst[4 * k] = T(0);
          } else if (trans_a) {
            for (int k = 0; k < kc; k++) dst[4 * k] = A[size_t(k0 + k) * lda + (i0 + i)];
          } else {
            const T* src = A + size_t(i0 + i) * lda + k0;
            for (int k = 0; k < kc; k++) dst[4 * k] = src[k];
          }
        }
        // op(B)[k0:k0+kc, j0:j0+nc] → panels of W columns: bpack[(j/W)·W·kc + W·k + j%W]
        for (int jp = 0; jp < ncp; jp += W) {
          T* panel = bpack.data() + size_t(jp) * kc;
          const int w = std::min(W, nc - jp);   // real columns in this panel; the rest are zero padding
          if (w < W)
            for (int k = 0; k < kc; k++)
              for (int jj = w; jj < W; jj++) panel[size_t(k) * W + jj] = T(0);
          if (b_nf4) {
            for (int k = 0; k < kc; k++)
              for (int jj = 0; jj < w; jj++) {
                const int j = j0 + jp + jj;
                const size_t idx = trans_b ? size_t(j) * K + (k0 + k) : size_t(k0 + k) * N + j;
                panel[size_t(k) * W + jj] = T(q4_value(Bcode, Bcodes, Bscales, idx));
              }
          } else if (trans_b) {   // B stored (N, K): column j of op(B) is row j of B, contiguous in k
            for (int jj = 0; jj < w; jj++) {
              const T* src = Bm + size_t(j0 + jp + jj) * ldb + k0;
              for (int k = 0; k < kc; k++) panel[size_t(k) * W + jj] = src[k];
            }
          } else {                // B stored (K, N): rows are contiguous in j
            for (int k = 0; k < kc; k++) {
              const T* src = Bm + size_t(k0 + k) * ldb + j0 + jp;
              T* dst = panel + size_t(k) * W;
              for (int jj = 0; jj < w; jj++) dst[jj] = src[jj];
            }
          }
        }
        for (int i = 0; i < mcp; i += 4)
          for (int jp = 0; jp < ncp; jp += W) {
            const T* ap = apack.data() + size_t(i) * kc;
            const T* bp = bpack.data() + size_t(jp) * kc;
            T* cp = acc.data() + size_t(i) * ncp + jp;
            if (avx2)
              mm_micro_avx2<T>(ap, bp, kc, cp, ncp);
            else
              mm_micro_generic<T>(ap, bp, kc, cp, ncp);
          }
      }
      const T ta = T(alpha), tb = T(beta);
      const int mode = (alpha == 1.0f ? 0 : 1) + (beta == 0.0f ? 0 : beta == 1.0f ? 2 : 4);
      for (int i = 0; i < mc; i++) {
        T* drow = D + size_t(i0 + i) * ldd + j0;
        const T* crow = Cin ? Cin + size_t(i0 + i) * ldd + j0 : nullptr;   // may equal drow (in place)
        const T* __restrict arow = acc.data() + size_t(i) * ncp;
        switch (mode) {
          case 0: for (int j = 0; j < nc; j++) drow[j] = arow[j]; break;
          case 1: for (int j = 0; j < nc; j++) drow[j] = ta * arow[j]; break;
          case 2: for (int j = 0; j < nc; j++) drow[j] = arow[j] + crow[j]; break;
          case 3: for (int j = 0; j < nc; j++) drow[j] = ta * arow[j] + crow[j]; break;
          case 4: for (int j = 0; j < nc; j++) drow[j] = arow[j] + tb * crow[j]; break;
          default: for (int j = 0; j < nc; j++) drow[j] = ta * arow[j] + tb * crow[j]; break;
        }
      }
    });
  }

  static bool b_nf4_of(const Tensor& b) { return b.quant != Quant::None; }
  // C (M,N) = alpha·A·Bᵀ + beta·C for M ≤ 4 with B stored (N,K): one dot product per output, rows of B read once
  // (memory-bound generation steps; the tiled path would repack all of B for a single token).
  void gemv_rows(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K, float alpha,
                 float beta, int lda, int ldb, int ldd) {
    T* D = p(d);
    const T* Cin = beta != 0.0f ? p(c) : nullptr;
    const T* A = p(a);
    const T* Bm = p(b);
    constexpr int NB = 64;
    const T ta = T(alpha), tb = T(beta);
    pool_.parallel_for((N + NB - 1) / NB, [&](int64_t task) {
      for (int j = int(task) * NB, je = std::min(N, int(task + 1) * NB); j < je; j++) {
        const T* brow = Bm + size_t(j) * ldb;
        for (int i = 0; i < M; i++) {
          const T dot = dot8(A + size_t(i) * lda, brow, K);
          const size_t at = size_t(i) * ldd + j;
          D[at] = (alpha == 1.0f ? dot : ta * dot) + (beta == 0.0f ? T(0) : tb * Cin[at]);
        }
      }
    });
  }

  // ---- embedding ----
  void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, int N, int C,
                         double scale) override {
    T* o = p(out);
    const int32_t* id = static_cast<const int32_t*>(ids.ptr);
    const T* tab = p(table);
    const T s = T(scale);   // rounded to the activation dtype, as transformers does for gemma
    parallel_rows(N, [&](int i) {
      const T* src = tab + size_t(id[i]) * C;
      T* dst = o + size_t(i) * C;
      if (scale == 1.0)
        std::memcpy(dst, src, sizeof(T) * C);
      else
        for (int c = 0; c < C; c++) dst[c] = src[c] * s;
    });
  }

  // ---- rmsnorm ----
  void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, int N, int C,
                       double eps, bool plus_one, int ld_out) override {
    if (ld_out == 0) ld_out = C;
    check_range(out, N == 0 ? 0 : size_t(N - 1) * ld_out + C, 0, "rmsnorm out");
    T* o = p(out);
    T* rs = p(rstd);
    const T* xx = p(x);
    const T* ww = p(w);
    parallel_rows(N, [&](int i) {
      const T* xr = xx + size_t(i) * C;
      double ss = 0;
      for (int c = 0; c < C; c++) ss += double(xr[c]) * double(xr[c]);
      const T var = T(ss / C);
      const T r = T(1) / std::sqrt(var + T(eps));
      rs[i] = r;
      T* orow = o + size_t(i) * ld_out;
      for (int c = 0; c < C; c++) orow[c] = plus_one ? (xr[c] * r) * (T(1) + ww[c]) : ww[c] * (xr[c] * r);
    });
  }
  void rmsnorm_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        int N, int C, bool plus_one, int ld_dx) override {
    if (ld_dx == 0) ld_dx = C;
    check_range(dx, N == 0 ? 0 : size_t(N - 1) * ld_dx + C, 0, "rmsnorm dx");
    T* d = p(dx);
    const T* go = p(dout);
    const T* xx = p(x);
    const T* ww = p(w);
    const T* rs = p(rstd);
    parallel_rows(N, [&](int i) {
      const T* xr = xx + size_t(i) * C;
      const T* gr = go + size_t(i) * C;
      T* dr = d + size_t(i) * ld_dx;
      const T r = rs[i];
      // y = w'·x·r, r = (mean(x²)+eps)^-1/2 → dx = r·g − x·r³·Σ(g·x)/C with g = dout·w'
      double dot = 0;
      for (int c = 0; c < C; c++) dot += double(gr[c] * (plus_one ? T(1) + ww[c] : ww[c])) * double(xr[c]);
      const T k = T(dot / C) * r * r * r;
      for (int c = 0; c < C; c++) {
        const T g = gr[c] * (plus_one ? T(1) + ww[c] : ww[c]);
        dr[c] += g * r - xr[c] * k;
      }
    });
  }

  // ---- elementwise ----
  void add(const Tensor& y, const Tensor& x, size_t n, float alpha) override {
    T* yy = p(y);
    const T* xx = p(x);
    const T a = T(alpha);
    parallel_range(n, [&](size_t b, size_t e) {
      if (alpha == 1.0f)
        for (size_t i = b; i < e; i++) yy[i] += xx[i];
      else
        for (size_t i = b; i < e; i++) yy[i] += a * xx[i];
    });
  }
  void add_bias(const Tensor& y, const Tensor& bias, int N, int D) override {
    T* yy = p(y);
    const T* bb = p(bias);
    parallel_rows(N, [&](int i) {
      T* r = yy + size_t(i) * D;
      for (int d = 0; d < D; d++) r[d] += bb[d];
    });
  }
  void scale(const Tensor& y, float s, size_t n) override {
    T* yy = p(y);
    const T ts = T(s);
    parallel_range(n, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; i++) yy[i] *= ts;
    });
  }

  // ---- rope ----
  void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, int N, int H, int HD,
                    int ld) override {
    rope_apply(x, positions, inv_freq, N, H, HD, ld, false);
  }
  void rope_backward(const Tensor& dx, const Tensor& positions, const Tensor& inv_freq, int N, int H, int HD,
                     int ld) override {
    rope_apply(dx, positions, inv_freq, N, H, HD, ld, true);
  }

  // ---- attention ----
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH, int NKV,
                         int HD, const AttnPitch& pitch) override {
    const size_t ldq = pitch.q ? pitch.q : NH * HD, ldkv = pitch.kv ? pitch.kv : NKV * HD,
                 ldo = pitch.out ? pitch.out : NH * HD;
    check_range(q, size_t(B) * Tq == 0 ? 0 : (size_t(B) * Tq - 1) * ldq + size_t(NH) * HD, 0, "attention q");
    check_range(k, size_t(B) * Tk_stride == 0 ? 0 : (size_t(B) * Tk_stride - 1) * ldkv + size_t(NKV) * HD, 0,
                "attention k");
    check_range(out, size_t(B) * Tq == 0 ? 0 : (size_t(B) * Tq - 1) * ldo + size_t(NH) * HD, 0, "attention out");
    T* o = p(out);
    T* ls = p(lse);
    const T* qq = p(q);
    const T* kk = p(k);
    const T* vv = p(v);
    const int32_t* ds = static_cast<const int32_t*>(doc_start.ptr);
    const T sc = T(1.0 / std::sqrt(double(HD)));
    const int group = NH / NKV;
    pool_.parallel_for(int64_t(B) * NH, [&](int64_t task) {
      const int b = int(task / NH), h = int(task % NH), kh = h / group;
      thread_local std::vector<T> s;
      s.resize(size_t(Tk));
      for (int i = 0; i < Tq; i++) {
        const T* qi = qq + (size_t(b) * Tq + i) * ldq + size_t(h) * HD;
        const int j0 = ds[size_t(b) * Tq + i], j1 = q_offset + i;   // keys j0..j1 inclusive
        T mx = -std::numeric_limits<T>::infinity();
        for (int j = j0; j <= j1; j++) {
          const T* kj = kk + (size_t(b) * Tk_stride + j) * ldkv + size_t(kh) * HD;
          s[j] = dot8(qi, kj, HD) * sc;
          mx = std::max(mx, s[j]);
        }
        T sum = 0;
        for (int j = j0; j <= j1; j++) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        T* oi = o + (size_t(b) * Tq + i) * ldo + size_t(h) * HD;
        for (int d = 0; d < HD; d++) oi[d] = 0;
        for (int j = j0; j <= j1; j++) {
          const T pj = s[j] / sum;
          const T* vj = vv + (size_t(b) * Tk_stride + j) * ldkv + size_t(kh) * HD;
          for (int d = 0; d < HD; d++) oi[d] += pj * vj[d];
        }
        ls[(size_t(b) * NH + h) * Tq + i] = mx + std::log(sum);
      }
    });
  }

  void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& doc_start, int B, int T_, int NH, int NKV, int HD,
                          const AttnPitch& pitch) override {
    const size_t qd = size_t(NH) * HD, kvd = size_t(NKV) * HD;
    const size_t ldq = pitch.q ? pitch.q : qd, ldkv = pitch.kv ? pitch.kv : kvd, ldo = pitch.out ? pitch.out : qd,
                 lddo = pitch.dout ? pitch.dout : qd, lddq = pitch.dq ? pitch.dq : qd,
                 lddkv = pitch.dkv ? pitch.dkv : kvd;
    const size_t rows = size_t(B) * T_;
    auto span = [&](size_t ld, size_t w) { return rows == 0 ? 0 : (rows - 1) * ld + w; };
    check_range(dq, span(lddq, qd), 0, "attention dq");
    check_range(dk, span(lddkv, kvd), 0, "attention dk");
    check_range(dv, span(lddkv, kvd), 0, "attention dv");
    check_range(dout, span(lddo, qd), 0, "attention dout");
    T* gq = p(dq);
    T* gk = p(dk);
    T* gv = p(dv);
    const T* go = p(dout);
    const T* qq = p(q);
    const T* kk = p(k);
    const T* vv = p(v);
    const T* oo = p(out);
    const T* ls = p(lse);
    const int32_t* ds = static_cast<const int32_t*>(doc_start.ptr);
    const T sc = T(1.0 / std::sqrt(double(HD)));
    const int group = NH / NKV;
    // One task per (batch row, kv head): it owns dk/dv of that kv head and dq of its query heads.
    pool_.parallel_for(int64_t(B) * NKV, [&](int64_t task) {
      const int b = int(task / NKV), kh = int(task % NKV);
      for (int j = 0; j < T_; j++) {
        std::fill_n(gk + (size_t(b) * T_ + j) * lddkv + size_t(kh) * HD, HD, T(0));
        std::fill_n(gv + (size_t(b) * T_ + j) * lddkv + size_t(kh) * HD, HD, T(0));
      }
      thread_local std::vector<T> pr, dpr;
      pr.resize(size_t(T_));
      dpr.resize(size_t(T_));
      for (int h = kh * group; h < (kh + 1) * group; h++) {
        for (int i = 0; i < T_; i++) {
          const size_t row = size_t(b) * T_ + i, hoff = size_t(h) * HD;
          const T* qi = qq + row * ldq + hoff;
          const T* doi = go + row * lddo + hoff;
          const T* oi = oo + row * ldo + hoff;
          T* dqi = gq + row * lddq + hoff;
          const T l = ls[(size_t(b) * NH + h) * T_ + i];
          const int j0 = ds[size_t(b) * T_ + i], j1 = i;
          T Di = 0;   // rowsum(dO ∘ O)
          for (int d = 0; d < HD; d++) Di += doi[d] * oi[d];
          for (int d = 0; d < HD; d++) dqi[d] = 0;
          for (int j = j0; j <= j1; j++) {
            const size_t krow = size_t(b) * T_ + j, kvoff = size_t(kh) * HD;
            const T* kj = kk + krow * ldkv + kvoff;
            const T* vj = vv + krow * ldkv + kvoff;
            const T dot = dot8(qi, kj, HD), dp = dot8(doi, vj, HD);
            const T pj = std::exp(dot * sc - l);
            const T dsj = pj * (dp - Di) * sc;
            T* dkj = gk + krow * lddkv + kvoff;
            T* dvj = gv + krow * lddkv + kvoff;
            for (int d = 0; d < HD; d++) {
              dqi[d] += dsj * kj[d];
              dkj[d] += dsj * qi[d];
              dvj[d] += pj * doi[d];
            }
          }
        }
      }
    });
  }

  // ---- gated MLP ----
  void glu_forward(const Tensor& out, const Tensor& gate, const Tensor& up, int N, int F, Glu act, int ld_out,
                   int ld_in) override {
    if (ld_out == 0) ld_out = F;
    if (ld_in == 0) ld_in = F;
    check_range(gate, N == 0 ? 0 : size_t(N - 1) * ld_in + F, 0, "glu gate");
    check_range(up, N == 0 ? 0 : size_t(N - 1) * ld_in + F, 0, "glu up");
    check_range(out, N == 0 ? 0 : size_t(N - 1) * ld_out + F, 0, "glu out");
    T* o = p(out);
    const T* g = p(gate);
    const T* u = p(up);
    parallel_rows(N, [&](int r) {
      const size_t in0 = size_t(r) * ld_in, out0 = size_t(r) * ld_out;
      for (int j = 0; j < F; j++) o[out0 + j] = act_fn(g[in0 + j], act) * u[in0 + j];
    });
  }

  void write_column_blocks(const ColumnBlockWrite* jobs, int n_jobs, float scale) override {
    for (int k = 0; k < n_jobs; k++) {
      const ColumnBlockWrite& j = jobs[k];
      if (j.col0 + j.cols > j.ld) throw EngineError("cpu backend: column block outside the row");
      check_range(j.dst, j.rows == 0 ? 0 : size_t(j.rows - 1) * j.ld + j.col0 + j.cols, 0, "column block dst");
      check_range(j.src, size_t(j.rows) * j.cols, 0, "column block src");
      T* d = p(j.dst);
      const T* s = p(j.src);
      const T sc = T(scale);
      for (int i = 0; i < j.rows; i++)
        for (int c = 0; c < j.cols; c++) d[size_t(i) * j.ld + j.col0 + c] = sc * s[size_t(i) * j.cols + c];
    }
  }
  void glu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                    int N, int F, Glu act, int ld_in, int ld_dgu) override {
    if (ld_in == 0) ld_in = F;
    if (ld_dgu == 0) ld_dgu = F;
    check_range(dgate, N == 0 ? 0 : size_t(N - 1) * ld_dgu + F, 0, "glu dgate");
    check_range(dup, N == 0 ? 0 : size_t(N - 1) * ld_dgu + F, 0, "glu dup");
    T* dg = p(dgate);
    T* du = p(dup);
    const T* go = p(dout);
    const T* g = p(gate);
    const T* u = p(up);
    parallel_rows(N, [&](int r) {
      const size_t in0 = size_t(r) * ld_in, d0 = size_t(r) * ld_dgu, o0 = size_t(r) * F;
      for (int j = 0; j < F; j++) {
        const T gi = g[in0 + j], a = act_fn(gi, act), d = go[o0 + j];
        du[d0 + j] = d * a;
        dg[d0 + j] = d * u[in0 + j] * act_grad(gi, act);
      }
    });
  }

  void lora_dropout(const Tensor& out, const Tensor& x, int N, int D, float prob, uint64_t seed) override {
    T* o = p(out);
    const T* xx = p(x);
    const T keep_scale = T(1) / (T(1) - T(prob));
    parallel_range(size_t(N) * D, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; i++) o[i] = counter_uniform(seed, i) >= prob ? xx[i] * keep_scale : T(0);
    });
  }

  // ---- rows by index ----
  void gather_rows(const Tensor& out, const Tensor& src, const Tensor& rows, int n, int C) override {
    if (out.dtype != src.dtype) throw EngineError("cpu backend: gather_rows dtype mismatch");
    check_range(out, size_t(n) * C, 0, "gather_rows out");
    check_range(rows, size_t(n), 0, "gather_rows rows");
    const int32_t* r = static_cast<const int32_t*>(rows.ptr);
    const size_t src_rows = C > 0 ? src.n / size_t(C) : 0, row_bytes = size_t(C) * dtype_size(out.dtype);
    for (int i = 0; i < n; i++)   // checked up front: a bad index is a caller bug, never a silent read
      if (r[i] < -1 || (r[i] >= 0 && size_t(r[i]) >= src_rows))
        throw EngineError("cpu backend: gather_rows index " + std::to_string(r[i]) + " outside [-1, " +
                          std::to_string(src_rows) + ")");
    char* o = static_cast<char*>(out.ptr);
    const char* x = static_cast<const char*>(src.ptr);
    parallel_rows(n, [&](int i) {
      if (r[i] < 0)
        std::memset(o + size_t(i) * row_bytes, 0, row_bytes);
      else
        std::memcpy(o + size_t(i) * row_bytes, x + size_t(r[i]) * row_bytes, row_bytes);
    });
  }

  // ---- cross-entropy ----
  void ce_stats(const Tensor& logits, const Tensor& targets, const Tensor& run_max, const Tensor& run_sum,
                const Tensor& target_logit, int n, int Vc, int v0) override {
    const T* lg = p(logits);
    const int32_t* tg = static_cast<const int32_t*>(targets.ptr);
    T* rm = p(run_max);
    T* rsum = p(run_sum);
    T* tl = p(target_logit);
    parallel_rows(n, [&](int i) {
      const int t = tg[i];
      if (t == -100) return;
      const T* row = lg + size_t(i) * Vc;
      T mx = rm[i];
      for (int j = 0; j < Vc; j++) mx = std::max(mx, row[j]);
      double s = 0;
      for (int j = 0; j < Vc; j++) s += double(std::exp(row[j] - mx));
      rsum[i] = T(double(rsum[i]) * double(std::exp(rm[i] - mx)) + s);
      rm[i] = mx;
      if (t >= v0 && t < v0 + Vc) tl[i] = row[t - v0];
    });
  }
  void ce_finish(const Tensor& loss, const Tensor& lse, const Tensor& run_max, const Tensor& run_sum,
                 const Tensor& target_logit, const Tensor& targets, int n) override {
    T* lo = p(loss);
    T* ls = p(lse);
    const T* rm = p(run_max);
    const T* rsum = p(run_sum);
    const T* tl = p(target_logit);
    const int32_t* tg = static_cast<const int32_t*>(targets.ptr);
    for (int i = 0; i < n; i++) {
      if (tg[i] == -100) {
        lo[i] = 0;
        ls[i] = 0;
      } else {
        ls[i] = rm[i] + std::log(rsum[i]);
        lo[i] = ls[i] - tl[i];
      }
    }
  }
  void ce_grad(const Tensor& logits, const Tensor& targets, const Tensor& lse, int n, int Vc, int v0,
               float grad_scale) override {
    T* lg = p(logits);
    const int32_t* tg = static_cast<const int32_t*>(targets.ptr);
    const T* ls = p(lse);
    const T gs = T(grad_scale);
    parallel_rows(n, [&](int i) {
      T* row = lg + size_t(i) * Vc;
      const int t = tg[i];
      if (t == -100) {
        std::fill_n(row, Vc, T(0));
        return;
      }
      const T l = ls[i];
      const int tj = t - v0;   // target column in this chunk (may be outside it)
      for (int j = 0; j < Vc; j++) {
        const T pj = std::exp(row[j] - l);
        row[j] = (j == tj ? pj - T(1) : pj) * gs;
      }
    });
  }

  // ---- optimizer ----
  double sum_sq(const Tensor& x, size_t n) override {
    const T* xx = p(x);
    constexpr size_t CH = 1 << 14;   // fixed chunking → same result for any thread count
    const size_t nch = (n + CH - 1) / CH;
    std::vector<double> part(nch, 0.0);
    pool_.parallel_for(int64_t(nch), [&](int64_t c) {
      double s = 0;
      for (size_t i = size_t(c) * CH, e = std::min(n, size_t(c + 1) * CH); i < e; i++) s += double(xx[i]) * double(xx[i]);
      part[size_t(c)] = s;
    });
    double total = 0;
    for (double s : part) total += s;
    return total;
  }

  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, size_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, int64_t t, float grad_scale) override {
    T* pp = p(param);
    const T* gg = p(grad);
    T* mm = p(m);
    T* vv = p(v);
    // Scalars as torch computes them (Python doubles), rounded to the tensor dtype where torch applies them.
    const double bc1 = 1.0 - std::pow(beta1, double(t));
    const double bc2 = 1.0 - std::pow(beta2, double(t));
    const T decay = T(1.0 - lr * weight_decay);
    const T w1 = T(1.0 - beta1);
    const T b2 = T(beta2), one_minus_b2 = T(1.0 - beta2);
    const T bc2_sqrt = T(std::sqrt(bc2));
    const T neg_step = T(-(lr / bc1));
    const T teps = T(eps);
    const T gs = T(grad_scale);
    const bool lerp_low = std::fabs(double(w1)) < 0.5;
    parallel_range(n, [&](size_t b, size_t e) {
      for (size_t i = b; i < e; i++) {
        const T g = grad_scale == 1.0f ? gg[i] : gg[i] * gs;
        if (weight_decay != 0.0) pp[i] *= decay;
        mm[i] = lerp_low ? mm[i] + w1 * (g - mm[i]) : g - (g - mm[i]) * (T(1) - w1);
        vv[i] = vv[i] * b2;
        vv[i] = vv[i] + one_minus_b2 * g * g;
        const T denom = std::sqrt(vv[i]) / bc2_sqrt + teps;
        pp[i] = pp[i] + neg_step * mm[i] / denom;
      }
    });
  }

 private:
  ThreadPool pool_;
  std::mutex mem_mu_;
  std::vector<std::pair<void*, size_t>> allocs_;
  size_t in_use_ = 0, peak_ = 0;

  static T* p(const Tensor& t) { return static_cast<T*>(t.ptr); }

  void track_alloc(void* ptr, size_t bytes) {
    std::lock_guard<std::mutex> lock(mem_mu_);
    allocs_.push_back({ptr, bytes});
    in_use_ += bytes;
    peak_ = std::max(peak_, in_use_);
  }
  void untrack(void* ptr) {
    std::lock_guard<std::mutex> lock(mem_mu_);
    for (size_t i = allocs_.size(); i-- > 0;)
      if (allocs_[i].first == ptr) {
        in_use_ -= allocs_[i].second;
        allocs_[i] = allocs_.back();
        allocs_.pop_back();
        return;
      }
    throw EngineError("cpu backend: free of a pointer it did not allocate");
  }
  static void check_range(const Tensor& t, size_t n, size_t offset, const char* what) {
    if (offset + n > t.n)
      throw EngineError(std::string("cpu backend: ") + what + " out of range (" + std::to_string(offset + n) + " > " +
                        std::to_string(t.n) + ")");
  }
  template <typename S>
  void upload_any(const Tensor& dst, const S* src, size_t n, size_t offset) {
    check_range(dst, n, offset, "upload");
    if (dst.dtype == DType::I32) throw EngineError("cpu backend: float upload into an index tensor");
    T* d = p(dst) + offset;
    for (size_t i = 0; i < n; i++) d[i] = T(src[i]);
  }
  template <typename S>
  void download_any(const Tensor& src, S* dst, size_t n, size_t offset) {
    check_range(src, n, offset, "download");
    if (src.dtype == DType::I32) {
      const int32_t* s = static_cast<const int32_t*>(src.ptr) + offset;
      for (size_t i = 0; i < n; i++) dst[i] = S(s[i]);
      return;
    }
    const T* s = p(src) + offset;
    for (size_t i = 0; i < n; i++) dst[i] = S(s[i]);
  }

  // Rows in blocks: one task per ~4096 elements of work keeps tasks coarse for small models.
  template <typename F>
  void parallel_rows(int N, const F& fn) {
    const int per = std::max(1, std::min(N, 64));
    const int tasks = (N + per - 1) / per;
    pool_.parallel_for(tasks, [&](int64_t t) {
      for (int i = int(t) * per, e = std::min(N, int(t + 1) * per); i < e; i++) fn(i);
    });
  }
  template <typename F>
  void parallel_range(size_t n, const F& fn) {
    constexpr size_t CH = 1 << 15;
    const size_t tasks = (n + CH - 1) / CH;
    pool_.parallel_for(int64_t(tasks), [&](int64_t t) { fn(size_t(t) * CH, std::min(n, size_t(t + 1) * CH)); });
  }

  static T act_fn(T g, Glu act) {
    if (act == Glu::SwiGLU) return g / (T(1) + std::exp(-g));
    const T c = T(0.7978845608028654);   // √(2/π)
    return T(0.5) * g * (T(1) + std::tanh(c * (g + T(0.044715) * g * g * g)));
  }
  static T act_grad(T g, Glu act) {
    if (act == Glu::SwiGLU) {
      const T s = T(1) / (T(1) + std::exp(-g));
      return s * (T(1) + g * (T(1) - s));
    }
    const T c = T(0.7978845608028654);
    const T inner = c * (g + T(0.044715) * g * g * g);
    const T th = std::tanh(inner);
    return T(0.5) * (T(1) + th) + T(0.5) * g * (T(1) - th * th) * c * (T(1) + T(3 * 0.044715) * g * g);
  }

  void rope_apply(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, int N, int H, int HD, int ld,
                  bool inverse) {
    if (ld == 0) ld = H * HD;
    check_range(x, N == 0 ? 0 : size_t(N - 1) * ld + size_t(H) * HD, 0, "rope x");
    T* xx = p(x);
    const int32_t* pos = static_cast<const int32_t*>(positions.ptr);
    const T* inv = p(inv_freq);
    const int half = HD / 2;
    parallel_rows(N, [&](int i) {
      thread_local std::vector<T> cs, sn;
      cs.resize(size_t(half));
      sn.resize(size_t(half));
      const T fp = T(pos[i]);
      for (int d = 0; d < half; d++) {
        const T ang = inv[d] * fp;   // fp32 like transformers: inv_freq @ position_ids in float
        cs[d] = std::cos(ang);
        sn[d] = inverse ? -std::sin(ang) : std::sin(ang);
      }
      for (int h = 0; h < H; h++) {
        T* r = xx + size_t(i) * ld + size_t(h) * HD;
        for (int d = 0; d < half; d++) {
          const T x1 = r[d], x2 = r[d + half];
          r[d] = x1 * cs[d] + (-x2) * sn[d];
          r[d + half] = x2 * cs[d] + x1 * sn[d];
        }
      }
    });
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) { return std::make_unique<CpuBackend<float>>(threads); }
std::unique_ptr<Backend> make_cpu_backend_f64(int threads) { return std::make_unique<CpuBackend<double>>(threads); }

}  // namespace nxft
