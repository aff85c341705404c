// backend.h — the compute interface shared by the CPU backend (src/backend/cpu/) and the CUDA backend
// (src/backend/cuda/). The model (src/model/transformer.cpp) is written once against this interface.
//
// Design (llm.c style, see ../shared/notes/native.md §1):
// - A Tensor is a view of backend-owned memory: an opaque pointer (host or device), a storage dtype and an
//   element count. It carries no shape; every op takes its sizes explicitly and documents them below.
//   Tensors are plain values; slicing (`slice`) is pointer arithmetic and allocates nothing.
// - The backend chooses storage dtypes by role (`Role`): frozen base weights (CPU: fp32 / f64 for the gradient
//   checks; CUDA: bf16, or NF4 for QLoRA), activations (CPU: fp32; CUDA: bf16). LoRA parameters, their
//   gradients and AdamW moments are always `Role::Param` = fp32 (f64 in the CPU double variant). Small
//   statistics (rmsnorm rstd, attention logsumexp, cross-entropy stats) are `Role::Stat` = fp32.
// - All row-major. Linear weights are HF [out, in]. N = number of tokens (B·T) in the micro-batch.
//   Activations (N, D) are token-major, so q from x·Wqᵀ is already (B, T, NH, HD): no permutes anywhere.
// - Semantics: "writes" overwrites its output; "accumulates" adds (+=) into it (llm.c: backward ops
//   accumulate so residual fan-in and gradient accumulation need no extra logic). Ops may alias only where
//   stated.
// - Ops are asynchronous on a stream-based backend; `download`, `sum_sq` and `synchronize` are the only
//   points where the host waits. Side work and host transfers (below) may overlap the main path.
// - Scalars are passed as float/double host values; the backend rounds them to its compute type.
//
// Fusion guidance for a fast backend (the interface is fine-grained so the CPU reference stays readable;
// a fast backend may fuse *inside* an op, and the model calls ops in this order so epilogues are possible):
//   matmul(beta=1) already fuses residual adds and LoRA adds into the GEMM epilogue, and matmul_ex with C ≠ D
//   writes "residual + projection" without a copy;
//   rmsnorm_forward can be fused with the preceding residual add (the model does add → norm);
//   glu_forward/backward can be fused into the up/gate GEMM epilogue;
//   lora_dropout can be fused into the x·Aᵀ GEMM's A-operand load;
//   ce_* over one vocabulary chunk = online softmax kernel (llm.c fused_classifier, Liger FLCE);
//   attention_* should be a flash kernel (cuDNN SDPA or FA2-style) — never a T×T buffer on GPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>
#include "util/dtype.h"

#if defined(__CUDACC__)
#define NXFT_HD __host__ __device__
#else
#define NXFT_HD
#endif

namespace nxft {

// How a tensor's elements are stored. Plain tensors use `dtype`. 4-bit tensors (QLoRA base weights, only as
// the B operand of matmul) hold packed 4-bit codes (`ptr`, 2 per byte, element 2k in the high nibble: bitsandbytes'
// layout) and one scale per 64 consecutive elements of the row-major weight in `scales` (fp32 on CPU); element i is
// code[q_i]·scales[i/64] (fp32) with the NF4 or FP4 code table (model/quant4.h), in the backend's compute dtype (fp32
// on CPU, bf16 on CUDA) like bitsandbytes' gemm_4bit, which dequantizes to its input's dtype.
enum class Quant { None, NF4, FP4 };

struct Tensor {
  void* ptr = nullptr;      // backend memory (host pointer on CPU, device pointer on CUDA)
  DType dtype = DType::F32; // storage type of each element
  size_t n = 0;             // element count
  Quant quant = Quant::None;
  void* scales = nullptr;   // 4-bit only: absmax per 64-element block
  // 4-bit with double-quantized absmax (bitsandbytes' nested absmax, kept so by backends that save memory with it,
  // CUDA): `scales` holds one uint8 code per 64-block and absmax_j = dynamic_map_signed()[code_j]·scales2[j/256] +
  // scales_offset in fp32 (model/quant4.h double_dequantize). scales2 == nullptr: `scales` is fp32 absmax.
  void* scales2 = nullptr;
  float scales_offset = 0;

  bool empty() const { return ptr == nullptr || n == 0; }
  // Elements [offset, offset+count) as a tensor of their own (plain tensors only).
  Tensor slice(size_t offset, size_t count) const {
    Tensor t = *this;
    t.ptr = static_cast<char*>(ptr) + offset * dtype_size(dtype);
    t.n = count;
    return t;
  }
  // Elements [offset, n): a column block of a row-pitched matrix starts here (k inside the q|k|v rows).
  Tensor from(size_t offset) const { return slice(offset, n - offset); }
};

enum class Role {
  Weight,      // frozen base weight: backend's weight dtype (CPU f32/f64, CUDA bf16)
  Activation,  // activations and their gradients: backend's activation dtype (CPU f32/f64, CUDA bf16)
  Param,       // LoRA parameters, gradients, AdamW m/v: fp32 (f64 in the CPU double variant)
  Stat,        // per-row statistics (rstd, lse, loss): fp32 (f64 in the CPU double variant)
  Index,       // token ids, targets, positions, document starts: i32
};

// The storage dtype of each role on a device backend (CUDA), and in memory plans that count its allocations
// (tests/memory_plan_test.cpp): bf16 weights and activations, fp32 parameters and statistics.
inline DType device_dtype_of(Role role) {
  switch (role) {
    case Role::Weight:
    case Role::Activation: return DType::BF16;
    case Role::Param:
    case Role::Stat: return DType::F32;
    case Role::Index: return DType::I32;
  }
  return DType::F32;
}

enum class Glu { SwiGLU, GeGLUTanh };  // silu(gate)·up (llama/qwen2/mistral) | gelu_tanh(gate)·up (gemma)

// Counter-based RNG for LoRA dropout: the keep/drop decision of element `index` is a pure function of
// (seed, index), so forward and backward (and CPU and CUDA) draw identical masks without storing them.
// splitmix64 finalizer over seed ⊕ golden-ratio·index; top 24 bits → uniform in [0, 1).
NXFT_HD inline float counter_uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z = z ^ (z >> 31);
  return float(z >> 40) * (1.0f / 16777216.0f);
}

// The stored shapes of matmul_ex's operands with 0 leading dimensions resolved to the packed row length, and
// how many elements each operand spans ((rows − 1)·ld + cols). ok is false when a given ld is shorter than its
// row. Shared by the backends so both read the same elements.
struct MatmulLayout {
  int a_rows, a_cols, b_rows, b_cols, lda, ldb, ldd;
  size_t span_a, span_b, span_d;
  bool ok;
};
inline MatmulLayout matmul_layout(int M, int N, int K, bool trans_a, bool trans_b, int lda, int ldb, int ldd) {
  MatmulLayout l;
  l.a_rows = trans_a ? K : M, l.a_cols = trans_a ? M : K;
  l.b_rows = trans_b ? N : K, l.b_cols = trans_b ? K : N;
  l.lda = lda ? lda : l.a_cols, l.ldb = ldb ? ldb : l.b_cols, l.ldd = ldd ? ldd : N;
  l.ok = l.lda >= l.a_cols && l.ldb >= l.b_cols && l.ldd >= N;
  auto span = [](int rows, int cols, int ld) { return rows == 0 || cols == 0 ? size_t(0) : size_t(rows - 1) * ld + cols; };
  l.span_a = span(l.a_rows, l.a_cols, l.lda);
  l.span_b = span(l.b_rows, l.b_cols, l.ldb);
  l.span_d = span(M, N, l.ldd);
  return l;
}

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- identity and memory ---------------------------------------------------------------------------
  virtual std::string name() const = 0;          // "cpu" | "cuda"
  virtual std::string device() const = 0;        // human-readable, e.g. "cpu (2 threads)" or "NVIDIA H100 …"
  virtual int threads() const = 0;               // CPU worker threads (0 on GPU backends)
  virtual DType dtype_of(Role role) const = 0;   // storage dtype the backend uses for a role
  virtual Tensor alloc(size_t n, Role role) = 0; // uninitialized; freed by free() or at backend destruction
  virtual void free(Tensor& t) = 0;              // sets t to empty
  // A Weight-role table that only embedding_forward reads (the token embedding when it is not the head too). A
  // device backend may keep it in page-locked host memory that its kernel reads over the bus: a step reads N rows,
  // not the V×C table (1 GiB of device memory at Llama-3-8B, a sixth of QLoRA's). Default: alloc(n, Role::Weight).
  virtual Tensor alloc_gather_table(size_t n) { return alloc(n, Role::Weight); }
  virtual size_t bytes_in_use() const = 0;       // backend memory currently allocated
  virtual size_t peak_bytes() const = 0;         // high-water mark of bytes_in_use (device memory on GPU)
  virtual void synchronize() = 0;                // wait for all queued work

  // ---- concurrency (a stream backend overlaps; the CPU backend runs every op in call order) ---------------
  // Side work: ops issued between side_begin() and side_end() start after all work issued so far, and their
  // results are read by nothing before the next side_join() (the model issues LoRA weight gradients this way:
  // only the optimizer reads them). The CUDA backend runs them on a second, low-priority stream, beside the
  // main path's compute-bound GEMMs. The caller must side_join() before the main path overwrites anything that
  // side work reads, and before reading what it wrote.
  virtual void side_begin() {}
  virtual void side_end() {}
  virtual void side_join() {}

  // Host staging for activation offload (page-locked memory on CUDA). A transfer moves n elements of the
  // tensor's storage dtype as raw bytes; it starts after all work issued so far and runs beside later work.
  // wait_transfers() makes all later work wait for every transfer issued so far. Host memory must outlive
  // the transfers that use it.
  virtual void* alloc_host(size_t bytes) = 0;
  virtual void free_host(void* p) = 0;
  virtual void to_host_async(void* dst, const Tensor& src, size_t n) = 0;
  virtual void from_host_async(const Tensor& dst, const void* src, size_t n) = 0;
  virtual void wait_transfers() = 0;

  // ---- transfers (host values are converted to/from the tensor's storage dtype) ------------------------
  // dst[offset .. offset+n) = src[0..n). Float sources work for every float role; int32 only for Index.
  virtual void upload(const Tensor& dst, const float* src, size_t n, size_t offset = 0) = 0;
  virtual void upload(const Tensor& dst, const double* src, size_t n, size_t offset = 0) = 0;
  virtual void upload(const Tensor& dst, const int32_t* src, size_t n, size_t offset = 0) = 0;
  // Rows of dst with pitch ld (elements) = src (rows, cols) as bf16 bits: a weight read straight from a bf16
  // checkpoint (the columns from cols to ld are left as they are). This default converts through fp32; the CUDA
  // backend, whose weights are bf16, copies the bits through page-locked staging (no fp32 copy on the host).
  virtual void upload_bf16_rows(const Tensor& dst, const uint16_t* src, int rows, int cols, int ld) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int r = 0; r < rows; r++) {
      for (int c = 0; c < cols; c++) {
        const uint32_t bits = uint32_t(src[size_t(r) * cols + c]) << 16;
        std::memcpy(&row[size_t(c)], &bits, 4);
      }
      upload(dst, row.data(), size_t(cols), size_t(r) * ld);
    }
  }
  // dst[0..n) = src[offset .. offset+n). Synchronizes.
  virtual void download(const Tensor& src, float* dst, size_t n, size_t offset = 0) = 0;
  virtual void download(const Tensor& src, double* dst, size_t n, size_t offset = 0) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src, size_t n) = 0;  // dst[0..n) = src[0..n), same role
  // dst[i·ld_dst + j] = src[i·ld_src + j] for i < rows, j < cols (same role): a column block of one matrix into
  // another (the new tokens' k and v from the q|k|v projection output into the KV cache).
  virtual void copy_2d(const Tensor& dst, int ld_dst, const Tensor& src, int ld_src, int rows, int cols) = 0;
  virtual void fill(const Tensor& dst, float value, size_t n) = 0;      // dst[0..n) = value
  // Quantize fp32 host weights (rows, cols) to NF4 blockwise-64 (native.md §4.1); returns a Quant::NF4
  // tensor usable only as matmul's B operand. double_quant: the absmax double-quantized too, as bitsandbytes'
  // bnb_4bit_use_double_quant (model/quant4.h double_quantize), so the weight dequantizes to exactly what a
  // double-quantized checkpoint of the same base does. Backends without QLoRA throw EngineError.
  virtual Tensor upload_nf4(const float* w, int rows, int cols, bool double_quant) = 0;
  // A weight (rows, cols) already quantized on the host (a pre-quantized bitsandbytes checkpoint, or
  // quantize_nf4 in model/quant4.h): packed codes ((rows·cols+1)/2 bytes), absmax per 64 elements, quant NF4 or
  // FP4. Backends without QLoRA (or without FP4) throw EngineError.
  virtual Tensor upload_4bit(const uint8_t* packed, const float* absmax64, Quant quant, int rows, int cols) = 0;
  // The same with the absmax double-quantized (a bitsandbytes checkpoint's nested absmax with blocksize 64 and
  // nested blocksize 256, or double_quantize's result): absmax_j = dynamic_map_signed()[absmax_q[j]]·absmax2[j/256]
  // + offset. This default expands the absmax (double_dequantize's arithmetic) and calls upload_4bit; the CUDA
  // backend keeps the 8-bit form on the device (1 byte per 64 values instead of 4) and dequantizes it in the GEMM.
  virtual Tensor upload_4bit_nested(const uint8_t* packed, const uint8_t* absmax_q, const float* absmax2, float offset,
                                    Quant quant, int rows, int cols);

  // ---- matmul: the workhorse ---------------------------------------------------------------------------
  // D (M,N) = alpha · op(A) · op(B) + beta · C, row-major, accumulated in fp32 (f64 in the double variant).
  //   op(A) is (M,K): A stored (M,K), or stored (K,M) when trans_a.
  //   op(B) is (K,N): B stored (K,N), or stored (N,K) when trans_b.
  //   lda, ldb, ldd: elements between consecutive stored rows of A, B and D (0 = packed: the stored row
  //   length). A leading dimension larger than the row length addresses a column block of a wider matrix,
  //   e.g. the r columns of one projection inside the (N, 3r) LoRA activations of q|k|v.
  //   C is read with D's layout (ldd). C may be D itself (in-place accumulate) or a different tensor that
  //   does not overlap D: D = x + o_proj(att) without first copying x into D.
  // Uses: y = x·Wᵀ (trans_b, W [out,in]); dx = dy·W; dW = dyᵀ·x (trans_a, beta=1 to accumulate).
  // Dtypes may mix (bf16 × fp32 → fp32 for LoRA grads on CUDA); B may be NF4 (dequantized on the fly; packed
  // only). beta == 0 ignores C's old contents (NaN-safe). alpha multiplies the finished dot product (alpha·Σ),
  // like torch's addmm. For beta ≠ 0 the sum is formed as alpha·Σ + beta·C.
  virtual void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K,
                         bool trans_a, bool trans_b, float alpha, float beta, int lda, int ldb, int ldd) = 0;
  // C (M,N) = alpha · op(A) · op(B) + beta · C with packed operands (the common case).
  void matmul(const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K, bool trans_a, bool trans_b,
              float alpha, float beta) {
    matmul_ex(c, c, a, b, M, N, K, trans_a, trans_b, alpha, beta, 0, 0, 0);
  }

  // ---- embedding ---------------------------------------------------------------------------------------
  // out (N,C) = table[ids[i]] · scale. table (V,C) Weight, ids (N) Index. scale = 1 or gemma's √C, which the
  // backend first rounds to its activation dtype (transformers: torch.tensor(C**0.5, dtype=hidden.dtype)).
  // No backward: the embedding is frozen. Ids outside [0,V) are a caller bug (the trainer validates ids).
  virtual void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, int N, int C,
                                 double scale) = 0;

  // ---- rows by index (the LM head runs only on the rows that have a target; transformer.cpp head_loss) ----------
  // out (n, C) WRITES out[i] = src[rows[i]] for rows[i] ≥ 0 and zeros for rows[i] = -1. src (·, C), rows (n) Index
  // with every rows[i] < src's row count; out and src have the same dtype and do not overlap. One op serves both
  // directions: gather (rows = the target rows, n = M) and scatter back with zero fill (rows = each row's position
  // among the target rows or -1, n = N).
  virtual void gather_rows(const Tensor& out, const Tensor& src, const Tensor& rows, int n, int C) = 0;

  // ---- RMSNorm (HF: x · rsqrt(mean(x²) + eps) in fp32, then × w, or × (1 + w) for gemma) ----------------
  // out (N,C) writes, row pitch ld_out (0 = C: packed); rstd (N) Stat writes 1/sqrt(mean(x²)+eps); x (N,C);
  // w (C) Weight. A wider ld_out leaves room after each row (the LoRA columns of a folded projection).
  // Llama downcasts the normalized x to the activation dtype before × w; gemma multiplies by (1+w) in fp32
  // first (only differs for bf16 backends).
  virtual void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w,
                               int N, int C, double eps, bool plus_one, int ld_out) = 0;
  // dx (N,C) ACCUMULATES the input gradient, row pitch ld_dx (0 = C); dout (N,C); x, w, rstd as in forward.
  // No weight gradient. (The model's residual gradient has spare columns after each row: see transformer.h.)
  virtual void rmsnorm_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, const Tensor& w,
                                const Tensor& rstd, int N, int C, bool plus_one, int ld_dx) = 0;

  // ---- elementwise -------------------------------------------------------------------------------------
  // y[i] += alpha · x[i] for i < n (same role).
  virtual void add(const Tensor& y, const Tensor& x, size_t n, float alpha = 1.0f) = 0;
  // y (N,D) += bias (D) broadcast over rows (qwen2 q/k/v bias). No backward (bias frozen).
  virtual void add_bias(const Tensor& y, const Tensor& bias, int N, int D) = 0;
  // y[i] *= s for i < n (gradient clipping; fp32 params only).
  virtual void scale(const Tensor& y, float s, size_t n) = 0;

  // ---- RoPE, HF rotate-half layout: pairs (i, i + HD/2), angle = pos · inv_freq[i] ------------------------
  // x (N, H, HD) rotated IN PLACE, row pitch ld (0 = H·HD): q|k as the first NH + NKV heads of the (N, qd + 2·kvd)
  // q|k|v projection output rotate in one call. positions (N) Index; inv_freq (HD/2) Stat (llama3 scaling applied).
  // cos/sin are computed in fp32 as transformers does: freq = float(pos) · inv_freq, emb = cat(freq, freq).
  //   out[i] = x[i]·cos − x[i+HD/2]·sin,  out[i+HD/2] = x[i+HD/2]·cos + x[i]·sin   (i < HD/2)
  virtual void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, int N, int H,
                            int HD, int ld) = 0;
  // dx (N, H, HD) IN PLACE, row pitch ld: the transpose rotation (angle → −angle) maps d(out) to d(x).
  virtual void rope_backward(const Tensor& dx, const Tensor& positions, const Tensor& inv_freq, int N, int H,
                             int HD, int ld) = 0;

  // ---- causal GQA attention with packed documents -------------------------------------------------------
  // Row pitches of the token-major operands (elements from one token's row to the next; 0 = packed, H·HD):
  // q|k|v may be column blocks of the one (N, qd + 2·kvd) projection output, dq|dk|dv of one gradient buffer,
  // out may have spare columns after each row (o_proj's folded LoRA input). Shapes below are logical.
  struct AttnPitch {
    int q = 0, kv = 0, out = 0;      // q; k and v (the KV cache: its own packed rows); out (written, then read)
    int dout = 0, dq = 0, dkv = 0;   // backward only: dout; dq; dk and dv
  };
  // q (B,Tq,NH,HD); k, v (B,Tk,NKV,HD) with row stride Tk_stride ≥ Tk (a KV cache has capacity Tk_stride);
  // out (B,Tq,NH,HD) writes; lse (B,NH,Tq) Stat writes the logsumexp of the scaled scores of each query row.
  // Query i of row b sits at key index q_offset + i and attends keys j with
  //   doc_start[b,i] ≤ j ≤ q_offset + i,
  // where doc_start (B,Tq) Index is the key index where the query's document begins (the model derives it
  // from positions: a token with position 0 starts a document). Training: Tq = Tk, q_offset = 0.
  // Generation with a KV cache: B = 1, q_offset = tokens already cached, doc_start = 0.
  // Head h of q uses kv head h / (NH/NKV). Scores are scaled by 1/√HD; softmax in fp32.
  // Fast backends must not materialize (Tq, Tk) scores (flash attention); the CPU reference may.
  virtual void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const Tensor& doc_start, int B, int Tq, int Tk,
                                 int Tk_stride, int q_offset, int NH, int NKV, int HD, const AttnPitch& pitch) = 0;
  // Training shape only (Tq = Tk = T, q_offset = 0). dq (B,T,NH,HD), dk, dv (B,T,NKV,HD) WRITE (dk/dv sum
  // over the query heads sharing a kv head). dout, q, k, v, out, lse, doc_start as in forward.
  virtual void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                                  const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                  const Tensor& lse, const Tensor& doc_start, int B, int T, int NH, int NKV,
                                  int HD, const AttnPitch& pitch) = 0;

  // ---- gated MLP activation --------------------------------------------------------------------------------
  // out (N,F) = act(gate) · up, act = silu | gelu_tanh (0.5·g·(1+tanh(√(2/π)·(g+0.044715·g³)))). Writes out
  // with row pitch ld_out (0 = F: packed); gate and up are read with row pitch ld_in (0 = F): the model passes
  // the two halves of the one (N, 2F) gate|up projection output.
  virtual void glu_forward(const Tensor& out, const Tensor& gate, const Tensor& up, int N, int F, Glu act,
                           int ld_out, int ld_in) = 0;
  // dgate, dup (N,F) WRITE with row pitch ld_dgu (0 = F); dout (N,F) packed; gate, up (N,F) with row pitch ld_in.
  // dgate may not alias gate; dup may not alias up.
  virtual void glu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate,
                            const Tensor& up, int N, int F, Glu act, int ld_in, int ld_dgu) = 0;

  // ---- LoRA dropout (the LoRA path itself is composed by the model from matmuls) -------------------------
  // LoRA: y (N,out) += scale · (drop(x) · Aᵀ) · Bᵀ with A (r,in), B (out,r) fp32 Params.
  //   forward:  xa (N,r) = drop(x)·Aᵀ;  y += scale · xa·Bᵀ              (matmul alpha=scale, beta=1)
  //   backward: dB += scale · dyᵀ·xa;  dxa = scale · dy·B;  dA += dxaᵀ·drop(x);  dx += drop(dxa·A)
  // drop(x)[i] = x[i] / (1 − p) where counter_uniform(seed, i) ≥ p, else 0 (i = flat index in (N,in)).
  // out (N,D) writes; x (N,D). p = 0 is a plain copy (the model skips the call then).
  virtual void lora_dropout(const Tensor& out, const Tensor& x, int N, int D, float p, uint64_t seed) = 0;

  // ---- LoRA folded into the base weight ---------------------------------------------------------------------
  // A folded projection keeps W_ext = [W | … s·B_t …] (out, in + g·r) so y = [x | xa]·W_extᵀ is ONE GEMM (the
  // LoRA up-projection rides along as g·r extra K columns). After the LoRA parameters change, the model writes
  // s·B_t into its column block of W_ext. Per job: dst[i·ld + col0 + j] = scale·src[i·cols + j] for i < rows,
  // j < cols; src is an fp32 Param, dst a Weight (rounded to the weight dtype).
  struct ColumnBlockWrite {
    Tensor dst;
    int ld = 0, col0 = 0;
    Tensor src;
    int rows = 0, cols = 0;
  };
  virtual void write_column_blocks(const ColumnBlockWrite* jobs, int n_jobs, float scale) = 0;

  // ---- cross-entropy over vocabulary chunks (never the full (N,V) logits for a big vocabulary) -----------
  // The model computes logits for a block of n tokens and a chunk of vocabulary [v0, v0+Vc):
  //   logits (n,Vc) = h (n,C) · W[v0:v0+Vc]ᵀ  (matmul), then:
  // ce_stats: online logsumexp. run_max, run_sum (n) Stat carry max and Σexp(l − max) across chunks
  // (initialize with fill(-inf) and fill(0)); target_logit (n) Stat receives logits[t, target−v0] when the
  // target falls in this chunk. targets (n) Index, -100 = ignored (its row is skipped).
  virtual void ce_stats(const Tensor& logits, const Tensor& targets, const Tensor& run_max,
                        const Tensor& run_sum, const Tensor& target_logit, int n, int Vc, int v0) = 0;
  // After the last chunk: loss (n) Stat writes lse − target_logit for valid targets, 0 for ignored ones;
  // lse (n) Stat writes max + log(sum) (kept for ce_grad).
  virtual void ce_finish(const Tensor& loss, const Tensor& lse, const Tensor& run_max, const Tensor& run_sum,
                         const Tensor& target_logit, const Tensor& targets, int n) = 0;
  // IN PLACE: logits (n,Vc) → dlogits = (softmax − onehot(target)) · grad_scale, 0 for ignored rows.
  // grad_scale = 1/N_target_tokens of the optimizer step. Then the model does dh += dlogits·W[v0:v0+Vc].
  // With one vocabulary chunk (Vc = V) the model fuses forward and backward: stats, finish, grad on the same
  // logits buffer (no recompute). With several chunks it recomputes each chunk's logits for ce_grad.
  virtual void ce_grad(const Tensor& logits, const Tensor& targets, const Tensor& lse, int n, int Vc, int v0,
                       float grad_scale) = 0;

  // ---- optimizer ---------------------------------------------------------------------------------------
  // Σ x[i]² over i < n, accumulated in double; returns on the host (synchronizes).
  virtual double sum_sq(const Tensor& x, size_t n) = 0;
  // torch.optim.AdamW (foreach, non-capturable) on n fp32 Params, step t ≥ 1:
  //   g = grad·grad_scale (clip coefficient, 1 = none);  p *= 1 − lr·wd;  m = m + (1−β1)(g − m) (lerp);
  //   v = v·β2 + (1−β2)·g·g;  denom = sqrt(v)/sqrt(1−β2^t) + eps;  p += (−lr/(1−β1^t)) · m / denom.
  // Bias corrections computed in double on the host, then rounded to fp32, as torch does with Python scalars.
  virtual void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, size_t n,
                          double lr, double beta1, double beta2, double eps, double weight_decay, int64_t t,
                          float grad_scale) = 0;
};

// CPU backend (fp32), `threads` workers (0 = all cores). Deterministic for a given thread count.
std::unique_ptr<Backend> make_cpu_backend(int threads);
// CPU backend computing everything in double (finite-difference gradient checks).
std::unique_ptr<Backend> make_cpu_backend_f64(int threads);
// "cpu" | "cuda" | "auto" (cuda when compiled in and a device is present, else cpu). Throws EngineError for
// "cuda" without a usable device. Implemented in src/backend/select.cpp; the CUDA backend provides
// make_cuda_backend() in src/backend/cuda/ when NXFT_HAVE_CUDA is defined.
std::unique_ptr<Backend> make_backend(const std::string& which, int threads);
#if defined(NXFT_HAVE_CUDA)
std::unique_ptr<Backend> make_cuda_backend();   // nullptr when no device is present
#endif

}  // namespace nxft
