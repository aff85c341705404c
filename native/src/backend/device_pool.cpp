// device_pool.cpp — see device_pool.h.
#include "backend/device_pool.h"
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include "util/events.h"

namespace nxft {

static std::string mib(size_t bytes) { return std::to_string((bytes + (size_t(1) << 19)) >> 20) + " MiB"; }

DevicePool::DevicePool(RawAlloc raw_alloc, RawFree raw_free, void* ctx, size_t cap_bytes)
    : raw_alloc_(raw_alloc), raw_free_(raw_free), ctx_(ctx), cap_(cap_bytes) {}

DevicePool::~DevicePool() {
  release_cache();
  for (auto& kv : sizes_) raw_free_(kv.first, ctx_);
}

void* DevicePool::device_alloc(size_t bytes, const char* what) {
  if (cap_ && reserved_ + bytes > cap_) release_cache();
  if (cap_ && reserved_ + bytes > cap_)
    throw EngineError("CUDA out of memory: " + std::string(what) + " needs " + mib(bytes) + " with " + mib(reserved_) +
                      " already reserved, over the device memory cap of " + mib(cap_) + " (NXFT_DEVICE_MEMORY_CAP_GIB)");
  void* p = raw_alloc_(bytes, ctx_);
  if (!p) {
    release_cache();
    p = raw_alloc_(bytes, ctx_);
  }
  if (!p)
    throw EngineError("CUDA out of memory: " + std::string(what) + " needs " + mib(bytes) + " with " + mib(reserved_) +
                      " reserved (" + mib(live_) + " in use)");
  reserved_ += bytes;
  peak_reserved_ = std::max(peak_reserved_, reserved_);
  return p;
}

void* DevicePool::get(size_t bytes, const char* what) {
  bytes = round(std::max<size_t>(bytes, 1));
  void* p = nullptr;
  auto it = free_.find(bytes);
  if (it != free_.end() && !it->second.empty()) {
    p = it->second.back();
    it->second.pop_back();
    cached_ -= bytes;
  } else {
    p = device_alloc(bytes, what);
  }
  live_ += bytes;
  peak_live_ = std::max(peak_live_, live_);
  sizes_[p] = bytes;
  return p;
}

void DevicePool::put(void* p) {
  auto it = sizes_.find(p);
  if (it == sizes_.end()) return;
  free_[it->second].push_back(p);
  live_ -= it->second;
  cached_ += it->second;
  sizes_.erase(it);
}

void DevicePool::release(void* p) {
  auto it = sizes_.find(p);
  if (it == sizes_.end()) return;
  live_ -= it->second;
  reserved_ -= it->second;
  sizes_.erase(it);
  raw_free_(p, ctx_);
}

void DevicePool::release_cache() {
  for (auto& kv : free_)
    for (void* p : kv.second) {
      raw_free_(p, ctx_);
      reserved_ -= kv.first;
    }
  free_.clear();
  cached_ = 0;
}

size_t parse_device_memory_cap_gib(const std::string& value) {
  if (value.empty()) return 0;
  errno = 0;
  char* end = nullptr;
  const double gib = std::strtod(value.c_str(), &end);
  if (errno != 0 || end == value.c_str() || *end != '\0' || !std::isfinite(gib) || gib <= 0 || gib > 1 << 20)
    throw EngineError("NXFT_DEVICE_MEMORY_CAP_GIB=\"" + value + "\": expected a positive number of GiB, e.g. 80",
                      "", "NXFT_DEVICE_MEMORY_CAP_GIB");
  return size_t(gib * 1073741824.0);
}

size_t device_memory_cap_from_env() {
  const char* v = std::getenv("NXFT_DEVICE_MEMORY_CAP_GIB");
  return v ? parse_device_memory_cap_gib(v) : 0;
}

}  // namespace nxft
