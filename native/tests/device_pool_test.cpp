// device_pool_test.cpp — the CUDA backend's caching allocator (backend/device_pool.h) over a fake device that
// hands out host blocks and can be told how much it has: free lists reuse exact sizes, live / reserved bytes and
// peaks count every block (tensors, raw workspaces), the cap makes a request fail as a full device would (after
// the cache is released, the cached bytes are usable again), and NXFT_DEVICE_MEMORY_CAP_GIB parses or names itself.
#include <cstdlib>
#include <set>
#include <string>
#include "backend/device_pool.h"
#include "test_util.h"

using namespace nxft;

struct FakeDevice {
  size_t capacity = size_t(1) << 40;   // bytes the "device" has
  size_t used = 0;
  int allocs = 0, frees = 0;
  std::set<void*> blocks;
  std::map<void*, size_t> sizes;
};
static void* fake_alloc(size_t bytes, void* ctx) {
  FakeDevice& d = *static_cast<FakeDevice*>(ctx);
  if (d.used + bytes > d.capacity) return nullptr;
  void* p = std::malloc(bytes);
  d.used += bytes;
  d.allocs++;
  d.blocks.insert(p);
  d.sizes[p] = bytes;
  return p;
}
static void fake_free(void* p, void* ctx) {
  FakeDevice& d = *static_cast<FakeDevice*>(ctx);
  CHECK(d.blocks.count(p) == 1);   // never a double free or a foreign pointer
  d.used -= d.sizes[p];
  d.blocks.erase(p);
  d.sizes.erase(p);
  d.frees++;
  std::free(p);
}

int main() {
  const size_t MiB = size_t(1) << 20;
  {  // free lists and accounting, no cap
    FakeDevice dev;
    DevicePool pool(fake_alloc, fake_free, &dev);
    void* a = pool.get(1000);                     // rounded to 1024
    void* b = pool.get(3 * MiB);
    CHECK(pool.live() == 1024 + 3 * MiB && pool.reserved() == pool.live() && dev.used == pool.reserved());
    pool.put(a);
    CHECK(pool.live() == 3 * MiB && pool.reserved() == 1024 + 3 * MiB && pool.cached() == 1024);
    void* c = pool.get(1024);                      // the cached block of that size comes back
    CHECK(c == a && dev.allocs == 2 && pool.cached() == 0);
    void* d = pool.get(600);                       // another size: a new device block
    CHECK(dev.allocs == 3);
    pool.release(b);                               // raw release: straight back to the device
    CHECK(pool.live() == 1024 + 1024 && pool.reserved() == 2048 && dev.used == 2048);
    CHECK(pool.peak_reserved() == 2048 + 3 * MiB && pool.peak_live() == 2048 + 3 * MiB);
    pool.put(c);
    pool.put(d);
    pool.put(d);                                   // a second put of the same pointer is ignored
    pool.release_cache();
    CHECK(pool.reserved() == 0 && dev.used == 0 && pool.live() == 0);
    pool.put(reinterpret_cast<void*>(0x1234));     // unknown pointers are ignored
  }
  {  // the cap: counts live + cached; the cache is given back before a request is refused
    FakeDevice dev;
    DevicePool pool(fake_alloc, fake_free, &dev, 10 * MiB);
    void* a = pool.get(4 * MiB, "a");
    void* b = pool.get(4 * MiB, "b");
    pool.put(b);                                   // cached: still reserved
    CHECK(pool.reserved() == 8 * MiB);
    void* c = pool.get(5 * MiB, "c");              // 8 + 5 > 10: the cache goes, then 4 + 5 fits
    CHECK(pool.reserved() == 9 * MiB && pool.cached() == 0 && dev.used == 9 * MiB);
    std::string msg;
    EXPECT_THROW(EngineError, [&] { pool.get(2 * MiB, "the cuDNN attention workspace"); },
                       "out of memory", "the cuDNN attention workspace", "2 MiB", "9 MiB", "cap of 10 MiB",
                       "NXFT_DEVICE_MEMORY_CAP_GIB");
    CHECK(pool.reserved() == 9 * MiB && pool.live() == 9 * MiB);   // a refused request changes nothing
    pool.release(c);
    void* d = pool.get(6 * MiB);                   // exactly at the cap: allowed
    CHECK(pool.reserved() == 10 * MiB && pool.peak_reserved() == 10 * MiB);
    pool.put(a);
    pool.put(d);
  }
  {  // a device with less memory than the cap: its own out-of-memory, after the cache is released
    FakeDevice dev;
    dev.capacity = 3 * MiB;
    DevicePool pool(fake_alloc, fake_free, &dev, 100 * MiB);
    void* a = pool.get(2 * MiB);
    pool.put(a);
    void* b = pool.get(3 * MiB);                   // needs the cached 2 MiB given back first
    CHECK(b != nullptr && dev.used == 3 * MiB);
    EXPECT_THROW(EngineError, [&] { pool.get(1 * MiB, "x"); }, "out of memory", "x needs 1 MiB");
  }
  // NXFT_DEVICE_MEMORY_CAP_GIB
  CHECK(parse_device_memory_cap_gib("") == 0);
  CHECK(parse_device_memory_cap_gib("80") == size_t(80) << 30);
  CHECK(parse_device_memory_cap_gib("5.5") == (size_t(11) << 29));
  for (const char* bad : {"0", "-3", "80GiB", "abc", "nan", "inf"})
    EXPECT_THROW(EngineError, [&] { parse_device_memory_cap_gib(bad); }, "NXFT_DEVICE_MEMORY_CAP_GIB", bad);
  setenv("NXFT_DEVICE_MEMORY_CAP_GIB", "2", 1);
  CHECK(device_memory_cap_from_env() == size_t(2) << 30);
  unsetenv("NXFT_DEVICE_MEMORY_CAP_GIB");
  CHECK(device_memory_cap_from_env() == 0);
  return test_result("device_pool_test");
}
