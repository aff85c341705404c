// forwarding_backend.h — a Backend that forwards every op to another one: the base of the test backends that
// watch or reorder a few ops of the CPU backend (test_head_rows counts the head's GEMMs, test_keep_mlp_input holds
// the side-stream GEMMs back to the next join). Derived classes override just those ops and call b_ for the rest.
#pragma once
#include <string>
#include "backend/backend.h"

namespace nxft {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : b_(inner) {}

  void side_begin() override { b_.side_begin(); }
  void side_end() override { b_.side_end(); }
  void side_join() override { b_.side_join(); }
  void synchronize() override { b_.synchronize(); }
  void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K, bool ta,
                 bool tb, float alpha, float beta, int lda, int ldb, int ldd) override {
    b_.matmul_ex(d, c, a, b, M, N, K, ta, tb, alpha, beta, lda, ldb, ldd);
  }
  std::string name() const override { return b_.name(); }
  std::string device() const override { return b_.device(); }
  int threads() const override { return b_.threads(); }
  DType dtype_of(Role role) const override { return b_.dtype_of(role); }
  Tensor alloc(size_t n, Role role) override { return b_.alloc(n, role); }
  void free(Tensor& t) override { b_.free(t); }
  Tensor alloc_gather_table(size_t n) override { return b_.alloc_gather_table(n); }
  size_t bytes_in_use() const override { return b_.bytes_in_use(); }
  size_t peak_bytes() const override { return b_.peak_bytes(); }
  void* alloc_host(size_t bytes) override { return b_.alloc_host(bytes); }
  void free_host(void* p) override { b_.free_host(p); }
  void to_host_async(void* dst, const Tensor& src, size_t n) override { b_.to_host_async(dst, src, n); }
  void from_host_async(const Tensor& dst, const void* src, size_t n) override { b_.from_host_async(dst, src, n); }
  void wait_transfers() override { b_.wait_transfers(); }
  void upload(const Tensor& d, const float* s, size_t n, size_t o) override { b_.upload(d, s, n, o); }
  void upload(const Tensor& d, const double* s, size_t n, size_t o) override { b_.upload(d, s, n, o); }
  void upload(const Tensor& d, const int32_t* s, size_t n, size_t o) override { b_.upload(d, s, n, o); }
  void upload_bf16_rows(const Tensor& d, const uint16_t* s, int r, int c, int ld) override { b_.upload_bf16_rows(d, s, r, c, ld); }
  void download(const Tensor& s, float* d, size_t n, size_t o) override { b_.download(s, d, n, o); }
  void download(const Tensor& s, double* d, size_t n, size_t o) override { b_.download(s, d, n, o); }
  void copy(const Tensor& d, const Tensor& s, size_t n) override { b_.copy(d, s, n); }
  void copy_2d(const Tensor& d, int ldd, const Tensor& s, int lds, int r, int c) override { b_.copy_2d(d, ldd, s, lds, r, c); }
  void fill(const Tensor& d, float v, size_t n) override { b_.fill(d, v, n); }
  Tensor upload_nf4(const float* w, int r, int c, bool dq) override { return b_.upload_nf4(w, r, c, dq); }
  Tensor upload_4bit(const uint8_t* p, const float* a, Quant q, int r, int c) override { return b_.upload_4bit(p, a, q, r, c); }
  Tensor upload_4bit_nested(const uint8_t* p, const uint8_t* aq, const float* a2, float off, Quant q, int r,
                            int c) override {
    return b_.upload_4bit_nested(p, aq, a2, off, q, r, c);
  }
  void embedding_forward(const Tensor& o, const Tensor& ids, const Tensor& t, int N, int C, double s) override {
    b_.embedding_forward(o, ids, t, N, C, s);
  }
  void gather_rows(const Tensor& out, const Tensor& src, const Tensor& rows, int n, int C) override {
    b_.gather_rows(out, src, rows, n, C);
  }
  void rmsnorm_forward(const Tensor& o, const Tensor& r, const Tensor& x, const Tensor& w, int N, int C, double eps,
                       bool p1, int ld) override {
    b_.rmsnorm_forward(o, r, x, w, N, C, eps, p1, ld);
  }
  void rmsnorm_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& r, int N,
                        int C, bool p1, int ld) override {
    b_.rmsnorm_backward(dx, dout, x, w, r, N, C, p1, ld);
  }
  void add(const Tensor& y, const Tensor& x, size_t n, float a) override { b_.add(y, x, n, a); }
  void add_bias(const Tensor& y, const Tensor& bias, int N, int D) override { b_.add_bias(y, bias, N, D); }
  void scale(const Tensor& y, float s, size_t n) override { b_.scale(y, s, n); }
  void rope_forward(const Tensor& x, const Tensor& p, const Tensor& f, int N, int H, int HD, int ld) override {
    b_.rope_forward(x, p, f, N, H, HD, ld);
  }
  void rope_backward(const Tensor& x, const Tensor& p, const Tensor& f, int N, int H, int HD, int ld) override {
    b_.rope_backward(x, p, f, N, H, HD, ld);
  }
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& ds, int B, int Tq, int Tk, int Tks, int qo, int NH, int NKV, int HD,
                         const AttnPitch& pitch) override {
    b_.attention_forward(out, lse, q, k, v, ds, B, Tq, Tk, Tks, qo, NH, NKV, HD, pitch);
  }
  void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& ds, int B,
                          int T, int NH, int NKV, int HD, const AttnPitch& pitch) override {
    b_.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, ds, B, T, NH, NKV, HD, pitch);
  }
  void glu_forward(const Tensor& o, const Tensor& g, const Tensor& u, int N, int F, Glu act, int ldo, int ldi) override {
    b_.glu_forward(o, g, u, N, F, act, ldo, ldi);
  }
  void glu_backward(const Tensor& dg, const Tensor& du, const Tensor& dout, const Tensor& g, const Tensor& u, int N,
                    int F, Glu act, int ldi, int ldd) override {
    b_.glu_backward(dg, du, dout, g, u, N, F, act, ldi, ldd);
  }
  void lora_dropout(const Tensor& o, const Tensor& x, int N, int D, float p, uint64_t seed) override {
    b_.lora_dropout(o, x, N, D, p, seed);
  }
  void write_column_blocks(const ColumnBlockWrite* jobs, int n, float s) override { b_.write_column_blocks(jobs, n, s); }
  void ce_stats(const Tensor& l, const Tensor& t, const Tensor& m, const Tensor& s, const Tensor& tl, int n, int Vc,
                int v0) override {
    b_.ce_stats(l, t, m, s, tl, n, Vc, v0);
  }
  void ce_finish(const Tensor& loss, const Tensor& lse, const Tensor& m, const Tensor& s, const Tensor& tl,
                 const Tensor& t, int n) override {
    b_.ce_finish(loss, lse, m, s, tl, t, n);
  }
  void ce_grad(const Tensor& l, const Tensor& t, const Tensor& lse, int n, int Vc, int v0, float gs) override {
    b_.ce_grad(l, t, lse, n, Vc, v0, gs);
  }
  double sum_sq(const Tensor& x, size_t n) override { return b_.sum_sq(x, n); }
  void adamw_step(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, size_t n, double lr, double b1,
                  double b2, double eps, double wd, int64_t t, float gs) override {
    b_.adamw_step(p, g, m, v, n, lr, b1, b2, eps, wd, t, gs);
  }
 protected:
  Backend& b_;
};

}  // namespace nxft
