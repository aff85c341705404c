// attention_tiles.cu — causal GQA attention over packed documents on tensor cores: FlashAttention-2's algorithm
// (native.md §6.1) with mma.sync m16n8k16 (bf16 in, fp32 accumulate), for training rows (Tq = Tk = T, q_offset 0).
//
// Why it exists: the shards stage packs many short documents into each row (Alpaca at 2048: about 20 documents of
// ~100 tokens). Causal attention inside documents then touches only the tiles near the diagonal (14% of a row's
// 64×64 causal tiles on that data), but cuDNN's ragged backward took as long as on one whole-row document (session
// 7), and needed copies of its pitched operands (cuDNN 9.19). These kernels visit only the tiles a document spans:
//   forward:  one block per (64-query tile, head, row); key tiles from the tile's first document start to its last
//             query, online softmax in registers (base 2), lse written in the engine's (B, NH, T) layout;
//   backward: one block per (64-key tile, KV head, row); it walks the 32-query tiles from the key tile on until the
//             first query whose document starts after the tile's last key, for each of the G query heads sharing
//             the KV head, so dK and dV are summed over the group in registers (no reduction pass). dQ is added
//             with fp32 atomics into dq_acc (B·T, NH, HD), then scaled into dq (its own pitch) by one more kernel.
// Documents are contiguous (doc_start is nondecreasing along a row; the model derives it from positions), which
// the tile bounds rely on, as the portable dK/dV kernel (attention.cu) does. Masks are exact per element: query i
// attends key j iff doc_start[b,i] ≤ j ≤ i.
//
// Layout of the fragments (PTX ISA, "mma.m16n8k16"): with g = lane/4 and c = 2·(lane%4), a thread holds
//   A (16×16, row-major): (g, c..c+1), (g+8, c..c+1), (g, c+8..c+9), (g+8, c+8..c+9)
//   B (16×8, k×n):        (k = c..c+1, n = g), (k = c+8..c+9, n = g)
//   C (16×8, fp32):       (g, c), (g, c+1), (g+8, c), (g+8, c+1)
// so a score tile's C fragments are, packed to bf16 pairs, the A fragments of the next product (P·V, Pᵀ·dO).
// Tiles sit in shared memory as rows of HD bf16 with the 16-byte chunks of row r XOR-swizzled by r % 8, so the 8
// row addresses of one ldmatrix hit 8 different bank groups.
#include <climits>
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

namespace {

constexpr int kThreads = 128;   // 4 warps
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// ---- tensor-core and async-copy primitives ------------------------------------------------------------------
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Four 8×8 bf16 matrices from shared memory; lane l gives the address of row l%8 of matrix l/8.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const bf16* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);   // lo in the low half: the lower column
  return *reinterpret_cast<uint32_t*>(&v);
}
// 16 bytes global → shared without staging in registers; ok = false writes zeros (rows past the end).
__device__ __forceinline__ void cp_async16(bf16* smem, const bf16* gmem, bool ok) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// 4 bytes (one lse, delta or doc_start value); ok = false writes zero.
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool ok) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 4 : 0));
}
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Element (r, c) of a tile of rows of HD bf16 (HD ≥ 64): 16-byte chunk c/8 of row r swizzled by r % 8.
template <int HD> __device__ __forceinline__ int sw(int r, int c) {
  return r * HD + ((((c >> 3) ^ (r & 7))) << 3) + (c & 7);
}
// The same for the (64 keys, 32 queries) dSᵀ tile: 4 chunks a row, swizzled by (r / 2) % 4 (rows are 64 bytes).
__device__ __forceinline__ int sw32(int r, int c) { return r * 32 + ((((c >> 3) ^ ((r >> 1) & 3))) << 3) + (c & 7); }

// Rows [r0, r0 + ROWS) of one head (HD columns from `g`, row pitch ld) into a swizzled tile; rows ≥ valid are zeros.
template <int ROWS, int HD>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, int ld, int r0, int valid) {
  constexpr int CH = HD / 8;
  for (int c = threadIdx.x; c < ROWS * CH; c += kThreads) {
    const int r = c / CH, ch = c % CH;
    const bool ok = r < valid;
    cp_async16(s + sw<HD>(r, ch * 8), ok ? g + (size_t)(r0 + r) * ld + ch * 8 : g, ok);
  }
}

// Ordering of a fragment load: lane l addresses row (l%8) + 8·bit of its matrix and column 8·other bit, which is
//   A operand, non-transposed (rows = M):  row l%8 + 8·((l/8)%2), column 8·(l/16)
//   B operand from rows = N (K·Qᵀ etc.):    row l%8 + 8·(l/16),    column 8·((l/8)%2)   → regs {0,1} n-tile 0, {2,3} n-tile 1
//   B operand from rows = K, transposed:    row l%8 + 8·((l/8)%2), column 8·(l/16)     → regs {0,1} n-tile 0, {2,3} n-tile 1
//   A operand from stored Aᵀ, transposed:   row l%8 + 8·(l/16),    column 8·((l/8)%2)
__device__ __forceinline__ int row_a(int l) { return (l & 7) + ((l >> 3) & 1) * 8; }
__device__ __forceinline__ int col_a(int l) { return (l >> 4) * 8; }
__device__ __forceinline__ int row_b(int l) { return (l & 7) + (l >> 4) * 8; }
__device__ __forceinline__ int col_b(int l) { return ((l >> 3) & 1) * 8; }

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// ---- forward ------------------------------------------------------------------------------------------------
// grid (ceil(T/64), NH, B); each warp owns 16 query rows; smem Q, K, V tiles of 64 rows.
template <int HD>
__global__ void __launch_bounds__(kThreads) tiles_forward_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                                                 const bf16* v, const int32_t* doc_start, int T,
                                                                 int NH, int NKV, AttnLd ld, float scale_log2) {
  constexpr int BM = 64, BN = 64, KS = HD / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Qs = reinterpret_cast<bf16*>(smem);
  bf16* Ks = Qs + BM * HD;
  bf16* Vs = Ks + BN * HD;
  __shared__ int ds_s[BM];
  const int q0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, kvh = h / (NH / NKV);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = (lane & 3) * 2;
  const int rows = min(BM, T - q0);
  const int32_t* ds_row = doc_start + (size_t)b * T;
  if (threadIdx.x < BM) ds_s[threadIdx.x] = int(threadIdx.x) < rows ? ds_row[q0 + threadIdx.x] : INT_MAX;
  load_tile<BM, HD>(Qs, q + (size_t)b * T * ld.q + (size_t)h * HD, ld.q, q0, rows);
  cp_commit();
  cp_wait<0>();
  __syncthreads();
  const int first_key = ds_s[0], last_query = q0 + rows - 1;   // nondecreasing doc_start: the tile's key range
  const int r0 = warp * 16 + g, i0 = q0 + r0, i1 = i0 + 8, ds0 = ds_s[r0], ds1 = ds_s[r0 + 8];
  uint32_t qf[KS][4];
#pragma unroll
  for (int kk = 0; kk < KS; kk++) ldsm_x4(qf[kk], Qs + sw<HD>(warp * 16 + row_a(lane), kk * 16 + col_a(lane)));
  float o[HD / 8][4] = {};
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;   // running max (log2 units) and partial sums
  const bf16* kb = k + (size_t)b * T * ld.kv + (size_t)kvh * HD;
  const bf16* vb = v + (size_t)b * T * ld.kv + (size_t)kvh * HD;
  for (int k0 = (first_key / BN) * BN; k0 <= last_query; k0 += BN) {
    __syncthreads();   // every warp is done with the previous K, V
    load_tile<BN, HD>(Ks, kb, ld.kv, k0, min(BN, T - k0));
    load_tile<BN, HD>(Vs, vb, ld.kv, k0, min(BN, T - k0));
    cp_commit();
    cp_wait<0>();
    __syncthreads();
    // S (16 queries × 64 keys per warp) = Q Kᵀ
    float s[8][4] = {};
#pragma unroll
    for (int np = 0; np < 4; np++)
#pragma unroll
      for (int kk = 0; kk < KS; kk++) {
        uint32_t bk[4];
        ldsm_x4(bk, Ks + sw<HD>(np * 16 + row_b(lane), kk * 16 + col_b(lane)));
        mma_bf16(s[2 * np], qf[kk], bk[0], bk[1]);
        mma_bf16(s[2 * np + 1], qf[kk], bk[2], bk[3]);
      }
    // mask to each query's document, online softmax in base 2
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int key = k0 + nt * 8 + c + e;
        s[nt][e] = key >= ds0 && key <= i0 ? s[nt][e] * scale_log2 : -INFINITY;
        s[nt][2 + e] = key >= ds1 && key <= i1 ? s[nt][2 + e] * scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[nt][e]);
        mx1 = fmaxf(mx1, s[nt][2 + e]);
      }
    const float mn0 = fmaxf(m0, quad_max(mx0)), mn1 = fmaxf(m1, quad_max(mx1));
    const float base0 = mn0 == -INFINITY ? 0.0f : mn0, base1 = mn1 == -INFINITY ? 0.0f : mn1;
    const float corr0 = exp2f(m0 - base0), corr1 = exp2f(m1 - base1);
    m0 = mn0;
    m1 = mn1;
    float ps0 = 0.0f, ps1 = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        s[nt][e] = exp2f(s[nt][e] - base0);
        s[nt][2 + e] = exp2f(s[nt][2 + e] - base1);
        ps0 += s[nt][e];
        ps1 += s[nt][2 + e];
      }
    l0 = l0 * corr0 + ps0;
    l1 = l1 * corr1 + ps1;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
      o[dt][0] *= corr0;
      o[dt][1] *= corr0;
      o[dt][2] *= corr1;
      o[dt][3] *= corr1;
    }
    // O (16 × HD) += P (16 × 64 keys) V
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
      const uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                             pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        uint32_t bv[4];
        ldsm_x4_trans(bv, Vs + sw<HD>(kk * 16 + row_a(lane), dp * 16 + col_a(lane)));
        mma_bf16(o[2 * dp], a, bv[0], bv[1]);
        mma_bf16(o[2 * dp + 1], a, bv[2], bv[3]);
      }
    }
  }
  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  const int qi[2] = {i0, i1};
  const float mm[2] = {m0, m1}, ll[2] = {l0, l1};
#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (qi[r] >= T) continue;
    const float inv = ll[r] > 0.0f ? 1.0f / ll[r] : 0.0f;
    bf16* orow = out + ((size_t)b * T + qi[r]) * ld.out + (size_t)h * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++)
      *reinterpret_cast<uint32_t*>(orow + dt * 8 + c) = pack_bf16(o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv);
    if (c == 0) lse[((size_t)b * NH + h) * T + qi[r]] = (mm[r] + log2f(ll[r])) * kLn2;
  }
}

// ---- backward -----------------------------------------------------------------------------------------------
// grid (ceil(T/64), NKV, B); each warp owns 16 keys of the block's 64 and keeps their dK, dV (16 × HD) in
// registers. Work items are (32-query tile, query head of the group), double-buffered in shared memory with their
// queries' lse, delta and doc_start (read in the inner loop: from global memory they stalled a latency-bound kernel).
template <int HD>
__global__ void __launch_bounds__(kThreads, 2)
    tiles_backward_kernel(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                          const bf16* v, const float* lse, const float* delta, const int32_t* doc_start, int T, int NH,
                          int NKV, AttnLd ld, float scale, float scale_log2) {
  constexpr int BN = 64, BM = 32, KS = HD / 16;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* Ks = reinterpret_cast<bf16*>(smem);
  bf16* Vs = Ks + BN * HD;
  bf16* Qs = Vs + BN * HD;        // [2][BM·HD]
  bf16* dOs = Qs + 2 * BM * HD;   // [2][BM·HD]
  bf16* dSs = dOs + 2 * BM * HD;  // (BN keys, BM queries)
  float* Ls = reinterpret_cast<float*>(dSs + BN * BM);   // [2][BM] lse of the item's queries
  float* Ds = Ls + 2 * BM;                                // [2][BM] delta
  int* DSs = reinterpret_cast<int*>(Ds + 2 * BM);         // [2][BM] doc_start
  const int k0 = blockIdx.x * BN, kvh = blockIdx.y, b = blockIdx.z, G = NH / NKV;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = (lane & 3) * 2;
  const int last_key = min(k0 + BN, T) - 1;
  const int32_t* ds_row = doc_start + (size_t)b * T;
  load_tile<BN, HD>(Ks, k + (size_t)b * T * ld.kv + (size_t)kvh * HD, ld.kv, k0, last_key - k0 + 1);
  load_tile<BN, HD>(Vs, v + (size_t)b * T * ld.kv + (size_t)kvh * HD, ld.kv, k0, last_key - k0 + 1);
  cp_commit();
  // Query tiles: queries before k0 attend none of these keys; the tiles end at the first one whose first query's
  // document starts after the last key (doc_start is nondecreasing, so no later query attends them either).
  const int qt0 = k0 / BM;
  int qt_end = qt0;
  while (qt_end * BM < T && ds_row[qt_end * BM] <= last_key) qt_end++;
  const int items = (qt_end - qt0) * G;
  auto load_item = [&](int it, int buf) {
    const int q_start = (qt0 + it / G) * BM, head = kvh * G + it % G;
    const int rows = min(BM, T - q_start);
    load_tile<BM, HD>(Qs + buf * BM * HD, q + (size_t)b * T * ld.q + (size_t)head * HD, ld.q, q_start, rows);
    load_tile<BM, HD>(dOs + buf * BM * HD, dout + (size_t)b * T * ld.dout + (size_t)head * HD, ld.dout, q_start, rows);
    const int t = threadIdx.x & (BM - 1), which = threadIdx.x / BM, qi = q_start + t;
    const bool ok = t < rows;
    const size_t lrow = ((size_t)b * NH + head) * T + (ok ? qi : 0);
    if (which == 0) cp_async4(Ls + buf * BM + t, lse + lrow, ok);
    else if (which == 1) cp_async4(Ds + buf * BM + t, delta + lrow, ok);
    else if (which == 2) cp_async4(DSs + buf * BM + t, ds_row + (ok ? qi : 0), ok);
  };
  if (items > 0) load_item(0, 0);
  cp_commit();
  const int kr = warp * 16, key0 = k0 + kr + g, key1 = key0 + 8;
  float dk_acc[HD / 8][4] = {}, dv_acc[HD / 8][4] = {};
  for (int it = 0; it < items; it++) {
    const int buf = it & 1;
    if (it + 1 < items) load_item(it + 1, buf ^ 1);
    cp_commit();
    cp_wait<1>();   // this item's tiles (and K, V) have landed; the next item's may still be in flight
    __syncthreads();
    const int q_start = (qt0 + it / G) * BM, head = kvh * G + it % G;
    const bf16* Qb = Qs + buf * BM * HD;
    const bf16* dOb = dOs + buf * BM * HD;
    // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (16 keys × 32 queries per warp)
    float st[4][4] = {}, dpt[4][4] = {};
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
      uint32_t ka[4], va[4];
      ldsm_x4(ka, Ks + sw<HD>(kr + row_a(lane), kk * 16 + col_a(lane)));
      ldsm_x4(va, Vs + sw<HD>(kr + row_a(lane), kk * 16 + col_a(lane)));
#pragma unroll
      for (int np = 0; np < 2; np++) {
        uint32_t bq[4], bo[4];
        ldsm_x4(bq, Qb + sw<HD>(np * 16 + row_b(lane), kk * 16 + col_b(lane)));
        ldsm_x4(bo, dOb + sw<HD>(np * 16 + row_b(lane), kk * 16 + col_b(lane)));
        mma_bf16(st[2 * np], ka, bq[0], bq[1]);
        mma_bf16(st[2 * np + 1], ka, bq[2], bq[3]);
        mma_bf16(dpt[2 * np], va, bo[0], bo[1]);
        mma_bf16(dpt[2 * np + 1], va, bo[2], bo[3]);
      }
    }
    // Pᵀ = exp(scale·S − lse) inside each query's document; dSᵀ = Pᵀ ∘ (dPᵀ − delta)
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
      for (int e = 0; e < 2; e++) {
        const int t = nt * 8 + c + e, qi = q_start + t;
        const bool valid = qi < T;
        const float L = Ls[buf * BM + t] * kLog2e, D = Ds[buf * BM + t];
        const int dsq = valid ? DSs[buf * BM + t] : INT_MAX;
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const int key = r ? key1 : key0, x = 2 * r + e;
          const float p = key >= dsq && key <= qi ? exp2f(st[nt][x] * scale_log2 - L) : 0.0f;
          st[nt][x] = p;
          dpt[nt][x] = p * (dpt[nt][x] - D);
        }
      }
    // dV += Pᵀ dO and dK += dSᵀ Q (k = the 32 queries: two steps of 16)
#pragma unroll
    for (int ks = 0; ks < 2; ks++) {
      const uint32_t pa[4] = {pack_bf16(st[2 * ks][0], st[2 * ks][1]), pack_bf16(st[2 * ks][2], st[2 * ks][3]),
                              pack_bf16(st[2 * ks + 1][0], st[2 * ks + 1][1]),
                              pack_bf16(st[2 * ks + 1][2], st[2 * ks + 1][3])};
      const uint32_t sa[4] = {pack_bf16(dpt[2 * ks][0], dpt[2 * ks][1]), pack_bf16(dpt[2 * ks][2], dpt[2 * ks][3]),
                              pack_bf16(dpt[2 * ks + 1][0], dpt[2 * ks + 1][1]),
                              pack_bf16(dpt[2 * ks + 1][2], dpt[2 * ks + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; dp++) {
        uint32_t bo[4], bq[4];
        ldsm_x4_trans(bo, dOb + sw<HD>(ks * 16 + row_a(lane), dp * 16 + col_a(lane)));
        ldsm_x4_trans(bq, Qb + sw<HD>(ks * 16 + row_a(lane), dp * 16 + col_a(lane)));
        mma_bf16(dv_acc[2 * dp], pa, bo[0], bo[1]);
        mma_bf16(dv_acc[2 * dp + 1], pa, bo[2], bo[3]);
        mma_bf16(dk_acc[2 * dp], sa, bq[0], bq[1]);
        mma_bf16(dk_acc[2 * dp + 1], sa, bq[2], bq[3]);
      }
    }
    // dSᵀ of all 64 keys to shared memory, then dQ (32 × HD) += dS (32 × 64) K: warp w takes queries
    // 16·(w%2).. and dims (HD/2)·(w/2)..
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
      *reinterpret_cast<uint32_t*>(dSs + sw32(kr + g, nt * 8 + c)) = pack_bf16(dpt[nt][0], dpt[nt][1]);
      *reinterpret_cast<uint32_t*>(dSs + sw32(kr + g + 8, nt * 8 + c)) = pack_bf16(dpt[nt][2], dpt[nt][3]);
    }
    __syncthreads();
    const int mq = (warp & 1) * 16, d0 = (warp >> 1) * (HD / 2);
    float dqa[HD / 16][4] = {};
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
      uint32_t a[4];
      ldsm_x4_trans(a, dSs + sw32(ks * 16 + row_b(lane), mq + col_b(lane)));
#pragma unroll
      for (int dp = 0; dp < HD / 32; dp++) {
        uint32_t bk[4];
        ldsm_x4_trans(bk, Ks + sw<HD>(ks * 16 + row_a(lane), d0 + dp * 16 + col_a(lane)));
        mma_bf16(dqa[2 * dp], a, bk[0], bk[1]);
        mma_bf16(dqa[2 * dp + 1], a, bk[2], bk[3]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
      const int qi = q_start + mq + g + 8 * r;
      if (qi >= T) continue;
      float* dst = dq_acc + (((size_t)b * T + qi) * NH + head) * HD + d0 + c;
#pragma unroll
      for (int nt = 0; nt < HD / 16; nt++) {
        atomicAdd(dst + nt * 8, dqa[nt][2 * r]);
        atomicAdd(dst + nt * 8 + 1, dqa[nt][2 * r + 1]);
      }
    }
    __syncthreads();   // the next item's prefetch overwrites this item's buffers, and dSs is rewritten
  }
  cp_wait<0>();
  const int keys[2] = {key0, key1};
#pragma unroll
  for (int r = 0; r < 2; r++) {
    if (keys[r] > last_key) continue;
    const size_t off = ((size_t)b * T + keys[r]) * ld.dkv + (size_t)kvh * HD;
#pragma unroll
    for (int dt = 0; dt < HD / 8; dt++) {
      *reinterpret_cast<uint32_t*>(dk + off + dt * 8 + c) =
          pack_bf16(dk_acc[dt][2 * r] * scale, dk_acc[dt][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + off + dt * 8 + c) = pack_bf16(dv_acc[dt][2 * r], dv_acc[dt][2 * r + 1]);
    }
  }
}

// dq (B·T rows, NH·HD columns, pitch ld) = scale · dq_acc, 8 elements per thread.
__global__ void dq_from_acc_kernel(bf16* dq, const float* acc, size_t n8, int width, int ld, float scale) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n8) return;
  const size_t e = i * 8, row = e / width, col = e % width;
  const float4 a = reinterpret_cast<const float4*>(acc)[2 * i], b = reinterpret_cast<const float4*>(acc)[2 * i + 1];
  uint4 o;
  o.x = pack_bf16(a.x * scale, a.y * scale);
  o.y = pack_bf16(a.z * scale, a.w * scale);
  o.z = pack_bf16(b.x * scale, b.y * scale);
  o.w = pack_bf16(b.z * scale, b.w * scale);
  *reinterpret_cast<uint4*>(dq + row * ld + col) = o;
}

template <int HD> constexpr int forward_smem() { return 3 * 64 * HD * 2; }
template <int HD> constexpr int backward_smem() { return (2 * 64 * HD + 4 * 32 * HD) * 2 + 64 * 32 * 2 + 3 * 2 * 32 * 4; }

template <int HD>
void forward_hd(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v, const int32_t* doc_start, int B,
                int T, int NH, int NKV, const AttnLd& ld, cudaStream_t s) {
  static bool attr = false;   // the opt-in above 48 KB of shared memory, once per process
  if (!attr) {
    CUDA_CHECK(cudaFuncSetAttribute(tiles_forward_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    forward_smem<HD>()));
    attr = true;
  }
  tiles_forward_kernel<HD><<<dim3(ceil_div(T, 64), NH, B), kThreads, forward_smem<HD>(), s>>>(
      out, lse, q, k, v, doc_start, T, NH, NKV, ld, kLog2e / sqrtf(float(HD)));
  CUDA_LAUNCH_CHECK();
}
template <int HD>
void backward_hd(float* dq_acc, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k, const bf16* v,
                 const float* lse, const float* delta, const int32_t* doc_start, int B, int T, int NH, int NKV,
                 const AttnLd& ld, cudaStream_t s) {
  static bool attr = false;
  if (!attr) {
    CUDA_CHECK(cudaFuncSetAttribute(tiles_backward_kernel<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    backward_smem<HD>()));
    attr = true;
  }
  const float scale = 1.0f / sqrtf(float(HD));
  tiles_backward_kernel<HD><<<dim3(ceil_div(T, 64), NKV, B), kThreads, backward_smem<HD>(), s>>>(
      dq_acc, dk, dv, dout, q, k, v, lse, delta, doc_start, T, NH, NKV, ld, scale, scale * kLog2e);
  CUDA_LAUNCH_CHECK();
}

}  // namespace

bool attention_tiles_apply(int HD, int NH, int NKV, const AttnLd& ld, std::initializer_list<const void*> ptrs) {
  if ((HD != 64 && HD != 128) || NKV <= 0 || NH % NKV != 0) return false;
  for (int p : {ld.q, ld.kv, ld.out, ld.dout, ld.dq, ld.dkv})
    if (p % 8 != 0) return false;
  for (const void* p : ptrs)
    if (!is_aligned(p, 16)) return false;
  return true;
}

void launch_attention_tiles_forward(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                                    const int32_t* doc_start, int B, int T, int NH, int NKV, int HD, const AttnLd& ld,
                                    cudaStream_t s) {
  if (B == 0 || T == 0) return;
  if (HD == 128) forward_hd<128>(out, lse, q, k, v, doc_start, B, T, NH, NKV, ld, s);
  else if (HD == 64) forward_hd<64>(out, lse, q, k, v, doc_start, B, T, NH, NKV, ld, s);
  else throw EngineError("attention tiles: head_dim " + std::to_string(HD) + " is not 64 or 128");
}

void launch_attention_tiles_backward(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* q, const bf16* k,
                                     const bf16* v, const bf16* out, const float* lse, const int32_t* doc_start,
                                     float* delta, float* dq_acc, int B, int T, int NH, int NKV, int HD,
                                     const AttnLd& ld, cudaStream_t s) {
  if (B == 0 || T == 0) return;
  launch_attention_delta(delta, dout, out, B, T, NH, HD, ld, s);
  const size_t n = size_t(B) * T * NH * HD;
  CUDA_CHECK(cudaMemsetAsync(dq_acc, 0, n * sizeof(float), s));
  if (HD == 128) backward_hd<128>(dq_acc, dk, dv, dout, q, k, v, lse, delta, doc_start, B, T, NH, NKV, ld, s);
  else if (HD == 64) backward_hd<64>(dq_acc, dk, dv, dout, q, k, v, lse, delta, doc_start, B, T, NH, NKV, ld, s);
  else throw EngineError("attention tiles: head_dim " + std::to_string(HD) + " is not 64 or 128");
  dq_from_acc_kernel<<<ceil_div(n / 8, 256), 256, 0, s>>>(dq, dq_acc, n / 8, NH * HD, ld.dq, 1.0f / sqrtf(float(HD)));
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
