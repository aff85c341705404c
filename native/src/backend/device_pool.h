// device_pool.h — the CUDA backend's caching device allocator, in plain C++ so its accounting is tested on the
// CPU (native/tests/device_pool_test.cpp): exact-size free lists (the model allocates the same shapes every step),
// live / reserved bytes and their high-water marks, and an optional cap on reserved bytes that makes "an 80 GiB
// card" measurable on a bigger one (NXFT_DEVICE_MEMORY_CAP_GIB).
//
// Reserved = everything taken from the device through the pool: live blocks, cached free blocks and raw blocks
// (workspaces, scratch buffers and staging that callers free themselves with release()). The cap applies to
// reserved bytes: when a request would pass it the cache is released first; if it still would, the request fails
// with an out-of-memory EngineError naming the cap, exactly as a full device fails.
#pragma once
#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace nxft {

class DevicePool {
 public:
  // raw_alloc returns nullptr when the device is out of memory; raw_free gives a block back to the device.
  using RawAlloc = void* (*)(size_t bytes, void* ctx);
  using RawFree = void (*)(void* p, void* ctx);
  DevicePool(RawAlloc raw_alloc, RawFree raw_free, void* ctx, size_t cap_bytes = 0);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // A block of at least `bytes` (rounded up to 512): from the free list of its size, else from the device.
  // `what` names the request in the out-of-memory error.
  void* get(size_t bytes, const char* what = "a tensor");
  // Back to the free list of its size (later requests of that size reuse it). Unknown pointers are ignored.
  void put(void* p);
  // Back to the device at once (the caller has made sure no queued work still reads it).
  void release(void* p);
  void release_cache();   // every cached free block back to the device

  size_t cap() const { return cap_; }
  size_t live() const { return live_; }            // blocks handed out and not yet put back or released
  size_t peak_live() const { return peak_live_; }
  size_t reserved() const { return reserved_; }    // live + cached
  size_t peak_reserved() const { return peak_reserved_; }
  size_t cached() const { return cached_; }

 private:
  static size_t round(size_t b) { return (b + 511) & ~size_t(511); }
  void* device_alloc(size_t bytes, const char* what);
  RawAlloc raw_alloc_;
  RawFree raw_free_;
  void* ctx_;
  size_t cap_;
  std::map<size_t, std::vector<void*>> free_;
  std::map<void*, size_t> sizes_;   // live blocks
  size_t live_ = 0, peak_live_ = 0, reserved_ = 0, peak_reserved_ = 0, cached_ = 0;
};

// NXFT_DEVICE_MEMORY_CAP_GIB as bytes (a positive decimal number of GiB, e.g. 80 or 5.5); 0 when unset or empty.
// Throws EngineError naming the variable for anything else.
size_t device_memory_cap_from_env();
// The cap in `value` (the variable's text) as bytes; the parser behind device_memory_cap_from_env.
size_t parse_device_memory_cap_gib(const std::string& value);

}  // namespace nxft
