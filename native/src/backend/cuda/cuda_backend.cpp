// cuda_backend.cpp — the Backend interface (backend.h) on one NVIDIA GPU.
// Storage by role: Weight and Activation bf16, Param and Stat fp32, Index int32 (backend.h "Design").
// Every op is asynchronous on one stream; matmuls go through cuBLASLt (gemm.cu); attention through our tensor-core
// tile kernels for packed rows of short documents (attention_tiles.cu), cuDNN SDPA for plain causal rows and
// packed rows of long documents when available (cudnn_attention.cpp, packed_docs.cpp), and the portable
// flash-style kernels otherwise (attention.cu); everything else is our own kernels (one .cu per concern).
#include <cuda_runtime.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>
#include "backend/backend.h"
#include "backend/device_pool.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/gemm.cuh"
#include "backend/cuda/kernels.cuh"
#include "util/backends.h"
#include "model/quant4.h"
#include "util/events.h"
#if defined(NXFT_HAVE_CUDNN)
#include "backend/cuda/cudnn_attention.h"
#include "backend/cuda/packed_docs.h"
#endif
#include "backend/packed_documents.h"

namespace nxft {

bool cuda_backend_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

namespace cuda {
namespace {

using nxft::cuda::bf16;

// ---- device memory: the caching pool of backend/device_pool.h over cudaMalloc / cudaFree ----------------------
void* cuda_raw_alloc(size_t bytes, void*) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();  // clear the error: the pool releases its cache and retries, or reports out of memory
    return nullptr;
  }
  return p;
}
void cuda_raw_free(void* p, void*) { cudaFree(p); }

// Per-op device timing with events (only when enabled: the events cost a little launch time).
struct OpStats {
  double ms = 0, flops = 0;
  long calls = 0;
};

class CudaBackend : public Backend {
 public:
  CudaBackend() : mem_(cuda_raw_alloc, cuda_raw_free, nullptr, device_memory_cap_from_env()) {
    // NXFT_CUDA_DEVICE: the GPU of this process (a data-parallel launcher gives each rank its own); default 0.
    int dev = 0;
    if (const char* d = std::getenv("NXFT_CUDA_DEVICE")) {
      char* end = nullptr;
      dev = int(std::strtol(d, &end, 10));
      int n = 0;
      cudaGetDeviceCount(&n);
      if (*end || dev < 0 || dev >= n)
        throw EngineError(std::string("NXFT_CUDA_DEVICE=") + d + ": no such device (" + std::to_string(n) + " visible)", "", "NXFT_CUDA_DEVICE");
    }
    CUDA_CHECK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    device_ = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
              std::to_string(prop.totalGlobalMem >> 30) + " GiB)";
    // The main stream gets the highest priority: when side work (LoRA weight gradients) and main-path blocks
    // are both waiting for an SM, the main path's go first, and side work fills what the main path leaves idle.
    int prio_low = 0, prio_high = 0;
    CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&prio_low, &prio_high));
    CUDA_CHECK(cudaStreamCreateWithPriority(&main_stream_, cudaStreamNonBlocking, prio_high));
    stream_ = main_stream_;
    side_prio_ = prio_low;
    gemm_ = std::make_unique<Gemm>(main_stream_, &mem_);
    set_dynamic_map(dynamic_map_signed().data());   // double-quantized absmax (nf4.cu)
    const char* side = std::getenv("NXFT_SIDE_STREAM");
    side_enabled_ = !(side && std::string(side) == "0");
    d_sum_ = static_cast<double*>(mem_.get(sizeof(double) * (kSumSqBlocks + 1), "sum_sq partials"));
    const char* no_cudnn = std::getenv("NXFT_NO_CUDNN");
    const char* packed = std::getenv("NXFT_CUDNN_PACKED");  // 0: packed documents take the portable kernels
    cudnn_packed_ = !(packed && std::string(packed) == "0");
    // Packed documents take the tensor-core tile kernels (attention_tiles.cu) when their tiles are at most
    // kTilesMaxWorkFraction of a whole row's (short documents), else cuDNN's ragged attention once the shape's
    // rent is paid (tiles_take). NXFT_ATTN_TILES=1 sends every packed batch to the tiles, =0 none (A/B switches;
    // cuda_parity runs both).
    if (const char* tiles = std::getenv("NXFT_ATTN_TILES"); tiles && *tiles) {
      const std::string t = tiles;
      if (t != "auto" && t != "0" && t != "1") throw EngineError("NXFT_ATTN_TILES: '" + t + "' is not auto, 0 or 1");
      tiles_mode_ = t == "auto" ? kTilesAuto : t == "1" ? kTilesAlways : kTilesNever;
    }
    const char* packed_mha = std::getenv("NXFT_CUDNN_PACKED_MHA");
    cudnn_packed_mha_ = packed_mha && std::string(packed_mha) == "1";
    if (const char* d = std::getenv("NXFT_ATTN_DECODE")) {
      const std::string c = d;
      if (c != "split" && c != "portable") throw EngineError("NXFT_ATTN_DECODE: '" + c + "' is not split or portable");
      decode_split_ = c == "split";
    }
    if (const char* pc = std::getenv("NXFT_CUDNN_PACKED_COPY")) {
      const std::string c = pc;
      if (c == "all") packed_copy_ = kCopyAll;
      else if (c == "in") packed_copy_ = kCopyInputs;
      else if (c == "out") packed_copy_ = kCopyOutputs;
      else if (c == "none") packed_copy_ = 0;
      else throw EngineError("NXFT_CUDNN_PACKED_COPY: '" + c + "' is not all, in, out or none");
    }
#if defined(NXFT_HAVE_CUDNN)
    if (no_cudnn && std::string(no_cudnn) == "1") {
      attention_path_ = "portable (NXFT_NO_CUDNN=1)";
    } else {
      std::string why;
      cudnn_ = make_cudnn_attention(stream_, &mem_, &why);
      attention_path_ = cudnn_ ? "cudnn " + cudnn_->version() : "portable (cuDNN unusable: " + why + ")";
    }
#else
    (void)no_cudnn;
    attention_path_ = "portable (built without cuDNN)";
#endif
    const char* ru = std::getenv("NXFT_RANK_UPDATE");
    rank_update_enabled_ = ru && std::string(ru) == "1";
    const char* prof = std::getenv("NXFT_CUDA_PROFILE");
    profile_ = prof && std::string(prof) == "1";
  }
  ~CudaBackend() override {
    synchronize();
    for (cudaEvent_t e : {fork_ev_, side_done_ev_, copy_fork_ev_, copy_done_ev_, ext_ev_, ext_done_ev_})
      if (e) cudaEventDestroy(e);
    for (int i = 0; i < 2; i++) {
      if (stage_[i]) cudaFreeHost(stage_[i]);
      if (stage_ev_[i]) cudaEventDestroy(stage_ev_[i]);
    }
    for (auto& kv : host_tables_) cudaFreeHost(kv.second);   // tables whose tensors outlive the backend
    // scratch_, d_sum_ and every tensor still allocated go back with mem_
  }

  std::string name() const override { return "cuda"; }
  std::string device() const override { return device_; }
  int threads() const override { return 0; }
  DType dtype_of(Role role) const override { return device_dtype_of(role); }
  Tensor alloc(size_t n, Role role) override {
    Tensor t;
    t.dtype = dtype_of(role);
    t.n = n;
    if (n == 0) return t;
    t.ptr = mem_.get(n * dtype_size(t.dtype));
    return t;
  }
  // Page-locked, mapped host memory: the embedding kernel reads the batch's rows over the bus. Transfers to and
  // from it work because uploads and downloads pass cudaMemcpyDefault (UVA tells host from device memory).
  Tensor alloc_gather_table(size_t n) override {
    Tensor t;
    t.dtype = DType::BF16;
    t.n = n;
    if (n == 0) return t;
    void* host = nullptr;
    if (cudaHostAlloc(&host, n * 2, cudaHostAllocMapped) != cudaSuccess) {
      cudaGetLastError();
      throw EngineError("cuda: cannot allocate " + std::to_string((n * 2) >> 20) + " MiB of page-locked host memory for "
                        "the embedding table (embedding_in_host_memory)");
    }
    void* dev = nullptr;
    CUDA_CHECK(cudaHostGetDevicePointer(&dev, host, 0));
    host_tables_[dev] = host;
    t.ptr = dev;
    return t;
  }
  void free(Tensor& t) override {
    auto host = t.ptr ? host_tables_.find(t.ptr) : host_tables_.end();
    if (host != host_tables_.end()) {
      synchronize();   // queued kernels may still read it
      cudaFreeHost(host->second);
      host_tables_.erase(host);
      t = Tensor();
      return;
    }
    if (t.ptr) {
      // the stream may still use the memory: the allocator hands it out again only to later stream work,
      // which is ordered after the current work on the same stream.
      forget_index(t.ptr);
      if (t.dtype == DType::F32) invalidate_bf16_cache(t.ptr, t.n * 4);
      mem_.put(t.ptr);
    }
    if (t.scales) mem_.put(t.scales);
    if (t.scales2) mem_.put(t.scales2);
    t = Tensor();
  }
  size_t bytes_in_use() const override { return mem_.live(); }
  size_t peak_bytes() const override { return mem_.peak_reserved(); }
  void synchronize() override {
    CUDA_CHECK(cudaStreamSynchronize(main_stream_));
    if (side_stream_) CUDA_CHECK(cudaStreamSynchronize(side_stream_));
    if (copy_stream_) CUDA_CHECK(cudaStreamSynchronize(copy_stream_));
  }

  // ---- side work and host transfers (see backend.h) -------------------------------------------------------
  // Side work runs on side_stream_, its GEMMs on the Gemm's side lane (its own cuBLASLt workspace). Disabled by
  // NXFT_SIDE_STREAM=0 and while profiling (the per-op profile times one stream).
  void side_begin() override {
    if (!side_enabled_ || profile_ || in_side_) return;
    if (!side_stream_) {
      CUDA_CHECK(cudaStreamCreateWithPriority(&side_stream_, cudaStreamNonBlocking, side_prio_));
      CUDA_CHECK(cudaEventCreateWithFlags(&fork_ev_, cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&side_done_ev_, cudaEventDisableTiming));
      gemm_->add_side_lane(side_stream_);
    }
    CUDA_CHECK(cudaEventRecord(fork_ev_, main_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(side_stream_, fork_ev_, 0));
    stream_ = side_stream_;
    gemm_->use_side_lane(true);
    in_side_ = true;
  }
  void side_end() override {
    if (!in_side_) return;
    CUDA_CHECK(cudaEventRecord(side_done_ev_, side_stream_));
    stream_ = main_stream_;
    gemm_->use_side_lane(false);
    in_side_ = false;
    side_pending_ = true;
  }
  void side_join() override {
    if (!side_pending_) return;
    CUDA_CHECK(cudaStreamWaitEvent(main_stream_, side_done_ev_, 0));
    side_pending_ = false;
  }
  // Ordering against work on a stream the backend does not own (dist/nccl_collective.cpp), see cuda_backend.h.
  void external_waits_for_backend(cudaStream_t s) {
    if (!ext_ev_) CUDA_CHECK(cudaEventCreateWithFlags(&ext_ev_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(ext_ev_, main_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(s, ext_ev_, 0));
    if (side_pending_) CUDA_CHECK(cudaStreamWaitEvent(s, side_done_ev_, 0));   // side work not yet joined
  }
  void backend_waits_for_external(cudaStream_t s) {
    if (!ext_done_ev_) CUDA_CHECK(cudaEventCreateWithFlags(&ext_done_ev_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(ext_done_ev_, s));
    CUDA_CHECK(cudaStreamWaitEvent(main_stream_, ext_done_ev_, 0));
  }
  void* alloc_host(size_t bytes) override {
    void* p = nullptr;
    if (cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      throw EngineError("cuda: cannot allocate " + std::to_string(bytes >> 20) + " MiB of page-locked host memory "
                        "for activation offload");
    }
    return p;
  }
  void free_host(void* p) override {
    if (p) cudaFreeHost(p);
  }
  void to_host_async(void* dst, const Tensor& src, size_t n) override {
    check_range(src, n, 0, "to_host_async");
    transfer(dst, src.ptr, n * dtype_size(src.dtype), cudaMemcpyDeviceToHost);
  }
  void from_host_async(const Tensor& dst, const void* src, size_t n) override {
    check_range(dst, n, 0, "from_host_async");
    transfer(dst.ptr, src, n * dtype_size(dst.dtype), cudaMemcpyHostToDevice);
  }
  void wait_transfers() override {
    if (!copy_pending_) return;
    CUDA_CHECK(cudaStreamWaitEvent(main_stream_, copy_done_ev_, 0));
    copy_pending_ = false;
  }

  // ---- transfers ---------------------------------------------------------------------------------------
  template <typename S> void upload_float(const Tensor& dst, const S* src, size_t n, size_t offset) {
    check_range(dst, n, offset, "upload");
    size_t es = dtype_size(dst.dtype);
    staging_.resize(n * es);
    if (dst.dtype == DType::BF16) {
      // Big weights (an 8B base is 8e9 values) convert on all cores.
      uint16_t* o = reinterpret_cast<uint16_t*>(staging_.data());
      size_t nt = n > (size_t(1) << 22) ? std::max(1u, std::thread::hardware_concurrency()) : 1;
      std::vector<std::thread> pool;
      for (size_t t = 0; t < nt; t++)
        pool.emplace_back([=] {
          for (size_t i = n * t / nt; i < n * (t + 1) / nt; i++) o[i] = f32_to_bf16(float(src[i]));
        });
      for (auto& th : pool) th.join();
    } else if (dst.dtype == DType::F32) {
      float* o = reinterpret_cast<float*>(staging_.data());
      for (size_t i = 0; i < n; i++) o[i] = float(src[i]);
    } else {
      throw EngineError("cuda upload: float data into a " + std::string(dtype_name(dst.dtype)) + " tensor");
    }
    if (dst.dtype == DType::F32) invalidate_bf16_cache(static_cast<char*>(dst.ptr) + offset * es, n * es);
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.ptr) + offset * es, staging_.data(), n * es,
                               cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void upload(const Tensor& dst, const float* src, size_t n, size_t offset) override {
    upload_float(dst, src, n, offset);
  }
  void upload(const Tensor& dst, const double* src, size_t n, size_t offset) override {
    upload_float(dst, src, n, offset);
  }
  // A bf16 checkpoint's weight, bits as they are: row chunks of at most kStageBytes go through two page-locked
  // buffers (copied in by all cores, from the mmap'd file), each chunk's DMA overlapping the next chunk's copy.
  void upload_bf16_rows(const Tensor& dst, const uint16_t* src, int rows, int cols, int ld) override {
    if (dst.dtype != DType::BF16) return Backend::upload_bf16_rows(dst, src, rows, cols, ld);
    if (rows <= 0 || cols <= 0) return;
    check_range(dst, size_t(rows - 1) * ld + cols, 0, "upload_bf16_rows");
    constexpr size_t kStageBytes = size_t(64) << 20;
    const size_t row_bytes = size_t(cols) * 2;
    const int chunk_rows = int(std::max<size_t>(1, kStageBytes / row_bytes));
    for (int i = 0; i < 2; i++) {
      if (!stage_[i]) {
        stage_bytes_[i] = std::max(kStageBytes, row_bytes);
        CUDA_CHECK(cudaMallocHost(&stage_[i], stage_bytes_[i]));
        CUDA_CHECK(cudaEventCreateWithFlags(&stage_ev_[i], cudaEventDisableTiming));
      } else if (stage_bytes_[i] < row_bytes) {
        CUDA_CHECK(cudaEventSynchronize(stage_ev_[i]));
        CUDA_CHECK(cudaFreeHost(stage_[i]));
        stage_bytes_[i] = row_bytes;
        CUDA_CHECK(cudaMallocHost(&stage_[i], stage_bytes_[i]));
      }
    }
    const unsigned nt = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    int buf = 0;
    for (int r0 = 0; r0 < rows; r0 += chunk_rows, buf ^= 1) {
      const int nr = std::min(chunk_rows, rows - r0);
      const size_t bytes = size_t(nr) * row_bytes;
      CUDA_CHECK(cudaEventSynchronize(stage_ev_[buf]));  // its last DMA is done: the buffer may be rewritten
      const char* from = reinterpret_cast<const char*>(src + size_t(r0) * cols);
      char* to = static_cast<char*>(stage_[buf]);
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < nt; t++) {
        const size_t b0 = bytes * t / nt, b1 = bytes * (t + 1) / nt;
        pool.emplace_back([=] { std::memcpy(to + b0, from + b0, b1 - b0); });
      }
      for (auto& th : pool) th.join();
      CUDA_CHECK(cudaMemcpy2DAsync(static_cast<uint16_t*>(dst.ptr) + size_t(r0) * ld, size_t(ld) * 2, to, row_bytes,
                                   row_bytes, size_t(nr), cudaMemcpyDefault, stream_));
      CUDA_CHECK(cudaEventRecord(stage_ev_[buf], stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // the caller may unmap src
  }
  void upload(const Tensor& dst, const int32_t* src, size_t n, size_t offset) override {
    check_range(dst, n, offset, "upload");
    if (dst.dtype != DType::I32) throw EngineError("cuda upload: int32 data into a non-Index tensor");
    CUDA_CHECK(cudaMemcpyAsync(static_cast<int32_t*>(dst.ptr) + offset, src, n * 4, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    // Remember whether this index range is all zeros: a doc_start of zeros means one document per row, the
    // plain causal case that cuDNN SDPA handles (checked here on the host, so attention never has to sync).
    bool all_zero = true;
    for (size_t i = 0; i < n && all_zero; i++) all_zero = src[i] == 0;
    forget_index_range(static_cast<int32_t*>(dst.ptr) + offset, n);
    zero_index_[static_cast<int32_t*>(dst.ptr) + offset] = all_zero ? n : 0;
    // Keep a host copy of a range with several documents: attention finds them there (packed_docs.h).
    if (!all_zero) index_copy_[static_cast<int32_t*>(dst.ptr) + offset] = {std::vector<int32_t>(src, src + n), ++uploads_};
  }
  template <typename D> void download_float(const Tensor& src, D* dst, size_t n, size_t offset) {
    check_range(src, n, offset, "download");
    size_t es = dtype_size(src.dtype);
    staging_.resize(n * es);
    CUDA_CHECK(cudaMemcpyAsync(staging_.data(), static_cast<const char*>(src.ptr) + offset * es, n * es,
                               cudaMemcpyDefault, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (src.dtype == DType::BF16) {
      const uint16_t* s = reinterpret_cast<const uint16_t*>(staging_.data());
      for (size_t i = 0; i < n; i++) dst[i] = D(bf16_to_f32(s[i]));
    } else if (src.dtype == DType::F32) {
      const float* s = reinterpret_cast<const float*>(staging_.data());
      for (size_t i = 0; i < n; i++) dst[i] = D(s[i]);
    } else if (src.dtype == DType::I32) {
      const int32_t* s = reinterpret_cast<const int32_t*>(staging_.data());
      for (size_t i = 0; i < n; i++) dst[i] = D(s[i]);
    } else {
      throw EngineError("cuda download: unsupported dtype");
    }
  }
  void download(const Tensor& src, float* dst, size_t n, size_t offset) override {
    download_float(src, dst, n, offset);
  }
  void download(const Tensor& src, double* dst, size_t n, size_t offset) override {
    download_float(src, dst, n, offset);
  }
  void copy(const Tensor& dst, const Tensor& src, size_t n) override {
    if (dst.dtype != src.dtype) throw EngineError("cuda copy: dtype mismatch");
    check_range(dst, n, 0, "copy");
    check_range(src, n, 0, "copy");
    Timer tm(this, "copy");
    CUDA_CHECK(cudaMemcpyAsync(dst.ptr, src.ptr, n * dtype_size(dst.dtype), cudaMemcpyDeviceToDevice, stream_));
    if (dst.dtype == DType::F32) invalidate_bf16_cache(dst.ptr, n * 4);
    if (dst.dtype == DType::I32) {
      auto it = zero_index_.find(static_cast<int32_t*>(src.ptr));
      bool z = it != zero_index_.end() && it->second >= n;
      forget_index_range(static_cast<int32_t*>(dst.ptr), n);
      zero_index_[static_cast<int32_t*>(dst.ptr)] = z ? n : 0;
    }
  }
  void copy_2d(const Tensor& dst, int ld_dst, const Tensor& src, int ld_src, int rows, int cols) override {
    if (dst.dtype != src.dtype) throw EngineError("cuda copy_2d: dtype mismatch");
    if (rows <= 0 || cols <= 0) return;
    if (cols > ld_dst || cols > ld_src) throw EngineError("cuda copy_2d: row wider than its pitch");
    const size_t span_dst = size_t(rows - 1) * ld_dst + cols, span_src = size_t(rows - 1) * ld_src + cols;
    check_range(dst, span_dst, 0, "copy_2d dst");
    check_range(src, span_src, 0, "copy_2d src");
    Timer tm(this, "copy_2d");
    const size_t es = dtype_size(dst.dtype);
    CUDA_CHECK(cudaMemcpy2DAsync(dst.ptr, ld_dst * es, src.ptr, ld_src * es, cols * es, rows, cudaMemcpyDeviceToDevice,
                                 stream_));
    if (dst.dtype == DType::F32) invalidate_bf16_cache(dst.ptr, span_dst * 4);
    if (dst.dtype == DType::I32) forget_index_range(static_cast<int32_t*>(dst.ptr), span_dst);  // zeros unknown
  }
  void fill(const Tensor& dst, float value, size_t n) override {
    check_range(dst, n, 0, "fill");
    Timer tm(this, "fill");
    if (dst.dtype == DType::F32) invalidate_bf16_cache(dst.ptr, n * 4);
    if (dst.dtype == DType::F32) launch_fill(static_cast<float*>(dst.ptr), value, n, stream_);
    else if (dst.dtype == DType::BF16) launch_fill(static_cast<bf16*>(dst.ptr), value, n, stream_);
    else if (dst.dtype == DType::I32) {
      launch_fill_i32(static_cast<int32_t*>(dst.ptr), int32_t(value), n, stream_);
      forget_index_range(static_cast<int32_t*>(dst.ptr), n);
      zero_index_[static_cast<int32_t*>(dst.ptr)] = value == 0.0f ? n : 0;
    } else throw EngineError("cuda fill: unsupported dtype");
  }
  // quantize_base "nf4": the fp32 weight goes up once and is quantized on the device (nf4.cu: bitsandbytes'
  // quantize_4bit, bit for bit the CPU reference quantize_nf4 in model/quant4.cpp), its absmax double-quantized
  // there too when asked (bit for bit double_quantize). The fp32 copy goes straight back to the device (not to the
  // cache: no later tensor has its size, and a cached 235 MB block would count against the memory cap).
  // An NF4 weight of n values on the device: packed codes (n/2 bytes) and an absmax per block of 64, fp32 or, nested,
  // one 8-bit code per block + fp32 per 256 blocks (Tensor::scales2).
  Tensor alloc_nf4(size_t n, bool nested) {
    if (n % 64 != 0) throw EngineError("NF4: weight element count must be a multiple of 64");
    Tensor t;
    t.dtype = DType::U8;
    t.n = n;
    t.quant = Quant::NF4;
    t.ptr = mem_.get(n / 2, "NF4 codes");
    const size_t blocks = n / 64;
    t.scales = mem_.get(nested ? blocks : blocks * 4, "NF4 absmax");
    if (nested) t.scales2 = mem_.get((blocks + 255) / 256 * 4, "NF4 nested absmax");
    return t;
  }
  Tensor upload_nf4(const float* w, int rows, int cols, bool double_quant) override {
    const size_t n = (size_t)rows * cols, blocks = n / 64;
    Tensor t = alloc_nf4(n, double_quant);
    void* staged = mem_.get(n * 4, "the fp32 weight being quantized");
    CUDA_CHECK(cudaMemcpyAsync(staged, w, n * 4, cudaMemcpyHostToDevice, stream_));
    if (!double_quant) {
      launch_nf4_quantize(static_cast<uint8_t*>(t.ptr), static_cast<float*>(t.scales), static_cast<const float*>(staged), n, stream_);
    } else {
      // The fp32 absmax, the per-256 double sums and the offset share one short-lived block (≈ n/16 bytes).
      const size_t nb2 = (blocks + 255) / 256;
      char* tmp = static_cast<char*>(mem_.get(blocks * 4 + nb2 * 8 + 16, "NF4 double quantization scratch"));
      float* absmax = reinterpret_cast<float*>(tmp);
      double* sums = reinterpret_cast<double*>(tmp + (blocks * 4 + 7) / 8 * 8);
      float* offset = reinterpret_cast<float*>(reinterpret_cast<char*>(sums) + nb2 * 8);
      launch_nf4_quantize(static_cast<uint8_t*>(t.ptr), absmax, static_cast<const float*>(staged), n, stream_);
      launch_absmax_double_quantize(static_cast<uint8_t*>(t.scales), static_cast<float*>(t.scales2), offset, sums, absmax,
                                    blocks, stream_);
      CUDA_CHECK(cudaMemcpyAsync(&t.scales_offset, offset, 4, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      mem_.release(tmp);
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));   // w is pageable host memory the caller reuses
    mem_.release(staged);
    return t;
  }
  // Codes and absmax as they are (bitsandbytes' layout); the dequantizing GEMM computes code·absmax → bf16.
  Tensor upload_4bit(const uint8_t* packed, const float* absmax64, Quant quant, int rows, int cols) override {
    const size_t n = (size_t)rows * cols;
    if (quant != Quant::NF4) throw EngineError("cuda backend: only NF4 4-bit weights are supported (FP4 bases train on the CPU backend)");
    Tensor t = alloc_nf4(n, false);
    CUDA_CHECK(cudaMemcpy(t.ptr, packed, n / 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(t.scales, absmax64, n / 64 * 4, cudaMemcpyHostToDevice));
    return t;
  }
  // A double-quantized checkpoint stays double-quantized on the device: 1 + 4/256 absmax bytes per 64 values, not 4.
  Tensor upload_4bit_nested(const uint8_t* packed, const uint8_t* absmax_q, const float* absmax2, float offset, Quant quant,
                            int rows, int cols) override {
    const size_t n = (size_t)rows * cols, blocks = n / 64;
    if (quant != Quant::NF4) throw EngineError("cuda backend: only NF4 4-bit weights are supported (FP4 bases train on the CPU backend)");
    Tensor t = alloc_nf4(n, true);
    CUDA_CHECK(cudaMemcpy(t.ptr, packed, n / 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(t.scales, absmax_q, blocks, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(t.scales2, absmax2, (blocks + 255) / 256 * 4, cudaMemcpyHostToDevice));
    t.scales_offset = offset;
    return t;
  }

  // ---- matmul ----------------------------------------------------------------------------------------------
  void matmul_ex(const Tensor& d, const Tensor& c, const Tensor& a, const Tensor& b, int M, int N, int K,
                 bool trans_a, bool trans_b, float alpha, float beta, int lda, int ldb, int ldd) override {
    Timer tm(this, "matmul", 2.0 * M * N * K, M, N, K, trans_a, trans_b);
    const MatmulLayout lay = matmul_layout(M, N, K, trans_a, trans_b, lda, ldb, ldd);
    if (!lay.ok) throw EngineError("cuda matmul: leading dimension too small");
    lda = lay.lda, ldb = lay.ldb, ldd = lay.ldd;
    const void* ap = a.ptr;
    const void* bp = b.ptr;
    DType at = a.dtype, bt = b.dtype;
    if (b.quant == Quant::NF4) {
      if (in_side_) throw EngineError("internal: an NF4 operand inside side work");
      if (ldb != lay.b_cols) throw EngineError("cuda matmul: an NF4 operand must be packed");
      bf16* w = static_cast<bf16*>(scratch(1, b.n * 2));
      if (b.scales2)
        launch_nf4_dequant_nested(w, static_cast<const uint8_t*>(b.ptr), static_cast<const uint8_t*>(b.scales),
                                  static_cast<const float*>(b.scales2), b.scales_offset, b.n, stream_);
      else
        launch_nf4_dequant(w, static_cast<const uint8_t*>(b.ptr), static_cast<const float*>(b.scales), b.n, stream_);
      bp = w;
      bt = DType::BF16;
    }
    if (a.quant == Quant::NF4) throw EngineError("cuda matmul: NF4 is supported only as the B operand");
    // Mixed bf16/fp32 operands (LoRA A/B are fp32 Params, activations bf16): round the fp32 one to bf16 (cached
    // until the parameter changes), then one bf16 GEMM with fp32 accumulation. Both fp32: a true fp32 GEMM.
    bool want_bf16 = at == DType::BF16 || bt == DType::BF16 || d.dtype == DType::BF16;
    if (want_bf16) {
      if (at == DType::F32) {
        ap = bf16_of(ap, lay.span_a);
        at = DType::BF16;
      }
      if (bt == DType::F32) {
        bp = bf16_of(bp, lay.span_b);
        bt = DType::BF16;
      }
    }
    if (at != bt || (at != DType::BF16 && at != DType::F32))
      throw EngineError("cuda matmul: unsupported operand dtypes");
    if (d.dtype != DType::BF16 && d.dtype != DType::F32) throw EngineError("cuda matmul: unsupported output dtype");
    if (beta != 0.0f && c.ptr != d.ptr && c.dtype != d.dtype) throw EngineError("cuda matmul: C and D dtypes differ");
    cudaDataType_t ab = at == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cudaDataType_t ct = d.dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
    if (ab == CUDA_R_32F && ct == CUDA_R_16BF) throw EngineError("cuda matmul: fp32 × fp32 → bf16 unsupported");
    const void* cp = beta != 0.0f ? c.ptr : d.ptr;
    if (K == 0) {  // empty contraction: D = beta·C (packed, in place only; the model never asks for more)
      if (cp != d.ptr || ldd != N) throw EngineError("cuda matmul: K = 0 supports only packed in-place C");
      if (beta == 0.0f) fill(d, 0.0f, (size_t)M * N);
      else if (beta != 1.0f && ct == CUDA_R_32F) launch_scale(static_cast<float*>(d.ptr), beta, (size_t)M * N, stream_);
      return;
    }
    if (ab == CUDA_R_16BF && ct == CUDA_R_16BF && rank_update_enabled_ && cp == d.ptr && lda == lay.a_cols &&
        ldb == lay.b_cols && ldd == N && rank_update_applies(M, N, K, trans_a, d.ptr)) {
      launch_rank_update(static_cast<bf16*>(d.ptr), static_cast<const bf16*>(ap), static_cast<const bf16*>(bp), M, N, K,
                         trans_b, alpha, beta, stream_);
      return;
    }
    gemm_->run(d.ptr, cp, ct, ldd, ap, lda, bp, ldb, ab, M, N, K, trans_a, trans_b, alpha, beta);
    if (ct == CUDA_R_32F) invalidate_bf16_cache(d.ptr, lay.span_d * 4);
  }

  // ---- embedding, norms, elementwise -------------------------------------------------------------------------
  void embedding_forward(const Tensor& out, const Tensor& ids, const Tensor& table, int N, int C,
                         double scale) override {
    Timer tm(this, "embedding");
    need(out, DType::BF16, "embedding out");
    need(table, DType::BF16, "embedding table");
    float s = scale == 1.0 ? 1.0f : bf16_to_f32(f32_to_bf16(float(scale)));
    launch_embedding(static_cast<bf16*>(out.ptr), static_cast<const int32_t*>(ids.ptr),
                     static_cast<const bf16*>(table.ptr), N, C, s, stream_);
  }
  void gather_rows(const Tensor& out, const Tensor& src, const Tensor& rows, int n, int C) override {
    if (out.dtype != src.dtype) throw EngineError("cuda gather_rows: dtype mismatch");
    if (out.dtype != DType::BF16 && out.dtype != DType::F32) throw EngineError("cuda gather_rows: bf16 or fp32 rows only");
    need(rows, DType::I32, "gather_rows rows");
    if (n <= 0 || C <= 0) return;
    check_range(out, size_t(n) * C, 0, "gather_rows out");
    check_range(rows, size_t(n), 0, "gather_rows rows");
    Timer tm(this, "gather_rows");
    launch_gather_rows(out.ptr, src.ptr, static_cast<const int32_t*>(rows.ptr), n, size_t(C) * dtype_size(out.dtype),
                       stream_);
    if (out.dtype == DType::F32) invalidate_bf16_cache(out.ptr, size_t(n) * C * 4);
  }
  void rmsnorm_forward(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& w, int N, int C,
                       double eps, bool plus_one, int ld_out) override {
    Timer tm(this, "rmsnorm_forward");
    need(out, DType::BF16, "rmsnorm out");
    need(x, DType::BF16, "rmsnorm x");
    need(w, DType::BF16, "rmsnorm w");
    need(rstd, DType::F32, "rmsnorm rstd");
    launch_rmsnorm_forward(static_cast<bf16*>(out.ptr), static_cast<float*>(rstd.ptr),
                           static_cast<const bf16*>(x.ptr), static_cast<const bf16*>(w.ptr), N, C,
                           ld_out == 0 ? C : ld_out, float(eps), plus_one, stream_);
  }
  void rmsnorm_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& rstd,
                        int N, int C, bool plus_one, int ld_dx) override {
    Timer tm(this, "rmsnorm_backward");
    need(dx, DType::BF16, "rmsnorm dx");
    launch_rmsnorm_backward(static_cast<bf16*>(dx.ptr), static_cast<const bf16*>(dout.ptr),
                            static_cast<const bf16*>(x.ptr), static_cast<const bf16*>(w.ptr),
                            static_cast<const float*>(rstd.ptr), N, C, pitch(ld_dx, C, "rmsnorm dx"), plus_one,
                            stream_);
  }
  void add(const Tensor& y, const Tensor& x, size_t n, float alpha) override {
    Timer tm(this, "add");
    if (y.dtype != x.dtype) throw EngineError("cuda add: dtype mismatch");
    if (y.dtype == DType::F32) invalidate_bf16_cache(y.ptr, n * 4);
    if (y.dtype == DType::F32)
      launch_add(static_cast<float*>(y.ptr), static_cast<const float*>(x.ptr), n, alpha, stream_);
    else if (y.dtype == DType::BF16)
      launch_add(static_cast<bf16*>(y.ptr), static_cast<const bf16*>(x.ptr), n, alpha, stream_);
    else throw EngineError("cuda add: unsupported dtype");
  }
  void add_bias(const Tensor& y, const Tensor& bias, int N, int D) override {
    Timer tm(this, "add_bias");
    need(y, DType::BF16, "add_bias y");
    need(bias, DType::BF16, "add_bias bias");
    launch_add_bias(static_cast<bf16*>(y.ptr), static_cast<const bf16*>(bias.ptr), N, D, stream_);
  }
  void scale(const Tensor& y, float s, size_t n) override {
    Timer tm(this, "scale");
    need(y, DType::F32, "scale y");
    invalidate_bf16_cache(y.ptr, n * 4);
    launch_scale(static_cast<float*>(y.ptr), s, n, stream_);
  }
  void rope_forward(const Tensor& x, const Tensor& positions, const Tensor& inv_freq, int N, int H, int HD,
                    int ld) override {
    Timer tm(this, "rope");
    need(x, DType::BF16, "rope x");
    launch_rope(static_cast<bf16*>(x.ptr), static_cast<const int32_t*>(positions.ptr),
                static_cast<const float*>(inv_freq.ptr), N, H, HD, pitch(ld, H * HD, "rope x"), false, stream_);
  }
  void rope_backward(const Tensor& dx, const Tensor& positions, const Tensor& inv_freq, int N, int H, int HD,
                     int ld) override {
    Timer tm(this, "rope");
    need(dx, DType::BF16, "rope dx");
    launch_rope(static_cast<bf16*>(dx.ptr), static_cast<const int32_t*>(positions.ptr),
                static_cast<const float*>(inv_freq.ptr), N, H, HD, pitch(ld, H * HD, "rope dx"), true, stream_);
  }

  // ---- attention ---------------------------------------------------------------------------------------------
  void attention_forward(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& doc_start, int B, int Tq, int Tk, int Tk_stride, int q_offset, int NH, int NKV,
                         int HD, const AttnPitch& p) override {
    Timer tm(this, "attention_forward", attention_flops(B, Tq, NH, HD, 1.0));
    need(q, DType::BF16, "attention q");
    need(lse, DType::F32, "attention lse");
    const AttnLd ld = attn_ld(p, NH, NKV, HD);
    if (Tq == Tk && Tk == Tk_stride && q_offset == 0 && tiles_take(doc_start, B, Tq, NH, NKV, HD, ld, 1.0 / 3.5, {out.ptr, q.ptr, k.ptr, v.ptr})) {
      launch_attention_tiles_forward(static_cast<bf16*>(out.ptr), static_cast<float*>(lse.ptr),
                                     static_cast<const bf16*>(q.ptr), static_cast<const bf16*>(k.ptr),
                                     static_cast<const bf16*>(v.ptr), static_cast<const int32_t*>(doc_start.ptr), B,
                                     Tq, NH, NKV, HD, ld, stream_);
      tm.rename("attention_forward (packed tiles)");
      return;
    }
#if defined(NXFT_HAVE_CUDNN)
    // cuDNN returns false for layouts it cannot take (unaligned pointers or pitches): the portable kernels run then.
    // A prompt read into a KV cache (one row, so the cache's capacity Tk_stride never enters a stride) takes cuDNN
    // from kCudnnPromptTokens on: each new length builds and times a graph (~0.2 s), which short prompts, all of
    // different lengths (the eval stage's samples), would not earn back.
    const bool prompt_in_cache = B == 1 && Tk != Tk_stride && Tq >= kCudnnPromptTokens;
    if (cudnn_ && Tq == Tk && (Tk == Tk_stride || prompt_in_cache) && q_offset == 0) {
      if (index_all_zero(doc_start, (size_t)B * Tq)) {
        if (cudnn_->forward(out.ptr, static_cast<float*>(lse.ptr), q.ptr, k.ptr, v.ptr, B, Tq, NH, NKV, HD, ld)) {
          tm.rename("attention_forward (cudnn)");
          return;
        }
      } else if (PackedDocs* docs = packed_docs(doc_start, B, Tq)) {
        // Packed documents: one cuDNN sequence per document; its lse comes token-major and is put back in
        // the engine's (B, NH, T) layout, so the backward (or the portable kernels) read the usual layout.
        float* lse_tokens = static_cast<float*>(scratch(5, (size_t)B * Tq * NH * 4));
        if (cudnn_->forward_ragged(out.ptr, lse_tokens, q.ptr, k.ptr, v.ptr, docs->ragged(ld, NH, false, stream_), NH,
                                   NKV, HD, ld)) {
          launch_lse_layout(static_cast<float*>(lse.ptr), lse_tokens, B, Tq, NH, false, stream_);
          tm.rename("attention_forward (cudnn packed)");
          return;
        }
      }
    }
#endif
    if (decode_split_ && Tq <= kDecodeQueries && q_offset > 0) {   // generation: new tokens over a KV cache
      float* part = static_cast<float*>(scratch(7, attention_decode_scratch_bytes(B, Tq, Tk, NH, HD)));
      launch_attention_decode(static_cast<bf16*>(out.ptr), static_cast<float*>(lse.ptr), part,
                              static_cast<const bf16*>(q.ptr), static_cast<const bf16*>(k.ptr),
                              static_cast<const bf16*>(v.ptr), static_cast<const int32_t*>(doc_start.ptr), B, Tq, Tk,
                              Tk_stride, q_offset, NH, NKV, HD, ld, stream_);
      tm.rename("attention_forward (decode, split keys)");
      return;
    }
    launch_attention_forward(static_cast<bf16*>(out.ptr), static_cast<float*>(lse.ptr),
                             static_cast<const bf16*>(q.ptr), static_cast<const bf16*>(k.ptr),
                             static_cast<const bf16*>(v.ptr), static_cast<const int32_t*>(doc_start.ptr), B, Tq, Tk,
                             Tk_stride, q_offset, NH, NKV, HD, ld, stream_);
  }
  void attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                          const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& doc_start, int B, int T, int NH, int NKV, int HD,
                          const AttnPitch& p) override {
    Timer tm(this, "attention_backward", attention_flops(B, T, NH, HD, 2.5));
    const AttnLd ld = attn_ld(p, NH, NKV, HD);
    if (tiles_take(doc_start, B, T, NH, NKV, HD, ld, 2.5 / 3.5, {dq.ptr, dk.ptr, dv.ptr, dout.ptr, q.ptr, k.ptr, v.ptr, out.ptr})) {
      float* delta = static_cast<float*>(scratch(4, (size_t)B * NH * T * 4));
      float* dq_acc = static_cast<float*>(scratch(8, (size_t)B * T * NH * HD * 4));
      launch_attention_tiles_backward(static_cast<bf16*>(dq.ptr), static_cast<bf16*>(dk.ptr), static_cast<bf16*>(dv.ptr),
                                      static_cast<const bf16*>(dout.ptr), static_cast<const bf16*>(q.ptr),
                                      static_cast<const bf16*>(k.ptr), static_cast<const bf16*>(v.ptr),
                                      static_cast<const bf16*>(out.ptr), static_cast<const float*>(lse.ptr),
                                      static_cast<const int32_t*>(doc_start.ptr), delta, dq_acc, B, T, NH, NKV, HD, ld,
                                      stream_);
      tm.rename("attention_backward (packed tiles)");
      return;
    }
#if defined(NXFT_HAVE_CUDNN)
    const bf16* checked[3] = {};  // cuDNN's packed-document dq, dk, dv while the first call of a layout is checked
    AttnLd checked_layout;        // … and the pitches cuDNN saw
    if (cudnn_ && index_all_zero(doc_start, (size_t)B * T)) {
      if (cudnn_->backward(dq.ptr, dk.ptr, dv.ptr, dout.ptr, q.ptr, k.ptr, v.ptr, out.ptr,
                           static_cast<const float*>(lse.ptr), B, T, NH, NKV, HD, ld)) {
        tm.rename("attention_backward (cudnn)");
        return;
      }
    } else if (PackedDocs* docs = cudnn_ && !packed_bwd_portable_ ? packed_docs(doc_start, B, T) : nullptr) {
      // cuDNN 9.19's ragged backward gives wrong gradients with pitched operands (the model's interleaved q|k|v,
      // dq|dk|dv and spare-column O): with pitched inputs and packed gradients, and with packed inputs and pitched
      // gradients alike (session 8; cuda_parity "packed docs, pitched"), and right ones for separate packed
      // buffers. So pitched operands go through packed rows of one scratch (packed_copy_, default all: the inputs
      // copied in, the gradients copied back; about 112 µs a layer at 8B, 2×2048). Nothing here is assumed: the
      // first call with each layout cuDNN sees is compared with the portable kernels (check_packed_backward), and a
      // layout that disagrees moves on to more copies (none → gradients → inputs → all), then to the portable
      // kernels.
      const int qd = NH * HD, kvd = NKV * HD;
      const size_t N = size_t(B) * T;
      // NXFT_CUDNN_PACKED_MHA=1 (an A/B switch; slower on an H200, session 8): k and v go in repeated to NH heads,
      // so cuDNN runs multi-head attention, and each KV head's dk, dv are summed back from its G query heads.
      const bool mha = cudnn_packed_mha_ && NKV < NH;
      const int G = NH / NKV, kvw = mha ? qd : kvd;
      // The pitches cuDNN sees with copy mode c: an operand copied to packed rows has its width as pitch.
      auto layout = [&](int c) {
        const bool in = c & kCopyInputs, out = c & kCopyOutputs;
        AttnLd l;
        l.q = in ? qd : ld.q;
        l.kv = mha ? qd : in ? kvd : ld.kv;
        l.out = in ? qd : ld.out;
        l.dout = in ? qd : ld.dout;
        l.dq = out ? qd : ld.dq;
        l.dkv = mha ? qd : out ? kvd : ld.dkv;
        return l;
      };
      AttnLd cl = layout(packed_copy_);
      for (auto it = packed_bwd_checked_.find(pitch_key(cl)); it != packed_bwd_checked_.end() && !it->second;
           it = packed_bwd_checked_.find(pitch_key(cl))) {   // a layout that disagreed before: copy more
        if (packed_copy_ == kCopyAll) {
          packed_bwd_portable_ = true;
          break;
        }
        packed_copy_ = more_copies(packed_copy_);
        cl = layout(packed_copy_);
      }
      const bool checking = !packed_bwd_checked_.count(pitch_key(cl));
      float* lse_tokens = static_cast<float*>(scratch(5, (size_t)B * T * NH * 4));
      if (!packed_bwd_portable_) launch_lse_layout(lse_tokens, static_cast<const float*>(lse.ptr), B, T, NH, true, stream_);
      bf16* pk = packed_bwd_portable_ ? nullptr : static_cast<bf16*>(scratch(6, N * size_t(4 * qd + 4 * kvw) * 2));
      bf16* at = pk;   // q k v out dout, then dq dk dv
      auto operand = [&](const void* src, int ld_src, int width, int ld_cudnn) -> const void* {
        bf16* d = at;
        at += N * width;
        if (ld_cudnn == ld_src) return src;
        copy_rows(d, width, src, ld_src, width, N);
        return d;
      };
      auto repeated_in = [&](const Tensor& src, int ld_src) -> bf16* {   // (N, NKV, HD) pitch ld → (N, NH, HD)
        bf16* d = at;
        at += N * qd;
        launch_repeat_kv_heads(d, static_cast<const bf16*>(src.ptr), int(N), NKV, G, HD, ld_src, stream_);
        return d;
      };
      if (!packed_bwd_portable_) {
        const void* q_p = operand(q.ptr, ld.q, qd, cl.q);
        const void* k_p = mha ? repeated_in(k, ld.kv) : operand(k.ptr, ld.kv, kvd, cl.kv);
        const void* v_p = mha ? repeated_in(v, ld.kv) : operand(v.ptr, ld.kv, kvd, cl.kv);
        const void* o_p = operand(out.ptr, ld.out, qd, cl.out);
        const void* do_p = operand(dout.ptr, ld.dout, qd, cl.dout);
        // Gradients go straight to dq, dk, dv where cuDNN sees their own pitch, else to packed scratch and back.
        bf16* const grads = at;   // (N, qd + 2·kvw)
        const bool direct_dq = cl.dq == ld.dq, direct_dkv = !mha && cl.dkv == ld.dkv;
        bf16* dq_p = direct_dq ? static_cast<bf16*>(dq.ptr) : grads;
        bf16* dk_p = direct_dkv ? static_cast<bf16*>(dk.ptr) : grads + N * qd;
        bf16* dv_p = direct_dkv ? static_cast<bf16*>(dv.ptr) : grads + N * (qd + kvw);
        if (cudnn_->backward_ragged(dq_p, dk_p, dv_p, do_p, q_p, k_p, v_p, o_p, lse_tokens,
                                    docs->ragged(cl, NH, true, stream_), NH, mha ? NH : NKV, HD, cl)) {
          if (mha) {   // sum each group back into dk, dv
            launch_sum_kv_heads(static_cast<bf16*>(dk.ptr), dk_p, int(N), NKV, G, HD, ld.dkv, stream_);
            launch_sum_kv_heads(static_cast<bf16*>(dv.ptr), dv_p, int(N), NKV, G, HD, ld.dkv, stream_);
          } else if (!direct_dkv) {
            copy_rows(dk.ptr, ld.dkv, dk_p, kvd, kvd, N);
            copy_rows(dv.ptr, ld.dkv, dv_p, kvd, kvd, N);
          }
          if (!direct_dq) copy_rows(dq.ptr, ld.dq, dq_p, qd, qd, N);
          if (!checking) {
            tm.rename(mha ? "attention_backward (cudnn packed, heads repeated)" : "attention_backward (cudnn packed)");
            return;
          }
          // The first call with this layout: cuDNN's dq, dk, dv to packed scratch, then the portable kernels write
          // dq, dk, dv and the two are compared.
          copy_rows(grads, qd, dq.ptr, ld.dq, qd, N);
          copy_rows(grads + N * qd, kvd, dk.ptr, ld.dkv, kvd, N);
          copy_rows(grads + N * (qd + kvd), kvd, dv.ptr, ld.dkv, kvd, N);
          checked[0] = grads;
          checked[1] = grads + N * qd;
          checked[2] = grads + N * (qd + kvd);
          checked_layout = cl;
        }
      }
    }
#endif
    float* delta = static_cast<float*>(scratch(4, (size_t)B * NH * T * 4));
    launch_attention_backward(static_cast<bf16*>(dq.ptr), static_cast<bf16*>(dk.ptr), static_cast<bf16*>(dv.ptr),
                              static_cast<const bf16*>(dout.ptr), static_cast<const bf16*>(q.ptr),
                              static_cast<const bf16*>(k.ptr), static_cast<const bf16*>(v.ptr),
                              static_cast<const bf16*>(out.ptr), static_cast<const float*>(lse.ptr),
                              static_cast<const int32_t*>(doc_start.ptr), delta, B, T, NH, NKV, HD, ld, stream_);
#if defined(NXFT_HAVE_CUDNN)
    if (checked[0]) check_packed_backward(checked, checked_layout, dq, dk, dv, size_t(B) * T, NH * HD, NKV * HD, ld);
#endif
  }
#if defined(NXFT_HAVE_CUDNN)
  // rows × width bf16 from src (row pitch src_ld elements) to dst (pitch dst_ld), on the main stream.
  void copy_rows(void* dst, int dst_ld, const void* src, int src_ld, int width, size_t rows) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, size_t(dst_ld) * 2, src, size_t(src_ld) * 2, size_t(width) * 2, rows,
                                 cudaMemcpyDeviceToDevice, stream_));
  }
  // cuDNN 9.19's ragged backward gives wrong gradients for some operand layouts (see attention_backward), so the
  // first packed-document backward with each layout (the pitches cuDNN sees) runs both it and the portable kernels
  // (which write the result) and compares: cuDNN serves the later calls with that layout only if it agreed. One
  // host round trip per layout.
  void check_packed_backward(const bf16* const cudnn[3], const AttnLd& layout, const Tensor& dq, const Tensor& dk,
                             const Tensor& dv, size_t N, int qd, int kvd, const AttnLd& ld) {
    double worst = 0;
    const void* portable[3] = {dq.ptr, dk.ptr, dv.ptr};
    const int width[3] = {qd, kvd, kvd}, pitch[3] = {ld.dq, ld.dkv, ld.dkv};
    for (int i = 0; i < 3; i++) {
      std::vector<uint16_t> a(N * width[i]), b(N * width[i]);
      CUDA_CHECK(cudaMemcpy2DAsync(a.data(), size_t(width[i]) * 2, cudnn[i], size_t(width[i]) * 2, size_t(width[i]) * 2, N,
                                   cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaMemcpy2DAsync(b.data(), size_t(width[i]) * 2, portable[i], size_t(pitch[i]) * 2,
                                   size_t(width[i]) * 2, N, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaStreamSynchronize(stream_));
      double diff = 0, scale = 1e-6;
      for (size_t j = 0; j < a.size(); j++) {
        const float x = bf16_to_f32(a[j]), y = bf16_to_f32(b[j]);
        diff = std::max(diff, std::isfinite(x) ? double(std::fabs(x - y)) : 1e30);
        scale = std::max(scale, double(std::fabs(y)));
      }
      worst = std::max(worst, diff / scale);
    }
    // bf16 gradients of two correct kernels differ by a few bf16 ulps of the largest value; a wrong layout by O(1).
    // A layout that disagrees is remembered: the next call copies more (none → the gradients → the inputs → all),
    // and its new layout is checked in turn.
    const bool agree = worst <= 0.05;
    packed_bwd_checked_[pitch_key(layout)] = agree;
    const int more = more_copies(packed_copy_);
    fprintf(stderr, "[cuda] packed-document attention backward (%s): cuDNN vs portable kernels, worst difference %.2e "
                    "of the largest gradient: %s%s\n", packed_copy_name(packed_copy_), worst,
            agree ? "cuDNN serves the later calls with this layout"
                  : packed_copy_ != kCopyAll ? "DISAGREE, the next call is checked with " : "DISAGREE, the portable kernels serve every call",
            agree || packed_copy_ == kCopyAll ? "" : packed_copy_name(more));
    if (!agree) {
      if (packed_copy_ != kCopyAll) packed_copy_ = more;
      else packed_bwd_portable_ = true;
    }
  }
#endif

  // ---- MLP activation, dropout ----------------------------------------------------------------------------------
  void glu_forward(const Tensor& out, const Tensor& gate, const Tensor& up, int N, int F, Glu act, int ld_out,
                   int ld_in) override {
    Timer tm(this, "glu_forward");
    need(out, DType::BF16, "glu out");
    launch_glu_forward(static_cast<bf16*>(out.ptr), static_cast<const bf16*>(gate.ptr),
                       static_cast<const bf16*>(up.ptr), N, F, pitch(ld_out, F, "glu out"), pitch(ld_in, F, "glu in"),
                       act == Glu::SwiGLU ? 0 : 1, stream_);
  }
  void write_column_blocks(const ColumnBlockWrite* jobs, int n_jobs, float scale) override {
    Timer tm(this, "write_column_blocks");
    std::vector<ColumnJob> cj(static_cast<size_t>(n_jobs));
    for (int k = 0; k < n_jobs; k++) {
      const ColumnBlockWrite& j = jobs[k];
      need(j.dst, DType::BF16, "column block dst");
      need(j.src, DType::F32, "column block src");
      if (j.col0 + j.cols > j.ld) throw EngineError("cuda backend: column block outside the row");
      cj[size_t(k)] = ColumnJob{static_cast<bf16*>(j.dst.ptr), static_cast<const float*>(j.src.ptr), j.ld, j.col0,
                                j.rows, j.cols};
    }
    launch_write_column_blocks(cj.data(), n_jobs, scale, stream_);
  }
  void glu_backward(const Tensor& dgate, const Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                    int N, int F, Glu act, int ld_in, int ld_dgu) override {
    Timer tm(this, "glu_backward");
    need(dgate, DType::BF16, "glu dgate");
    launch_glu_backward(static_cast<bf16*>(dgate.ptr), static_cast<bf16*>(dup.ptr),
                        static_cast<const bf16*>(dout.ptr), static_cast<const bf16*>(gate.ptr),
                        static_cast<const bf16*>(up.ptr), N, F, pitch(ld_in, F, "glu in"),
                        pitch(ld_dgu, F, "glu dgate/dup"), act == Glu::SwiGLU ? 0 : 1, stream_);
  }
  void lora_dropout(const Tensor& out, const Tensor& x, int N, int D, float p, uint64_t seed) override {
    Timer tm(this, "lora_dropout");
    need(out, DType::BF16, "lora_dropout out");
    launch_lora_dropout(static_cast<bf16*>(out.ptr), static_cast<const bf16*>(x.ptr), (size_t)N * D, p, seed,
                        stream_);
  }

  // ---- cross-entropy ------------------------------------------------------------------------------------------------
  void ce_stats(const Tensor& logits, const Tensor& targets, const Tensor& run_max, const Tensor& run_sum,
                const Tensor& target_logit, int n, int Vc, int v0) override {
    Timer tm(this, "cross_entropy");
    need(logits, DType::BF16, "ce logits");
    launch_ce_stats(static_cast<const bf16*>(logits.ptr), static_cast<const int32_t*>(targets.ptr),
                    static_cast<float*>(run_max.ptr), static_cast<float*>(run_sum.ptr),
                    static_cast<float*>(target_logit.ptr), n, Vc, v0, stream_);
  }
  void ce_finish(const Tensor& loss, const Tensor& lse, const Tensor& run_max, const Tensor& run_sum,
                 const Tensor& target_logit, const Tensor& targets, int n) override {
    Timer tm(this, "cross_entropy");
    launch_ce_finish(static_cast<float*>(loss.ptr), static_cast<float*>(lse.ptr),
                     static_cast<const float*>(run_max.ptr), static_cast<const float*>(run_sum.ptr),
                     static_cast<const float*>(target_logit.ptr), static_cast<const int32_t*>(targets.ptr), n, stream_);
  }
  void ce_grad(const Tensor& logits, const Tensor& targets, const Tensor& lse, int n, int Vc, int v0,
               float grad_scale) override {
    Timer tm(this, "cross_entropy");
    need(logits, DType::BF16, "ce logits");
    launch_ce_grad(static_cast<bf16*>(logits.ptr), static_cast<const int32_t*>(targets.ptr),
                   static_cast<const float*>(lse.ptr), n, Vc, v0, grad_scale, stream_);
  }

  // ---- optimizer --------------------------------------------------------------------------------------------------
  double sum_sq(const Tensor& x, size_t n) override {
    Timer tm(this, "sum_sq");
    if (x.dtype == DType::F32)
      launch_sum_sq(d_sum_, d_sum_ + 1, static_cast<const float*>(x.ptr), n, stream_);
    else if (x.dtype == DType::BF16)
      launch_sum_sq(d_sum_, d_sum_ + 1, static_cast<const bf16*>(x.ptr), n, stream_);
    else throw EngineError("cuda sum_sq: unsupported dtype");
    double r = 0;
    CUDA_CHECK(cudaMemcpyAsync(&r, d_sum_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return r;
  }
  void adamw_step(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, size_t n, double lr,
                  double beta1, double beta2, double eps, double weight_decay, int64_t t, float grad_scale) override {
    Timer tm(this, "adamw");
    need(param, DType::F32, "adamw param");
    const double bc1 = 1.0 - std::pow(beta1, double(t)), bc2 = 1.0 - std::pow(beta2, double(t));
    AdamWScalars c;
    c.decay = float(1.0 - lr * weight_decay);
    c.decay_on = weight_decay != 0.0;
    c.w1 = float(1.0 - beta1);
    c.lerp_low = std::fabs(double(c.w1)) < 0.5;
    c.b2 = float(beta2);
    c.one_minus_b2 = float(1.0 - beta2);
    c.bc2_sqrt = float(std::sqrt(bc2));
    c.neg_step = float(-(lr / bc1));
    c.eps = float(eps);
    c.grad_scale = grad_scale;
    launch_adamw(static_cast<float*>(param.ptr), static_cast<const float*>(grad.ptr), static_cast<float*>(m.ptr),
                 static_cast<float*>(v.ptr), n, c, stream_);
    invalidate_bf16_cache(param.ptr, n * 4);
  }

  // ---- extras (cuda_backend.h) ----------------------------------------------------------------------------------
  void fill_normal(const Tensor& t, float stdev, uint64_t seed, size_t n) {
    check_range(t, n, 0, "fill_normal");
    if (t.dtype == DType::BF16) launch_fill_normal(static_cast<bf16*>(t.ptr), stdev, seed, n, stream_);
    else if (t.dtype == DType::F32) launch_fill_normal(static_cast<float*>(t.ptr), stdev, seed, n, stream_);
    else throw EngineError("cuda fill_normal: unsupported dtype");
  }
  void set_profile(bool on) { profile_ = on; }
  bool profiling() const { return profile_; }
  std::string profile_report() {
    synchronize();
    collect_events();
    std::vector<std::pair<std::string, OpStats>> rows(stats_.begin(), stats_.end());
    double total = 0;
    for (auto& r : rows) total += r.second.ms;
    std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.ms > b.second.ms; });
    std::string s = "| op | calls | ms | share | TFLOP/s |\n|---|---|---|---|---|\n";
    char buf[256];
    for (auto& r : rows) {
      double tf = r.second.flops > 0 ? r.second.flops / (r.second.ms * 1e-3) / 1e12 : 0;
      snprintf(buf, sizeof buf, "| %s | %ld | %.2f | %.1f%% | %s |\n", r.first.c_str(), r.second.calls, r.second.ms,
               100.0 * r.second.ms / total, tf > 0 ? std::to_string(int(tf + 0.5)).c_str() : "");
      s += buf;
    }
    snprintf(buf, sizeof buf, "| total (sum of op times) | | %.2f | 100%% | |\n", total);
    s += buf;
    stats_.clear();
    return s;
  }
  size_t reserved() const { return mem_.reserved(); }
  std::string attention_path() const { return attention_path_; }

 private:
  // Event-timed region for the profile; a no-op unless profiling.
  struct Timer {
    CudaBackend* b;
    std::string name;
    double flops;
    cudaEvent_t start = nullptr;
    Timer(CudaBackend* b_, const char* n, double f = 0, int M = 0, int N = 0, int K = 0, bool ta = false,
          bool tb = false)
        : b(b_), name(n), flops(f) {
      if (!b->profile_) return;
      if (M > 0) name = gemm_class(M, N, K, ta, tb);
      start = b->events_.get();
      cudaEventRecord(start, b->stream_);
    }
    void rename(const char* n) { name = n; }
    ~Timer() {
      if (!start) return;
      cudaEvent_t stop = b->events_.get();
      cudaEventRecord(stop, b->stream_);
      b->pending_.push_back({name, flops, start, stop});
      if (b->pending_.size() > 4096) b->collect_events();
    }
    static std::string gemm_class(int M, int N, int K, bool ta, bool tb) {
      std::string shape = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) +
                          (ta ? " Aᵀ" : "") + (tb ? " Bᵀ" : "");
      if (std::min(M, std::min(N, K)) <= 64) return "matmul LoRA (" + shape + ")";
      return "matmul base (" + shape + ")";
    }
  };
  struct Pending {
    std::string name;
    double flops;
    cudaEvent_t start, stop;
  };
  void collect_events() {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (auto& p : pending_) {
      float ms = 0;
      cudaEventElapsedTime(&ms, p.start, p.stop);
      OpStats& s = stats_[p.name];
      s.ms += ms;
      s.flops += p.flops;
      s.calls++;
      events_.put(p.start);
      events_.put(p.stop);
    }
    pending_.clear();
  }
  static double attention_flops(int B, int T, int NH, int HD, double factor) {
    return factor * 4.0 * B * NH * (double)T * T * HD / 2.0;  // causal: half the score matrix
  }

  void* scratch(int slot, size_t bytes) {
    if (scratch_bytes_[slot] < bytes) {
      if (scratch_[slot]) {
        synchronize();   // queued work on any stream may still read the old buffer
        mem_.release(scratch_[slot]);
        scratch_[slot] = nullptr;
        scratch_bytes_[slot] = 0;
      }
      scratch_[slot] = mem_.get(bytes, "a scratch buffer");
      scratch_bytes_[slot] = bytes;
    }
    return scratch_[slot];
  }
  // bf16 copies of fp32 matmul operands (the LoRA A/B Params), converted once and reused until something
  // writes the fp32 source range (every fp32-writing op calls invalidate_bf16_cache on what it writes).
  struct Bf16Copy {
    size_t n;
    void* dev;
  };
  const void* bf16_of(const void* src, size_t n) {
    // the cache and the scratch buffers belong to the main stream
    if (in_side_) throw EngineError("internal: fp32 → bf16 operand conversion inside side work");
    auto it = bf16_cache_.find(src);
    if (it != bf16_cache_.end()) {
      if (it->second.n == n) return it->second.dev;
      mem_.put(it->second.dev);
      bf16_cache_.erase(it);
    }
    void* dev = mem_.get(n * 2);
    launch_f32_to_bf16(static_cast<bf16*>(dev), static_cast<const float*>(src), n, stream_);
    bf16_cache_[src] = Bf16Copy{n, dev};
    return dev;
  }
  void invalidate_bf16_cache(const void* p, size_t bytes) {
    if (bf16_cache_.empty()) return;
    const char* lo = static_cast<const char*>(p);
    const char* hi = lo + bytes;
    auto it = bf16_cache_.upper_bound(p);
    if (it != bf16_cache_.begin()) --it;
    while (it != bf16_cache_.end()) {
      const char* s = static_cast<const char*>(it->first);
      if (s >= hi) break;
      if (s + it->second.n * 4 > lo) {
        mem_.put(it->second.dev);
        it = bf16_cache_.erase(it);
      } else {
        ++it;
      }
    }
  }
  static void need(const Tensor& t, DType d, const char* what) {
    if (t.dtype != d)
      throw EngineError(std::string("cuda backend: ") + what + " must be " + dtype_name(d) + ", got " +
                        dtype_name(t.dtype));
  }
  // A row pitch as the kernels take it: 0 means packed (the row length); a pitch shorter than the row is a caller bug.
  static int pitch(int ld, int row, const char* what) {
    if (ld == 0) return row;
    if (ld < row)
      throw EngineError(std::string("cuda ") + what + ": row pitch " + std::to_string(ld) + " < row length " +
                        std::to_string(row));
    return ld;
  }
  static AttnLd attn_ld(const AttnPitch& p, int NH, int NKV, int HD) {
    const int qd = NH * HD, kvd = NKV * HD;
    AttnLd ld;
    ld.q = pitch(p.q, qd, "attention q");
    ld.kv = pitch(p.kv, kvd, "attention k/v");
    ld.out = pitch(p.out, qd, "attention out");
    ld.dout = pitch(p.dout, qd, "attention dout");
    ld.dq = pitch(p.dq, qd, "attention dq");
    ld.dkv = pitch(p.dkv, kvd, "attention dk/dv");
    return ld;
  }
  static void check_range(const Tensor& t, size_t n, size_t offset, const char* what) {
    if (offset + n > t.n)
      throw EngineError(std::string("cuda ") + what + ": " + std::to_string(offset + n) + " elements past a tensor of " +
                        std::to_string(t.n));
  }
  // Packed documents (a doc_start uploaded from the host, not all zero) of contiguous documents, in a layout the
  // tensor-core tile kernels take (attention_tiles.cu: head_dim 64 or 128, 16-byte rows), short enough for them
  // (tile_work_fraction, packed_documents.h) unless NXFT_ATTN_TILES says otherwise. Contiguity (find_documents)
  // bounds the tiles. Both are found once per upload. A batch past the fraction stays on the tiles until its
  // shape's rent is paid (TilesRent: cuDNN's first use costs more than rare or small batches lose on the tiles), or
  // for good where cuDNN's ragged attention is not there. `share`: the call's part of a layer's attention work.
  bool tiles_take(const Tensor& doc_start, int B, int T, int NH, int NKV, int HD, const AttnLd& ld, double share,
                  std::initializer_list<const void*> ptrs) {
    if (tiles_mode_ == kTilesNever || !attention_tiles_apply(HD, NH, NKV, ld, ptrs)) return false;
    auto it = index_copy_.find(static_cast<int32_t*>(doc_start.ptr));
    if (it == index_copy_.end() || it->second.values.size() < (size_t)B * T) return false;
    if (tiles_checked_upload_ != it->second.upload) {
      tiles_checked_upload_ = it->second.upload;
      const std::vector<int32_t>& ds = it->second.values;
      std::vector<int32_t> starts;
      int longest = 0;
      tiles_upload_fraction_ = 0;
      tiles_upload_takes_ = find_documents(ds.data(), B, T, &starts, &longest);
      if (tiles_upload_takes_ && tiles_mode_ == kTilesAuto) {
        tiles_upload_fraction_ = tile_work_fraction(ds.data(), B, T);
        tiles_upload_takes_ = tiles_upload_fraction_ <= kTilesMaxWorkFraction || !cudnn_packed_here() ||
                              tiles_rent_.tiles(B, T);
      }
    }
    if (tiles_upload_takes_ && tiles_upload_fraction_ > kTilesMaxWorkFraction)
      tiles_rent_.charge(B, T, tiles_excess_ms(B, T, NH, HD, tiles_upload_fraction_, share));
    return tiles_upload_takes_;
  }
  bool cudnn_packed_here() const {
#if defined(NXFT_HAVE_CUDNN)
    return cudnn_ != nullptr && cudnn_packed_;
#else
    return false;
#endif
  }
  bool index_all_zero(const Tensor& t, size_t n) const {
    auto it = zero_index_.find(static_cast<int32_t*>(t.ptr));
    return it != zero_index_.end() && it->second >= n;
  }
  void forget_index(void* p) {
    zero_index_.erase(static_cast<int32_t*>(p));
    index_copy_.erase(static_cast<int32_t*>(p));
  }
  void forget_index_range(int32_t* p, size_t n) {
    for (auto it = zero_index_.begin(); it != zero_index_.end();) {
      int32_t* s = it->first;
      size_t len = std::max<size_t>(it->second, 1);
      if (s < p + n && p < s + len) it = zero_index_.erase(it);
      else ++it;
    }
    for (auto it = index_copy_.begin(); it != index_copy_.end();) {
      int32_t* s = it->first;
      if (s < p + n && p < s + it->second.values.size()) it = index_copy_.erase(it);
      else ++it;
    }
  }
#if defined(NXFT_HAVE_CUDNN)
  // The packed documents of doc_start (B rows of T) for cuDNN's ragged attention, found from the host copy of
  // its upload; nullptr when there is none (not uploaded whole) or the rows are not contiguous documents.
  PackedDocs* packed_docs(const Tensor& doc_start, int B, int T) {
    if (!cudnn_packed_) return nullptr;
    auto it = index_copy_.find(static_cast<int32_t*>(doc_start.ptr));
    if (it == index_copy_.end() || it->second.values.size() < (size_t)B * T) return nullptr;
    return packed_docs_.prepare(it->second.upload, it->second.values, B, T, stream_) ? &packed_docs_ : nullptr;
  }
#endif

  // A device→host or host→device copy on copy_stream_, after all work issued so far on the main stream.
  void transfer(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (in_side_) throw EngineError("internal: a host transfer inside side work");
    if (!copy_stream_) {
      CUDA_CHECK(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreateWithFlags(&copy_fork_ev_, cudaEventDisableTiming));
      CUDA_CHECK(cudaEventCreateWithFlags(&copy_done_ev_, cudaEventDisableTiming));
    }
    CUDA_CHECK(cudaEventRecord(copy_fork_ev_, main_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(copy_stream_, copy_fork_ev_, 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, copy_stream_));
    CUDA_CHECK(cudaEventRecord(copy_done_ev_, copy_stream_));
    copy_pending_ = true;
  }

  std::string device_, attention_path_;
  cudaStream_t stream_ = nullptr;        // where ops are issued now: main_stream_, or side_stream_ inside side work
  cudaStream_t main_stream_ = nullptr, side_stream_ = nullptr, copy_stream_ = nullptr;
  cudaEvent_t fork_ev_ = nullptr, side_done_ev_ = nullptr, copy_fork_ev_ = nullptr, copy_done_ev_ = nullptr;
  cudaEvent_t ext_ev_ = nullptr, ext_done_ev_ = nullptr;   // external_waits_for_backend / backend_waits_for_external
  int side_prio_ = 0;
  bool side_enabled_ = true, in_side_ = false, side_pending_ = false, copy_pending_ = false;
  DevicePool mem_;                      // before gemm_ and cudnn_: they give their workspaces back to it
  std::unique_ptr<Gemm> gemm_;          // its side lane follows stream_
#if defined(NXFT_HAVE_CUDNN)
  std::unique_ptr<CudnnAttention> cudnn_;
#endif
  std::vector<char> staging_;
  void* stage_[2] = {};                   // page-locked staging of upload_bf16_rows
  size_t stage_bytes_[2] = {};
  cudaEvent_t stage_ev_[2] = {};
  void* scratch_[9] = {};
  size_t scratch_bytes_[9] = {};
  enum { kTilesAuto, kTilesAlways, kTilesNever } tiles_mode_ = kTilesAuto;   // NXFT_ATTN_TILES
  uint64_t tiles_checked_upload_ = 0;   // the doc_start upload last checked for the tile kernels …
  bool tiles_upload_takes_ = false;     // … whether they take it …
  double tiles_upload_fraction_ = 0;    // … and its tile_work_fraction (0 unless NXFT_ATTN_TILES is auto)
  TilesRent tiles_rent_;                // the batches past kTilesMaxWorkFraction: what they lost on the tiles
  double* d_sum_ = nullptr;
  std::map<const void*, Bf16Copy> bf16_cache_;
  std::map<void*, void*> host_tables_;     // alloc_gather_table: device pointer → its page-locked host allocation
  std::map<int32_t*, size_t> zero_index_;  // start of an uploaded Index range → its length if all zero, else 0
  struct IndexCopy {
    std::vector<int32_t> values;
    uint64_t upload = 0;  // which upload wrote them (the counter below)
  };
  std::map<int32_t*, IndexCopy> index_copy_;  // start of an uploaded Index range that is not all zero → its values
  uint64_t uploads_ = 0;
  bool cudnn_packed_ = true;  // NXFT_CUDNN_PACKED=0: packed documents take the portable kernels
  // NXFT_ATTN_DECODE=portable: generation's new tokens take the one-warp-per-query kernel (an A/B switch)
  bool decode_split_ = true;
  static constexpr int kDecodeQueries = 16;         // at most this many new queries take the split-KV kernels
  static constexpr int kCudnnPromptTokens = 1024;   // a prompt this long read into a KV cache takes cuDNN
  bool cudnn_packed_mha_ = false;  // NXFT_CUDNN_PACKED_MHA=1: the ragged backward on k, v repeated to NH heads
  // cuDNN's packed-document backward, checked once per layout it sees (the pitches of its eight operands) against
  // the portable kernels: layout → agreed. packed_bwd_portable_: every copy mode disagreed.
  std::map<std::array<int, 6>, bool> packed_bwd_checked_;
  bool packed_bwd_portable_ = false;
  static std::array<int, 6> pitch_key(const AttnLd& l) { return {l.q, l.kv, l.out, l.dout, l.dq, l.dkv}; }
  // Which pitched operands of the packed-document backward go through packed scratch (attention_backward):
  // NXFT_CUDNN_PACKED_COPY = all (the default: what cuDNN 9.19 needs) | in | out | none, for A/B runs.
  static constexpr int kCopyInputs = 1, kCopyOutputs = 2, kCopyAll = 3;
  int packed_copy_ = kCopyAll;
  static int more_copies(int c) { return c == 0 ? kCopyOutputs : c == kCopyOutputs ? kCopyInputs : kCopyAll; }
  static const char* packed_copy_name(int c) {
    return c == kCopyAll ? "pitched operands copied" : c == kCopyInputs ? "pitched inputs copied"
         : c == kCopyOutputs ? "pitched gradients copied" : "no copies";
  }
#if defined(NXFT_HAVE_CUDNN)
  PackedDocs packed_docs_;
#endif
  bool profile_ = false;
  bool rank_update_enabled_ = false;  // NXFT_RANK_UPDATE=1: LoRA expand products through lora_update.cu
  EventPool events_;   // the per-op profile's
  std::vector<Pending> pending_;
  std::map<std::string, OpStats> stats_;
};

CudaBackend& as_cuda(Backend& b) {
  CudaBackend* c = dynamic_cast<CudaBackend*>(&b);
  if (!c) throw EngineError("not the CUDA backend");
  return *c;
}

}  // namespace
}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend() {
  if (!cuda_backend_available()) return nullptr;
  return std::make_unique<cuda::CudaBackend>();
}

void cuda_fill_normal(Backend& backend, const Tensor& t, float stdev, uint64_t seed, size_t n) {
  cuda::as_cuda(backend).fill_normal(t, stdev, seed, n);
}
void cuda_profile_enable(Backend& backend, bool on) { cuda::as_cuda(backend).set_profile(on); }
bool cuda_profile_enabled(Backend& backend) { return cuda::as_cuda(backend).profiling(); }
std::string cuda_profile_report(Backend& backend) { return cuda::as_cuda(backend).profile_report(); }
size_t cuda_reserved_bytes(Backend& backend) { return cuda::as_cuda(backend).reserved(); }
std::string cuda_attention_path(Backend& backend) { return cuda::as_cuda(backend).attention_path(); }
void cuda_stream_wait_backend(Backend& backend, void* stream) {
  cuda::as_cuda(backend).external_waits_for_backend(static_cast<cudaStream_t>(stream));
}
void cuda_backend_wait_stream(Backend& backend, void* stream) {
  cuda::as_cuda(backend).backend_waits_for_external(static_cast<cudaStream_t>(stream));
}

}  // namespace nxft
