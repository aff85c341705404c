// test_ops.cpp — every CPU backend op against a direct reference, and every backward against central finite
// differences in double precision (make_cpu_backend_f64). L = Σ R ⊙ out for a random R, so dL/dout = R.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include "math_test_util.h"

using namespace nxft;
using mt::Rng;

namespace {

// Central differences of f over every element of x; compares with `analytic`.
void fd_check(const char* what, std::vector<double>& x, const std::function<double()>& f,
              const std::vector<double>& analytic, double tol = 1e-6) {
  const double h = 1e-5;
  double worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < x.size(); i++) {
    const double keep = x[i];
    x[i] = keep + h;
    const double fp = f();
    x[i] = keep - h;
    const double fm = f();
    x[i] = keep;
    const double num = (fp - fm) / (2 * h);
    const double err = std::fabs(num - analytic[i]) / std::max(1.0, std::fabs(num));
    if (err > worst) worst = err, worst_i = i;
  }
  MT_CHECK(worst < tol, "%s: finite-difference mismatch %.3g at %zu", what, worst, worst_i);
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

void test_matmul(Backend& be, Backend& bf) {
  Rng rng(1);
  // (70,130,300) exercises the packed tiled path with edges; M = 3 the few-row (decode) path
  static const int shapes[2][3] = {{70, 130, 300}, {3, 37, 50}};
  for (const auto& dims : shapes)
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int M = dims[0], N = dims[1], K = dims[2];
      auto A = rng.normals(size_t(M) * K), B = rng.normals(size_t(K) * N), C0 = rng.normals(size_t(M) * N);
      const double alpha = 0.75, beta = 0.5;
      std::vector<double> ref(size_t(M) * N);
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0;
          for (int k = 0; k < K; k++)
            s += (ta ? A[size_t(k) * M + i] : A[size_t(i) * K + k]) * (tb ? B[size_t(j) * K + k] : B[size_t(k) * N + j]);
          ref[size_t(i) * N + j] = alpha * s + beta * C0[size_t(i) * N + j];
        }
      for (Backend* b : {&be, &bf}) {
        Tensor a = mt::upload(*b, A), bb = mt::upload(*b, B), c = mt::upload(*b, C0);
        b->matmul(c, a, bb, M, N, K, ta, tb, float(alpha), float(beta));
        auto got = mt::download(*b, c, ref.size());
        double err = 0, mag = 0;   // max abs error relative to the largest output
        for (size_t i = 0; i < ref.size(); i++) err = std::max(err, std::fabs(got[i] - ref[i])), mag = std::max(mag, std::fabs(ref[i]));
        err /= mag;
        MT_CHECK(err < (b == &be ? 1e-14 : 2e-6), "matmul ta=%d tb=%d (%s): rel err %.3g", ta, tb, b->device().c_str(), err);
        // beta = 0 must ignore NaN garbage in C
        std::vector<double> nan(ref.size(), std::numeric_limits<double>::quiet_NaN());
        b->upload(c, nan.data(), nan.size());
        b->matmul(c, a, bb, M, N, K, ta, tb, 1.0f, 0.0f);
        auto out = mt::download(*b, c, ref.size());
        bool finite = std::all_of(out.begin(), out.end(), [](double v) { return std::isfinite(v); });
        MT_CHECK(finite, "matmul beta=0 propagated NaN from C");
        b->free(a), b->free(bb), b->free(c);
      }
    }
  // matmul_ex: operands addressed inside wider matrices (lda/ldb/ldd > row length) and D = alpha·AB + beta·C
  // with C a different tensor. Elements of D outside the addressed block must stay untouched.
  for (const auto& dims : shapes)
  for (int ta = 0; ta < 2; ta++)
    for (int tb = 0; tb < 2; tb++) {
      const int M = dims[0], N = dims[1], K = dims[2];
      const int a_rows = ta ? K : M, a_cols = ta ? M : K, b_rows = tb ? N : K, b_cols = tb ? K : N;
      const int lda = a_cols + 5, ldb = b_cols + 3, ldd = N + 7;
      auto A = rng.normals(size_t(a_rows) * lda), B = rng.normals(size_t(b_rows) * ldb);
      auto C0 = rng.normals(size_t(M) * ldd), D0 = rng.normals(size_t(M) * ldd);
      const double alpha = 1.25, beta = 1.0;
      std::vector<double> ref = D0;   // columns ≥ N keep D0
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double acc = 0;
          for (int k = 0; k < K; k++)
            acc += (ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]) * (tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
          ref[size_t(i) * ldd + j] = alpha * acc + beta * C0[size_t(i) * ldd + j];
        }
      for (Backend* b : {&be, &bf}) {
        Tensor a = mt::upload(*b, A), bb = mt::upload(*b, B), c = mt::upload(*b, C0), d = mt::upload(*b, D0);
        b->matmul_ex(d, c, a, bb, M, N, K, ta, tb, float(alpha), float(beta), lda, ldb, ldd);
        auto got = mt::download(*b, d, ref.size());
        double err = 0, mag = 0;
        bool outside_kept = true;
        for (int i = 0; i < M; i++)
          for (int j = 0; j < ldd; j++) {
            const size_t at = size_t(i) * ldd + j;
            if (j >= N) outside_kept = outside_kept && got[at] == double(b == &be ? D0[at] : float(D0[at]));
            err = std::max(err, std::fabs(got[at] - ref[at]));
            mag = std::max(mag, std::fabs(ref[at]));
          }
        err /= mag;
        MT_CHECK(err < (b == &be ? 1e-14 : 2e-6), "matmul_ex strided ta=%d tb=%d (%s): rel err %.3g", ta, tb,
                 b->device().c_str(), err);
        MT_CHECK(outside_kept, "matmul_ex wrote outside the addressed block (ta=%d tb=%d)", ta, tb);
        auto c_after = mt::download(*b, c, C0.size());
        bool c_kept = true;
        for (size_t i = 0; i < C0.size(); i++) c_kept = c_kept && c_after[i] == double(b == &be ? C0[i] : float(C0[i]));
        MT_CHECK(c_kept, "matmul_ex modified its C operand");
        b->free(a), b->free(bb), b->free(c), b->free(d);
      }
    }
  // NF4 B operand (QLoRA): equals matmul with the dequantized weight; quantization error is bounded.
  {
    const int Mq = 5, Nq = 33, Kq = 64;   // W (Nq, Kq) [out, in]
    std::vector<float> W(size_t(Nq) * Kq);
    for (float& w : W) w = float(rng.normal() * 0.05);
    auto X = rng.normals(size_t(Mq) * Kq);
    Tensor wq = bf.upload_nf4(W.data(), Nq, Kq, false);
    Tensor x = mt::upload(bf, X), y = bf.alloc(size_t(Mq) * Nq, Role::Activation);
    bf.matmul(y, x, wq, Mq, Nq, Kq, false, true, 1.0f, 0.0f);
    auto got = mt::download(bf, y, size_t(Mq) * Nq);
    double worst = 0, scale = 0;
    for (int i = 0; i < Mq; i++)
      for (int j = 0; j < Nq; j++) {
        double s = 0;
        for (int k = 0; k < Kq; k++) s += X[size_t(i) * Kq + k] * W[size_t(j) * Kq + k];
        worst = std::max(worst, std::fabs(s - got[size_t(i) * Nq + j]));
        scale = std::max(scale, std::fabs(s));
      }
    MT_CHECK(worst < 0.15 * scale && worst > 0, "nf4 matmul error %.3g vs scale %.3g", worst, scale);
    // transposed use (dx = dy·W) must read the same quantized values
    auto DY = rng.normals(size_t(Mq) * Nq);
    Tensor dy = mt::upload(bf, DY), dx = bf.alloc(size_t(Mq) * Kq, Role::Activation);
    bf.matmul(dx, dy, wq, Mq, Kq, Nq, false, false, 1.0f, 0.0f);
    // Σ dx ⊙ X must equal Σ dy ⊙ (X·Wqᵀ) (same quantized W in both directions)
    auto dxv = mt::download(bf, dx, size_t(Mq) * Kq);
    double lhs = dot(dxv, X), rhs = dot(DY, got);
    MT_CHECK(std::fabs(lhs - rhs) < 1e-3 * std::max(1.0, std::fabs(rhs)), "nf4 transpose mismatch %g vs %g", lhs, rhs);
    bf.free(wq), bf.free(x), bf.free(y), bf.free(dy), bf.free(dx);
  }
}

void test_rmsnorm(Backend& be) {
  Rng rng(2);
  const int N = 3, C = 7;
  for (int plus_one = 0; plus_one < 2; plus_one++) {
    auto X = rng.normals(size_t(N) * C), Wv = rng.normals(C), R = rng.normals(size_t(N) * C);
    Tensor w = mt::upload(be, Wv, Role::Weight), out = be.alloc(size_t(N) * C, Role::Activation),
           rstd = be.alloc(N, Role::Stat), x = be.alloc(size_t(N) * C, Role::Activation);
    auto f = [&]() {
      be.upload(x, X.data(), X.size());
      be.rmsnorm_forward(out, rstd, x, w, N, C, 1e-5, plus_one, 0);
      return dot(mt::download(be, out, X.size()), R);
    };
    // forward value against the formula
    f();
    auto o = mt::download(be, out, X.size());
    for (int i = 0; i < N; i++) {
      double ss = 0;
      for (int c = 0; c < C; c++) ss += X[size_t(i) * C + c] * X[size_t(i) * C + c];
      double r = 1 / std::sqrt(ss / C + 1e-5);
      for (int c = 0; c < C; c++) {
        double want = X[size_t(i) * C + c] * r * (plus_one ? 1 + Wv[size_t(c)] : Wv[size_t(c)]);
        MT_CHECK(std::fabs(o[size_t(i) * C + c] - want) < 1e-12, "rmsnorm forward");
      }
    }
    Tensor dout = mt::upload(be, R), dx = be.alloc(size_t(N) * C, Role::Activation);
    be.fill(dx, 0.0f, size_t(N) * C);
    be.rmsnorm_backward(dx, dout, x, w, rstd, N, C, plus_one, 0);
    auto g = mt::download(be, dx, X.size());
    fd_check(plus_one ? "rmsnorm(1+w) backward" : "rmsnorm backward", X, f, g);
    for (Tensor* t : {&w, &out, &rstd, &x, &dout, &dx}) be.free(*t);
  }
}

void test_rope(Backend& be) {
  Rng rng(3);
  const int N = 4, H = 3, HD = 8;
  std::vector<int32_t> pos = {0, 5, 17, 300};
  std::vector<double> inv(HD / 2);
  for (int i = 0; i < HD / 2; i++) inv[size_t(i)] = 1.0 / std::pow(10000.0, 2.0 * i / HD);
  Tensor p = mt::upload_i(be, pos), invf = mt::upload(be, inv, Role::Stat), x = be.alloc(size_t(N) * H * HD, Role::Activation);
  auto X = rng.normals(size_t(N) * H * HD), R = rng.normals(X.size());
  auto f = [&]() {
    be.upload(x, X.data(), X.size());
    be.rope_forward(x, p, invf, N, H, HD, 0);
    return dot(mt::download(be, x, X.size()), R);
  };
  f();
  auto o = mt::download(be, x, X.size());
  // HF rotate-half: out = x·cos + rotate_half(x)·sin
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++)
      for (int d = 0; d < HD; d++) {
        size_t base = (size_t(n) * H + h) * HD;
        double ang = pos[size_t(n)] * inv[size_t(d % (HD / 2))];
        double rot = d < HD / 2 ? -X[base + d + HD / 2] : X[base + d - HD / 2];
        double want = X[base + d] * std::cos(ang) + rot * std::sin(ang);
        MT_CHECK(std::fabs(o[base + d] - want) < 1e-12, "rope forward");
      }
  Tensor dx = mt::upload(be, R);
  be.rope_backward(dx, p, invf, N, H, HD, 0);
  fd_check("rope backward", X, f, mt::download(be, dx, X.size()));
  for (Tensor* t : {&p, &invf, &x, &dx}) be.free(*t);
}

void test_attention(Backend& be) {
  Rng rng(4);
  const int B = 2, T = 6, NH = 4, NKV = 2, HD = 4;
  // row 0: docs [0..2] [3..4] [5]; row 1: one document
  std::vector<int32_t> ds = {0, 0, 0, 3, 3, 5, 0, 0, 0, 0, 0, 0};
  Tensor dst = mt::upload_i(be, ds);
  auto Q = rng.normals(size_t(B) * T * NH * HD), K = rng.normals(size_t(B) * T * NKV * HD),
       V = rng.normals(size_t(B) * T * NKV * HD), R = rng.normals(Q.size());
  Tensor q = be.alloc(Q.size(), Role::Activation), k = be.alloc(K.size(), Role::Activation),
         v = be.alloc(V.size(), Role::Activation), out = be.alloc(Q.size(), Role::Activation),
         lse = be.alloc(size_t(B) * NH * T, Role::Stat);
  auto f = [&]() {
    be.upload(q, Q.data(), Q.size());
    be.upload(k, K.data(), K.size());
    be.upload(v, V.data(), V.size());
    be.attention_forward(out, lse, q, k, v, dst, B, T, T, T, 0, NH, NKV, HD, {});
    return dot(mt::download(be, out, Q.size()), R);
  };
  f();
  // reference forward with an explicit mask
  auto o = mt::download(be, out, Q.size());
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int i = 0; i < T; i++) {
        std::vector<double> s;
        double mx = -1e300;
        for (int j = 0; j < T; j++) {
          bool ok = j <= i && j >= ds[size_t(b) * T + i];
          double d = -1e300;
          if (ok) {
            d = 0;
            for (int e = 0; e < HD; e++)
              d += Q[((size_t(b) * T + i) * NH + h) * HD + e] * K[((size_t(b) * T + j) * NKV + h / 2) * HD + e];
            d /= std::sqrt(double(HD));
          }
          s.push_back(d);
          mx = std::max(mx, d);
        }
        double sum = 0;
        for (double& x : s) sum += (x = (x <= -1e299 ? 0 : std::exp(x - mx)));
        for (int e = 0; e < HD; e++) {
          double want = 0;
          for (int j = 0; j < T; j++) want += s[size_t(j)] / sum * V[((size_t(b) * T + j) * NKV + h / 2) * HD + e];
          MT_CHECK(std::fabs(o[((size_t(b) * T + i) * NH + h) * HD + e] - want) < 1e-12, "attention forward b%d h%d i%d", b, h, i);
        }
      }
  Tensor dout = mt::upload(be, R), dq = be.alloc(Q.size(), Role::Activation), dk = be.alloc(K.size(), Role::Activation),
         dv = be.alloc(V.size(), Role::Activation);
  be.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, dst, B, T, NH, NKV, HD, {});
  fd_check("attention dq", Q, f, mt::download(be, dq, Q.size()));
  fd_check("attention dk", K, f, mt::download(be, dk, K.size()));
  fd_check("attention dv", V, f, mt::download(be, dv, V.size()));

  // KV-cache form: queries 3..5 of row 1 against cached keys give the same outputs as the full pass
  {
    f();   // finite differences left perturbed values on the backend
    const int q0 = 3, Tq = 3;
    Tensor q1 = be.alloc(size_t(Tq) * NH * HD, Role::Activation), o1 = be.alloc(size_t(Tq) * NH * HD, Role::Activation),
           l1 = be.alloc(size_t(NH) * Tq, Role::Stat);
    std::vector<int32_t> z(Tq, 0);
    Tensor zs = mt::upload_i(be, z);
    be.upload(q1, Q.data() + (size_t(1) * T + q0) * NH * HD, size_t(Tq) * NH * HD);
    Tensor k1 = k.slice(size_t(T) * NKV * HD, size_t(T) * NKV * HD), v1 = v.slice(size_t(T) * NKV * HD, size_t(T) * NKV * HD);
    be.attention_forward(o1, l1, q1, k1, v1, zs, 1, Tq, q0 + Tq, T, q0, NH, NKV, HD, {});
    auto got = mt::download(be, o1, size_t(Tq) * NH * HD);
    std::vector<double> want(o.begin() + (size_t(1) * T + q0) * NH * HD, o.begin() + (size_t(1) * T + q0 + Tq) * NH * HD);
    MT_CHECK(mt::rel_err(got, want) < 1e-12, "attention with q_offset differs from the full pass");
    for (Tensor* t : {&q1, &o1, &l1, &zs}) be.free(*t);
  }
  for (Tensor* t : {&dst, &q, &k, &v, &out, &lse, &dout, &dq, &dk, &dv}) be.free(*t);
}

// Row-pitched outputs (ld_out > row length) leave the columns after each row untouched, and write_column_blocks
// places s·B into a column block of a wider weight: the layout of a folded LoRA projection.
void test_row_pitch_and_column_blocks(Backend& be) {
  Rng rng(11);
  const int N = 4, C = 9, ld = C + 5;
  auto X = rng.normals(size_t(N) * C), Wv = rng.normals(C), junk = rng.normals(size_t(N) * ld);
  Tensor x = mt::upload(be, X), w = mt::upload(be, Wv, Role::Weight), rstd = be.alloc(N, Role::Stat);
  Tensor packed = be.alloc(size_t(N) * C, Role::Activation), wide = mt::upload(be, junk);
  junk = mt::download(be, wide, junk.size());   // as stored (f32 rounds)
  be.rmsnorm_forward(packed, rstd, x, w, N, C, 1e-5, false, 0);
  be.rmsnorm_forward(wide, rstd, x, w, N, C, 1e-5, false, ld);
  auto pk = mt::download(be, packed, size_t(N) * C), wd = mt::download(be, wide, size_t(N) * ld);
  bool same = true, kept = true;
  for (int i = 0; i < N; i++)
    for (int c = 0; c < ld; c++) {
      if (c < C) same = same && wd[size_t(i) * ld + c] == pk[size_t(i) * C + c];
      else kept = kept && wd[size_t(i) * ld + c] == junk[size_t(i) * ld + c];
    }
  MT_CHECK(same && kept, "rmsnorm_forward with ld_out: rows equal %d, padding kept %d", int(same), int(kept));
  const int F = 6, ldf = F + 3;
  auto G = rng.normals(size_t(N) * F), U = rng.normals(size_t(N) * F), junk2 = rng.normals(size_t(N) * ldf);
  Tensor g = mt::upload(be, G), u = mt::upload(be, U), hp = be.alloc(size_t(N) * F, Role::Activation),
         hw = mt::upload(be, junk2);
  junk2 = mt::download(be, hw, junk2.size());
  be.glu_forward(hp, g, u, N, F, Glu::SwiGLU, 0, 0);
  be.glu_forward(hw, g, u, N, F, Glu::SwiGLU, ldf, 0);
  auto hpv = mt::download(be, hp, size_t(N) * F), hwv = mt::download(be, hw, size_t(N) * ldf);
  same = kept = true;
  for (int i = 0; i < N; i++)
    for (int c = 0; c < ldf; c++) {
      if (c < F) same = same && hwv[size_t(i) * ldf + c] == hpv[size_t(i) * F + c];
      else kept = kept && hwv[size_t(i) * ldf + c] == junk2[size_t(i) * ldf + c];
    }
  MT_CHECK(same && kept, "glu_forward with ld_out: rows equal %d, padding kept %d", int(same), int(kept));
  // two jobs into one (rows, 4 + 2·2) weight: B1 at columns 4..5, B2 at 6..7, scale 0.5
  const int rows = 3, cols = 4, r = 2, wld = cols + 2 * r;
  auto W0 = rng.normals(size_t(rows) * wld), B1 = rng.normals(size_t(rows) * r), B2 = rng.normals(size_t(rows) * r);
  Tensor wt = mt::upload(be, W0, Role::Weight), b1 = mt::upload(be, B1, Role::Param), b2 = mt::upload(be, B2, Role::Param);
  W0 = mt::download(be, wt, W0.size());
  Backend::ColumnBlockWrite jobs[2];
  jobs[0].dst = jobs[1].dst = wt;
  jobs[0].ld = jobs[1].ld = wld;
  jobs[0].col0 = cols, jobs[1].col0 = cols + r;
  jobs[0].src = b1, jobs[1].src = b2;
  jobs[0].rows = jobs[1].rows = rows;
  jobs[0].cols = jobs[1].cols = r;
  be.write_column_blocks(jobs, 2, 0.5f);
  auto wv = mt::download(be, wt, W0.size());
  bool ok = true;
  for (int i = 0; i < rows; i++)
    for (int c = 0; c < wld; c++) {
      const double want = c < cols ? W0[size_t(i) * wld + c]
                          : c < cols + r ? 0.5 * B1[size_t(i) * r + c - cols] : 0.5 * B2[size_t(i) * r + c - cols - r];
      ok = ok && std::fabs(wv[size_t(i) * wld + c] - want) < 1e-6;
    }
  MT_CHECK(ok, "write_column_blocks placed s·B wrongly");
  for (Tensor* t : {&x, &w, &rstd, &packed, &wide, &g, &u, &hp, &hw, &wt, &b1, &b2}) be.free(*t);
}

// Row-pitched operands (q|k|v as column blocks of one buffer, dq|dk|dv of another, gate|up halves, a residual
// gradient with spare columns) give bit-identical results to the packed ones and never touch the columns between
// rows: the layout the model uses to run each input group as one GEMM.
void test_pitched_ops(Backend& be) {
  Rng rng(12);
  // embed a packed (rows, cols) matrix at column col0 of a (rows, ld) host matrix holding `base`
  auto embed = [](std::vector<double> base, const std::vector<double>& m, int rows, int cols, int ld, int col0) {
    for (int i = 0; i < rows; i++)
      for (int c = 0; c < cols; c++) base[size_t(i) * ld + col0 + c] = m[size_t(i) * cols + c];
    return base;
  };
  auto extract = [](const std::vector<double>& w, int rows, int cols, int ld, int col0) {
    std::vector<double> m(size_t(rows) * cols);
    for (int i = 0; i < rows; i++)
      for (int c = 0; c < cols; c++) m[size_t(i) * cols + c] = w[size_t(i) * ld + col0 + c];
    return m;
  };
  // the columns of `after` outside [col0, col0 + cols) of every row equal `before`'s
  auto kept = [](const std::vector<double>& before, const std::vector<double>& after, int rows, int ld, int col0,
                 int cols) {
    for (int i = 0; i < rows; i++)
      for (int c = 0; c < ld; c++)
        if ((c < col0 || c >= col0 + cols) && before[size_t(i) * ld + c] != after[size_t(i) * ld + c]) return false;
    return true;
  };
  // host values as the backend stores them (f32 rounds), so "untouched" can be compared exactly
  auto stored = [&](std::vector<double> v) {
    Tensor t = mt::upload(be, v);
    v = mt::download(be, t, v.size());
    be.free(t);
    return v;
  };
  const int B = 2, T = 5, N = B * T, NH = 4, NKV = 2, HD = 4, qd = NH * HD, kvd = NKV * HD, P = qd + 2 * kvd;
  // attention over q|k|v in one buffer, out with pitch qd+3, dout pitch qd+2, dq|dk|dv in one buffer of pitch P+5
  {
    std::vector<int32_t> ds = {0, 0, 2, 2, 2, 0, 0, 0, 0, 0};
    Tensor dst = mt::upload_i(be, ds);
    auto Q = rng.normals(size_t(N) * qd), K = rng.normals(size_t(N) * kvd), V = rng.normals(size_t(N) * kvd),
         DO = rng.normals(size_t(N) * qd);
    Tensor q = mt::upload(be, Q), k = mt::upload(be, K), v = mt::upload(be, V), dout = mt::upload(be, DO);
    Tensor out = be.alloc(Q.size(), Role::Activation), lse = be.alloc(size_t(B) * NH * T, Role::Stat),
           dq = be.alloc(Q.size(), Role::Activation), dk = be.alloc(K.size(), Role::Activation),
           dv = be.alloc(V.size(), Role::Activation);
    be.attention_forward(out, lse, q, k, v, dst, B, T, T, T, 0, NH, NKV, HD, {});
    be.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, dst, B, T, NH, NKV, HD, {});
    const int ldo = qd + 3, lddo = qd + 2, ldd = P + 5;
    auto QKV = embed(embed(embed(rng.normals(size_t(N) * P), Q, N, qd, P, 0), K, N, kvd, P, qd), V, N, kvd, P, qd + kvd);
    auto O0 = stored(rng.normals(size_t(N) * ldo)), D0 = stored(rng.normals(size_t(N) * ldd));
    Tensor qkv = mt::upload(be, QKV), ow = mt::upload(be, O0), dw = mt::upload(be, D0),
           dow = mt::upload(be, embed(rng.normals(size_t(N) * lddo), DO, N, qd, lddo, 0)),
           lse2 = be.alloc(size_t(B) * NH * T, Role::Stat);
    Backend::AttnPitch pitch;
    pitch.q = pitch.kv = P;
    pitch.out = ldo;
    pitch.dout = lddo;
    pitch.dq = pitch.dkv = ldd;
    const Tensor kw = qkv.from(size_t(qd)), vw = qkv.from(size_t(qd + kvd));
    be.attention_forward(ow, lse2, qkv, kw, vw, dst, B, T, T, T, 0, NH, NKV, HD, pitch);
    be.attention_backward(dw, dw.from(size_t(qd)), dw.from(size_t(qd + kvd)),
                          dow, qkv, kw, vw, ow, lse2, dst, B, T, NH, NKV, HD, pitch);
    auto o1 = mt::download(be, ow, O0.size()), d1 = mt::download(be, dw, D0.size());
    MT_CHECK(extract(o1, N, qd, ldo, 0) == mt::download(be, out, Q.size()) && kept(O0, o1, N, ldo, 0, qd),
             "attention_forward with pitched q|k|v and out differs from packed");
    MT_CHECK(mt::download(be, lse2, size_t(B) * NH * T) == mt::download(be, lse, size_t(B) * NH * T),
             "attention_forward lse with pitches differs");
    MT_CHECK(extract(d1, N, qd, ldd, 0) == mt::download(be, dq, Q.size()) &&
                 extract(d1, N, kvd, ldd, qd) == mt::download(be, dk, K.size()) &&
                 extract(d1, N, kvd, ldd, qd + kvd) == mt::download(be, dv, V.size()) && kept(D0, d1, N, ldd, 0, P),
             "attention_backward into one dq|dk|dv buffer differs from packed");
    // rope over q|k as the first NH + NKV heads of each qkv row (v and the spare columns untouched)
    std::vector<int32_t> pos = {0, 1, 2, 0, 1, 9, 3, 4, 5, 6};
    std::vector<double> inv(HD / 2);
    for (int i = 0; i < HD / 2; i++) inv[size_t(i)] = 1.0 / std::pow(10000.0, 2.0 * i / HD);
    Tensor ps = mt::upload_i(be, pos), invf = mt::upload(be, inv, Role::Stat);
    for (bool backward : {false, true}) {
      Tensor packed = mt::upload(be, extract(D0, N, qd + kvd, ldd, 0)), wide = mt::upload(be, D0);
      if (backward) {
        be.rope_backward(packed, ps, invf, N, NH + NKV, HD, 0);
        be.rope_backward(wide, ps, invf, N, NH + NKV, HD, ldd);
      } else {
        be.rope_forward(packed, ps, invf, N, NH + NKV, HD, 0);
        be.rope_forward(wide, ps, invf, N, NH + NKV, HD, ldd);
      }
      auto w = mt::download(be, wide, D0.size());
      MT_CHECK(extract(w, N, qd + kvd, ldd, 0) == mt::download(be, packed, size_t(N) * (qd + kvd)) &&
                   kept(D0, w, N, ldd, 0, qd + kvd),
               "rope %s with a row pitch differs from packed", backward ? "backward" : "forward");
      be.free(packed);
      be.free(wide);
    }
    // copy_2d: k's column block of qkv into a packed cache
    Tensor cache = be.alloc(K.size(), Role::Activation);
    be.copy_2d(cache, kvd, kw, P, N, kvd);
    MT_CHECK(mt::download(be, cache, K.size()) == mt::download(be, k, K.size()), "copy_2d of a column block");
    for (Tensor* t : {&dst, &q, &k, &v, &dout, &out, &lse, &dq, &dk, &dv, &qkv, &ow, &dw, &dow, &lse2, &ps, &invf, &cache})
      be.free(*t);
  }
  // glu over the halves of one gate|up buffer; dgate|dup into one buffer with spare columns
  {
    const int F = 6, ldd = 2 * F + 3;
    for (Glu act : {Glu::SwiGLU, Glu::GeGLUTanh}) {
      auto G = rng.normals(size_t(N) * F), U = rng.normals(size_t(N) * F), DO = rng.normals(size_t(N) * F);
      Tensor g = mt::upload(be, G), u = mt::upload(be, U), dout = mt::upload(be, DO),
             h = be.alloc(G.size(), Role::Activation), dg = be.alloc(G.size(), Role::Activation),
             du = be.alloc(G.size(), Role::Activation);
      be.glu_forward(h, g, u, N, F, act, 0, 0);
      be.glu_backward(dg, du, dout, g, u, N, F, act, 0, 0);
      auto GU = embed(embed(std::vector<double>(size_t(N) * 2 * F), G, N, F, 2 * F, 0), U, N, F, 2 * F, F);
      auto D0 = stored(rng.normals(size_t(N) * ldd));
      Tensor gu = mt::upload(be, GU), hw = be.alloc(G.size(), Role::Activation), dw = mt::upload(be, D0);
      const Tensor upw = gu.from(size_t(F));
      be.glu_forward(hw, gu, upw, N, F, act, 0, 2 * F);
      be.glu_backward(dw, dw.from(size_t(F)), dout, gu, upw, N, F, act, 2 * F, ldd);
      auto d1 = mt::download(be, dw, D0.size());
      MT_CHECK(mt::download(be, hw, G.size()) == mt::download(be, h, G.size()), "glu_forward over gate|up halves");
      MT_CHECK(extract(d1, N, F, ldd, 0) == mt::download(be, dg, G.size()) &&
                   extract(d1, N, F, ldd, F) == mt::download(be, du, G.size()) && kept(D0, d1, N, ldd, 0, 2 * F),
               "glu_backward into one dgate|dup buffer differs from packed");
      for (Tensor* t : {&g, &u, &dout, &h, &dg, &du, &gu, &hw, &dw}) be.free(*t);
    }
  }
  // rmsnorm_backward accumulating into a residual gradient with spare columns
  {
    const int C = 7, ld = C + 4;
    auto X = rng.normals(size_t(N) * C), Wv = rng.normals(C), DO = rng.normals(size_t(N) * C),
         DX = rng.normals(size_t(N) * C), junk = rng.normals(size_t(N) * ld);
    Tensor x = mt::upload(be, X), w = mt::upload(be, Wv, Role::Weight), rstd = be.alloc(N, Role::Stat),
           o = be.alloc(X.size(), Role::Activation), dout = mt::upload(be, DO), dx = mt::upload(be, DX);
    auto W0 = stored(embed(junk, DX, N, C, ld, 0));
    Tensor dxw = mt::upload(be, W0);
    be.rmsnorm_forward(o, rstd, x, w, N, C, 1e-5, false, 0);
    be.rmsnorm_backward(dx, dout, x, w, rstd, N, C, false, 0);
    be.rmsnorm_backward(dxw, dout, x, w, rstd, N, C, false, ld);
    auto d1 = mt::download(be, dxw, W0.size());
    MT_CHECK(extract(d1, N, C, ld, 0) == mt::download(be, dx, X.size()) && kept(W0, d1, N, ld, 0, C),
             "rmsnorm_backward with ld_dx differs from packed");
    for (Tensor* t : {&x, &w, &rstd, &o, &dout, &dx, &dxw}) be.free(*t);
  }
}

void test_glu(Backend& be) {
  Rng rng(5);
  const int N = 3, F = 5;
  for (Glu act : {Glu::SwiGLU, Glu::GeGLUTanh}) {
    auto G = rng.normals(size_t(N) * F, 2.0), U = rng.normals(size_t(N) * F), R = rng.normals(size_t(N) * F);
    Tensor g = be.alloc(G.size(), Role::Activation), u = be.alloc(U.size(), Role::Activation),
           o = be.alloc(G.size(), Role::Activation);
    auto f = [&]() {
      be.upload(g, G.data(), G.size());
      be.upload(u, U.data(), U.size());
      be.glu_forward(o, g, u, N, F, act, 0, 0);
      return dot(mt::download(be, o, G.size()), R);
    };
    f();
    auto ov = mt::download(be, o, G.size());
    for (size_t i = 0; i < G.size(); i++) {
      double x = G[i];
      double a = act == Glu::SwiGLU ? x / (1 + std::exp(-x))
                                    : 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
      MT_CHECK(std::fabs(ov[i] - a * U[i]) < 1e-12, "glu forward");
    }
    Tensor dout = mt::upload(be, R), dg = be.alloc(G.size(), Role::Activation), du = be.alloc(U.size(), Role::Activation);
    be.glu_backward(dg, du, dout, g, u, N, F, act, 0, 0);
    fd_check("glu dgate", G, f, mt::download(be, dg, G.size()));
    fd_check("glu dup", U, f, mt::download(be, du, U.size()));
    for (Tensor* t : {&g, &u, &o, &dout, &dg, &du}) be.free(*t);
  }
}

void test_cross_entropy(Backend& be) {
  Rng rng(6);
  const int n = 5, V = 11;
  std::vector<int32_t> tg = {3, -100, 10, 0, 7};
  Tensor targets = mt::upload_i(be, tg);
  auto Lg = rng.normals(size_t(n) * V, 3.0);
  const double gs = 1.0 / 4;   // 4 valid targets
  Tensor lg = be.alloc(Lg.size(), Role::Activation), mx = be.alloc(n, Role::Stat), sm = be.alloc(n, Role::Stat),
         tl = be.alloc(n, Role::Stat), loss = be.alloc(n, Role::Stat), lse = be.alloc(n, Role::Stat);
  // chunked over the vocabulary (Vc = 4: chunks 4, 4, 3)
  auto run_loss = [&](int Vc) {
    be.fill(mx, -std::numeric_limits<float>::infinity(), n);
    be.fill(sm, 0.0f, n);
    be.fill(tl, 0.0f, n);
    std::vector<double> chunk;
    Tensor buf = be.alloc(size_t(n) * Vc, Role::Activation);
    for (int v0 = 0; v0 < V; v0 += Vc) {
      int vc = std::min(Vc, V - v0);
      chunk.assign(size_t(n) * vc, 0);
      for (int i = 0; i < n; i++)
        for (int j = 0; j < vc; j++) chunk[size_t(i) * vc + j] = Lg[size_t(i) * V + v0 + j];
      be.upload(buf, chunk.data(), chunk.size());
      be.ce_stats(buf, targets, mx, sm, tl, n, vc, v0);
    }
    be.ce_finish(loss, lse, mx, sm, tl, targets, n);
    be.free(buf);
    auto l = mt::download(be, loss, n);
    double s = 0;
    for (double x : l) s += x;
    return s * gs;
  };
  double whole = run_loss(V), chunked = run_loss(4);
  double want = 0;
  for (int i = 0; i < n; i++) {
    if (tg[size_t(i)] == -100) continue;
    double m = -1e300, s = 0;
    for (int j = 0; j < V; j++) m = std::max(m, Lg[size_t(i) * V + j]);
    for (int j = 0; j < V; j++) s += std::exp(Lg[size_t(i) * V + j] - m);
    want += (m + std::log(s) - Lg[size_t(i) * V + tg[size_t(i)]]) * gs;
  }
  MT_CHECK(std::fabs(whole - want) < 1e-12 && std::fabs(chunked - want) < 1e-12, "cross-entropy %g %g want %g", whole,
           chunked, want);
  // gradient, chunk by chunk, against finite differences of the loss
  run_loss(4);
  std::vector<double> grad(Lg.size());
  for (int v0 = 0; v0 < V; v0 += 4) {
    int vc = std::min(4, V - v0);
    std::vector<double> chunk(size_t(n) * vc);
    for (int i = 0; i < n; i++)
      for (int j = 0; j < vc; j++) chunk[size_t(i) * vc + j] = Lg[size_t(i) * V + v0 + j];
    Tensor buf = mt::upload(be, chunk);
    be.ce_grad(buf, targets, lse, n, vc, v0, float(gs));
    auto g = mt::download(be, buf, chunk.size());
    for (int i = 0; i < n; i++)
      for (int j = 0; j < vc; j++) grad[size_t(i) * V + v0 + j] = g[size_t(i) * vc + j];
    be.free(buf);
  }
  fd_check("cross-entropy grad", Lg, [&]() { return run_loss(4); }, grad);
  for (Tensor* t : {&targets, &lg, &mx, &sm, &tl, &loss, &lse}) be.free(*t);
}

void test_dropout(Backend& be) {
  const int N = 200, D = 50;
  std::vector<double> ones(size_t(N) * D, 1.0);
  Tensor x = mt::upload(be, ones), a = be.alloc(ones.size(), Role::Activation), b = be.alloc(ones.size(), Role::Activation);
  be.lora_dropout(a, x, N, D, 0.25f, 42);
  be.lora_dropout(b, x, N, D, 0.25f, 42);
  auto va = mt::download(be, a, ones.size()), vb = mt::download(be, b, ones.size());
  size_t kept = 0;
  bool values_ok = true;
  for (double v : va) {
    if (v != 0) kept++;
    values_ok &= (v == 0 || std::fabs(v - 1 / 0.75) < 1e-12);
  }
  MT_CHECK(va == vb, "dropout not deterministic for a seed");
  MT_CHECK(values_ok, "dropout keeps values scaled by 1/(1-p)");
  double frac = double(kept) / ones.size();
  MT_CHECK(std::fabs(frac - 0.75) < 0.02, "dropout keep fraction %.3f", frac);
  be.lora_dropout(b, x, N, D, 0.25f, 43);
  MT_CHECK(mt::download(be, b, ones.size()) != va, "dropout seeds 42 and 43 gave the same mask");
  for (Tensor* t : {&x, &a, &b}) be.free(*t);
}

void test_adamw(Backend& bf) {
  // Golden: torch 2.x torch.optim.AdamW([p], lr=1e-2, betas=(0.9,0.999), eps=1e-8, weight_decay=0.1), three
  // steps with the gradients below, fp32 (printed with struct.pack('<f') to hex). See test_ops.cpp history.
  std::vector<float> p0 = {0.5f, -1.25f, 2.0f, 0.001f, -0.3f};
  std::vector<std::vector<float>> grads = {
      {0.1f, -0.2f, 0.3f, 1e-4f, -5.0f}, {0.05f, 0.2f, -0.3f, 2e-4f, 4.0f}, {-0.1f, 0.0f, 0.3f, -1e-4f, 1.0f}};
  const uint32_t want_bits[5] = {0x3ef4c9ae, 0xbf9e5cc8, 0x3ffd97c4, 0xbcbaf9be, 0xbe9402aa};
  Tensor p = bf.alloc(5, Role::Param), g = bf.alloc(5, Role::Param), m = bf.alloc(5, Role::Param), v = bf.alloc(5, Role::Param);
  bf.upload(p, p0.data(), 5);
  bf.fill(m, 0, 5);
  bf.fill(v, 0, 5);
  for (int t = 0; t < 3; t++) {
    bf.upload(g, grads[size_t(t)].data(), 5);
    bf.adamw_step(p, g, m, v, 5, 1e-2, 0.9, 0.999, 1e-8, 0.1, t + 1, 1.0f);
  }
  std::vector<float> got(5);
  bf.download(p, got.data(), 5);
  for (int i = 0; i < 5; i++) {
    float want;
    std::memcpy(&want, &want_bits[i], 4);
    MT_CHECK(std::fabs(got[size_t(i)] - want) <= 2e-7f * std::max(1.0f, std::fabs(want)), "adamw p[%d] %.9g want %.9g", i,
             got[size_t(i)], want);
  }
  // sum_sq and scale
  double ss = bf.sum_sq(p, 5), want_ss = 0;
  for (float x : got) want_ss += double(x) * x;
  MT_CHECK(std::fabs(ss - want_ss) < 1e-9, "sum_sq");
  for (Tensor* t : {&p, &g, &m, &v}) bf.free(*t);
}

void test_embedding(Backend& be) {
  const int V = 4, C = 3;
  std::vector<double> tab = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  std::vector<int32_t> ids = {2, 0, 3};
  Tensor t = mt::upload(be, tab, Role::Weight), id = mt::upload_i(be, ids), out = be.alloc(9, Role::Activation);
  be.embedding_forward(out, id, t, 3, C, 2.0);
  auto o = mt::download(be, out, 9);
  std::vector<double> want = {12, 14, 16, 0, 2, 4, 18, 20, 22};
  MT_CHECK(o == want, "embedding lookup × scale");
  (void)V;
  for (Tensor* x : {&t, &id, &out}) be.free(*x);
}

}  // namespace

int main() {
  auto be = make_cpu_backend_f64(2);
  auto bf = make_cpu_backend(2);
  test_matmul(*be, *bf);
  test_rmsnorm(*be);
  test_rope(*be);
  test_attention(*be);
  test_glu(*be);
  test_row_pitch_and_column_blocks(*be);
  test_row_pitch_and_column_blocks(*bf);
  test_pitched_ops(*be);
  test_pitched_ops(*bf);
  test_cross_entropy(*be);
  test_dropout(*be);
  test_adamw(*bf);
  test_embedding(*be);
  MT_CHECK(be->bytes_in_use() == 0, "f64 backend leaked %zu bytes", be->bytes_in_use());
  MT_CHECK(bf->bytes_in_use() == 0, "f32 backend leaked %zu bytes", bf->bytes_in_use());
  return mt::finish("test_ops");
}
