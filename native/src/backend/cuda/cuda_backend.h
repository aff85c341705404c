// cuda_backend.h — CUDA-only extras beyond the Backend interface (backend.h), for the trainer and benches.
#pragma once
#include <cstdint>
#include <string>
#include "backend/backend.h"

namespace nxft {

// Device-side N(0, std) init of a Weight/Param tensor from (seed, element index): lets the trainer build a
// random 8B base directly in GPU memory (no 16 GB of host fp32 or safetensors). Throws for non-CUDA backends.
void cuda_fill_normal(Backend& backend, const Tensor& t, float stdev, uint64_t seed, size_t n);

// Per-op timing with CUDA events (NXFT_CUDA_PROFILE=1 or cuda_profile_enable): name → (ms, calls, flops).
void cuda_profile_enable(Backend& backend, bool on);
bool cuda_profile_enabled(Backend& backend);
std::string cuda_profile_report(Backend& backend);  // a markdown table, slowest first; resets the counters
// Device memory actually held from cudaMalloc (tensors, caches, workspaces): current and high-water mark.
size_t cuda_reserved_bytes(Backend& backend);
// "cudnn <version>" or "portable (no cuDNN: <why>)": which attention path plain causal rows take.
std::string cuda_attention_path(Backend& backend);
// Ordering against work on a stream the backend does not own (a cudaStream_t, passed as void* so this header needs
// no CUDA include): data-parallel training all-reduces gradients on its own communication stream.
void cuda_stream_wait_backend(Backend& backend, void* stream);   // `stream` waits for all work issued so far (main + side)
void cuda_backend_wait_stream(Backend& backend, void* stream);   // the backend's later work waits for `stream`

}  // namespace nxft
