// lora_backward.cu — the two memory-bound LoRA backward products of one projection in ONE pass over dy:
//   dxa (N, 16) = dy · bf16(s·B)        (what the folded forward used for s·B)
//   dB  (out, 16) += s · dyᵀ · xa
// cuBLASLt runs them as two skinny GEMMs that each stream the whole dy (N, out) from HBM at ~2.4 TB/s; for
// gate|up that is 2 × 235 MB per layer of an 8B model. Here each dy tile is loaded once into shared memory and
// feeds both products on the tensor cores (WMMA 16×16×16, fp32 accumulation).
//
// Work split (deterministic, no atomics): the grid is (column strips of kStrip outputs) × (row chunks). A block
// owns one strip and one chunk of rows and walks the chunk kRows rows at a time:
//   warps 0-3: dxa partial of the 64 rows over its strip's 256 outputs → dxa_part[strip] (fp32, final per step);
//   warps 4-7: dB partial of its strip over the chunk's rows, kept in registers → dB_part[chunk] at the end.
// A second kernel sums the partials: dxa = bf16(Σ_strips), dB += s·Σ_chunks. The next dy tile is loaded into
// registers while the current one is multiplied (two shared-memory buffers).
#include <mma.h>
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

namespace {
constexpr int kRank = 16;
constexpr int kStrip = 256;              // outputs per block
constexpr int kRows = 64;                // token rows per step
constexpr int kLdTile = kStrip + 8;      // padded row pitch of the dy tile in shared memory (bank conflicts)
constexpr int kThreads = 256;
constexpr int kTileVec = kRows * kStrip / 8 / kThreads;   // 16-byte vectors of dy per thread per step (8)
constexpr size_t kSmemBytes = 2 * (size_t(kRows) * kLdTile + size_t(kRows) * kRank) * 2 + size_t(kStrip) * kRank * 2;

using namespace nvcuda;

__global__ void __launch_bounds__(kThreads) lora_backward_kernel(float* dxa_part, float* dB_part, const bf16* dy,
                                                                 int ld_dy, const float* B, const bf16* xa, int ld_xa,
                                                                 int N, int out, int rows_per_chunk, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* tile[2] = {reinterpret_cast<bf16*>(smem), reinterpret_cast<bf16*>(smem) + kRows * kLdTile};
  bf16* xtile[2] = {tile[1] + kRows * kLdTile, tile[1] + kRows * kLdTile + kRows * kRank};
  bf16* bs = xtile[1] + kRows * kRank;   // (kStrip, 16) bf16(s·B) of this strip
  const int strip = blockIdx.x, chunk = blockIdx.y, o0 = strip * kStrip;
  const int r_begin = chunk * rows_per_chunk, r_end = min(N, r_begin + rows_per_chunk);
  const int warp = threadIdx.x >> 5;
  for (int i = threadIdx.x; i < kStrip * kRank; i += kThreads)
    bs[i] = __float2bfloat16_rn(scale * B[(size_t)(o0 + i / kRank) * kRank + i % kRank]);

  // one step's dy tile (kRows × kStrip) and xa rows (kRows × 16) as 16-byte vectors: global → registers → smem
  uint4 dv[kTileVec];
  uint4 xv = make_uint4(0, 0, 0, 0);
  auto load = [&](int r0) {
#pragma unroll
    for (int u = 0; u < kTileVec; u++) {
      const int v = threadIdx.x + u * kThreads, row = v / (kStrip / 8), c8 = v % (kStrip / 8);
      dv[u] = *reinterpret_cast<const uint4*>(dy + (size_t)(r0 + row) * ld_dy + o0 + c8 * 8);
    }
    if (threadIdx.x < kRows * kRank / 8) {
      const int row = threadIdx.x / (kRank / 8), c8 = threadIdx.x % (kRank / 8);
      xv = *reinterpret_cast<const uint4*>(xa + (size_t)(r0 + row) * ld_xa + c8 * 8);
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int u = 0; u < kTileVec; u++) {
      const int v = threadIdx.x + u * kThreads, row = v / (kStrip / 8), c8 = v % (kStrip / 8);
      *reinterpret_cast<uint4*>(tile[buf] + row * kLdTile + c8 * 8) = dv[u];
    }
    if (threadIdx.x < kRows * kRank / 8) {
      const int row = threadIdx.x / (kRank / 8), c8 = threadIdx.x % (kRank / 8);
      *reinterpret_cast<uint4*>(xtile[buf] + row * kRank + c8 * 8) = xv;
    }
  };

  // warps 4-7: 4 fragments each of the strip's (kStrip × 16) dB partial, accumulated over all steps
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_db[4];
#pragma unroll
  for (int f = 0; f < 4; f++) wmma::fill_fragment(acc_db[f], 0.0f);

  if (r_begin < r_end) {
    load(r_begin);
    store(0);
  }
  __syncthreads();
  int buf = 0;
  for (int r0 = r_begin; r0 < r_end; r0 += kRows, buf ^= 1) {
    const bool more = r0 + kRows < r_end;
    if (more) load(r0 + kRows);   // in flight while this tile is multiplied
    if (warp < 4) {
      // dxa rows [r0 + 16·warp, +16) over this strip: (16 × kStrip) · (kStrip × 16)
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
#pragma unroll 4
      for (int k = 0; k < kStrip; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(a, tile[buf] + (warp * 16) * kLdTile + k, kLdTile);
        wmma::load_matrix_sync(b, bs + k * kRank, kRank);
        wmma::mma_sync(acc, a, b, acc);
      }
      float* dst = dxa_part + ((size_t)strip * N + r0 + warp * 16) * kRank;
      wmma::store_matrix_sync(dst, acc, kRank, wmma::mem_row_major);
    } else {
      // dB rows [o0 + 16·f', +16) for f' = 4·(warp − 4) + f: (16 × kRows) of dyᵀ · (kRows × 16) of xa
#pragma unroll
      for (int f = 0; f < 4; f++) {
        const int oc = ((warp - 4) * 4 + f) * 16;
#pragma unroll
        for (int k = 0; k < kRows; k += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> a;   // dyᵀ: element (o, n) at n·ld + o
          wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
          wmma::load_matrix_sync(a, tile[buf] + k * kLdTile + oc, kLdTile);
          wmma::load_matrix_sync(b, xtile[buf] + k * kRank, kRank);
          wmma::mma_sync(acc_db[f], a, b, acc_db[f]);
        }
      }
    }
    if (more) store(buf ^ 1);
    __syncthreads();
  }
  if (warp >= 4) {
#pragma unroll
    for (int f = 0; f < 4; f++) {
      const int oc = ((warp - 4) * 4 + f) * 16;
      float* dst = dB_part + ((size_t)chunk * out + o0 + oc) * kRank;
      wmma::store_matrix_sync(dst, acc_db[f], kRank, wmma::mem_row_major);
    }
  }
}

// dxa (N, 16) = bf16(Σ_s dxa_part[s]) with row pitch ld_dxa; dB (out, 16) += scale · Σ_c dB_part[c].
__global__ void lora_backward_reduce_kernel(bf16* dxa, int ld_dxa, float* dB, const float* dxa_part,
                                            const float* dB_part, int N, int out, int strips, int chunks, float scale) {
  const size_t n_dxa = (size_t)N * kRank, n_db = (size_t)out * kRank;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n_dxa + n_db; i += (size_t)gridDim.x * blockDim.x) {
    if (i < n_dxa) {
      float s = 0.0f;
      for (int p = 0; p < strips; p++) s += dxa_part[(size_t)p * n_dxa + i];
      dxa[(i / kRank) * ld_dxa + i % kRank] = __float2bfloat16_rn(s);
    } else {
      const size_t j = i - n_dxa;
      float s = 0.0f;
      for (int p = 0; p < chunks; p++) s += dB_part[(size_t)p * n_db + j];
      dB[j] += scale * s;
    }
  }
}
}  // namespace

bool lora_backward_applies(int N, int out, int r, const void* dy, int ld_dy, const void* xa, int ld_xa) {
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  return r == kRank && N > 0 && N % kRows == 0 && out % kStrip == 0 && ld_dy % 8 == 0 && ld_xa % 8 == 0 &&
         aligned(dy) && aligned(xa);
}

size_t lora_backward_scratch(int N, int out, int* strips, int* chunks, int* rows_per_chunk) {
  *strips = out / kStrip;
  // about two blocks per SM of an H100 in total, but at most 16 chunks: each chunk writes an (out, 16) fp32 dB
  // partial, which for narrow projections (k, v) would otherwise outweigh dy itself; whole kRows steps per chunk
  const int steps = N / kRows;
  const int want_chunks = std::max(1, std::min(std::min(steps, 16), (264 + *strips - 1) / *strips));
  const int steps_per_chunk = (steps + want_chunks - 1) / want_chunks;
  *rows_per_chunk = steps_per_chunk * kRows;
  *chunks = (steps + steps_per_chunk - 1) / steps_per_chunk;
  return ((size_t)*strips * N + (size_t)*chunks * out) * kRank * sizeof(float);
}

void launch_lora_backward(bf16* dxa, int ld_dxa, float* dB, const bf16* dy, int ld_dy, const float* B, const bf16* xa,
                          int ld_xa, int N, int out, float scale, void* scratch, cudaStream_t s) {
  int strips = 0, chunks = 0, rows_per_chunk = 0;
  lora_backward_scratch(N, out, &strips, &chunks, &rows_per_chunk);
  float* dxa_part = static_cast<float*>(scratch);
  float* dB_part = dxa_part + (size_t)strips * N * kRank;
  static bool attr_set = false;   // > 48 KB of dynamic shared memory needs an opt-in (once per process)
  if (!attr_set) {
    CUDA_CHECK(cudaFuncSetAttribute(lora_backward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemBytes));
    attr_set = true;
  }
  lora_backward_kernel<<<dim3(strips, chunks), kThreads, kSmemBytes, s>>>(dxa_part, dB_part, dy, ld_dy, B, xa, ld_xa, N,
                                                                          out, rows_per_chunk, scale);
  CUDA_LAUNCH_CHECK();
  const size_t total = (size_t)(N + out) * kRank;
  lora_backward_reduce_kernel<<<std::min<size_t>(ceil_div(total, 256), 4096), 256, 0, s>>>(
      dxa, ld_dxa, dB, dxa_part, dB_part, N, out, strips, chunks, scale);
  CUDA_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace nxft
