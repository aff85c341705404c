// test_gguf_writer — files from GgufWriter read back with ggml's own GGUF reader (gguf_init_from_file in the
// libggml-base.so shipped by node-llama-cpp): every metadata value and type, every tensor's name, type,
// shape, offset, size and bytes. Also: bad tensors are refused before any file exists, and a writer error
// mid-way leaves no file behind.
#include <dlfcn.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gguf/gguf_writer.h"
#include "gguf/quants.h"
#include "util/events.h"
#include "test_support.h"

using namespace nxft;


struct gguf_init_params_abi { bool no_alloc; void** ctx; };
struct Ggml {
  void* (*init_from_file)(const char*, gguf_init_params_abi);
  void (*free_)(void*);
  int64_t (*n_kv)(const void*);
  int64_t (*n_tensors)(const void*);
  int64_t (*find_key)(const void*, const char*);
  int (*kv_type)(const void*, int64_t);
  uint32_t (*get_u32)(const void*, int64_t);
  int32_t (*get_i32)(const void*, int64_t);
  float (*get_f32)(const void*, int64_t);
  bool (*get_bool)(const void*, int64_t);
  const char* (*get_str)(const void*, int64_t);
  int (*arr_type)(const void*, int64_t);
  size_t (*arr_n)(const void*, int64_t);
  const void* (*arr_data)(const void*, int64_t);
  const char* (*arr_str)(const void*, int64_t, size_t);
  int64_t (*find_tensor)(const void*, const char*);
  int (*tensor_type)(const void*, int64_t);
  size_t (*tensor_offset)(const void*, int64_t);
  size_t (*tensor_size)(const void*, int64_t);
  size_t (*data_offset)(const void*);
  size_t (*alignment)(const void*);
  uint32_t (*version)(const void*);
  void* (*get_tensor)(void*, const char*);
  void (*ctx_free)(void*);
};

int main() {
  void* h = open_llama_cpp_library("NXFT_GGML_BASE", "libggml-base.so");
  Ggml g;
  load_symbol(h, g.init_from_file, "gguf_init_from_file"); load_symbol(h, g.free_, "gguf_free");
  load_symbol(h, g.n_kv, "gguf_get_n_kv"); load_symbol(h, g.n_tensors, "gguf_get_n_tensors");
  load_symbol(h, g.find_key, "gguf_find_key"); load_symbol(h, g.kv_type, "gguf_get_kv_type");
  load_symbol(h, g.get_u32, "gguf_get_val_u32"); load_symbol(h, g.get_i32, "gguf_get_val_i32");
  load_symbol(h, g.get_f32, "gguf_get_val_f32"); load_symbol(h, g.get_bool, "gguf_get_val_bool");
  load_symbol(h, g.get_str, "gguf_get_val_str"); load_symbol(h, g.arr_type, "gguf_get_arr_type");
  load_symbol(h, g.arr_n, "gguf_get_arr_n"); load_symbol(h, g.arr_data, "gguf_get_arr_data");
  load_symbol(h, g.arr_str, "gguf_get_arr_str"); load_symbol(h, g.find_tensor, "gguf_find_tensor");
  load_symbol(h, g.tensor_type, "gguf_get_tensor_type"); load_symbol(h, g.tensor_offset, "gguf_get_tensor_offset");
  load_symbol(h, g.tensor_size, "gguf_get_tensor_size"); load_symbol(h, g.data_offset, "gguf_get_data_offset");
  load_symbol(h, g.alignment, "gguf_get_alignment"); load_symbol(h, g.version, "gguf_get_version");
  load_symbol(h, g.get_tensor, "ggml_get_tensor"); load_symbol(h, g.ctx_free, "ggml_free");

  char tmpl[] = "/tmp/nxft-gguf-writer-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string path = dir + "/t.gguf";

  // --- a file with every metadata kind and several tensor types ---
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 0.1f);
  struct Spec { std::string name; std::vector<int64_t> ne; GgmlType type; std::vector<float> v; };
  std::vector<Spec> specs = {
      {"a.weight", {512, 3}, GgmlType::Q4_K, {}}, {"b.weight", {64, 5}, GgmlType::Q8_0, {}},
      {"c.weight", {7}, GgmlType::F32, {}},       {"d.weight", {33, 2}, GgmlType::F16, {}},
      {"e.weight", {256, 2, 2}, GgmlType::Q6_K, {}}, {"f.weight", {96, 1}, GgmlType::Q4_0, {}},
      {"g.weight", {256, 1}, GgmlType::Q5_K, {}}, {"h.weight", {10, 3}, GgmlType::BF16, {}}};
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("x.u32", 4000000000u);
  w.add_i32("x.i32", -5);
  w.add_f32("x.f32", 1e-5f);
  w.add_bool("x.bool", true);
  w.add_string("x.str", "héllo\nworld");
  w.add_string_array("x.strs", {"a", "", "▁the", "<0x0A>"});
  w.add_f32_array("x.f32s", {-1.5f, 0.f, 3.25f});
  w.add_i32_array("x.i32s", {1, 2, 6});
  w.add_u32_array("x.u32s", {7u, 8u});
  bool threw = false;
  try { w.add_u32("x.u32", 1); } catch (const EngineError&) { threw = true; }
  CHECK_MSG(threw, "duplicate key accepted");
  for (Spec& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.ne) n *= d;
    for (int64_t i = 0; i < n; i++) s.v.push_back(nd(rng));
    w.add_tensor(s.name, s.ne, s.type, std::make_shared<VectorRowSource>(s.v, s.ne[0]));
  }
  threw = false;
  try { w.add_tensor("bad.weight", {100, 2}, GgmlType::Q4_K, std::make_shared<VectorRowSource>(std::vector<float>(200), 100)); }
  catch (const EngineError& e) { threw = std::string(e.what()).find("block size") != std::string::npos; }
  CHECK_MSG(threw, "row not a multiple of 256 accepted for Q4_K");
  threw = false;
  try { w.add_tensor(std::string(64, 'x'), {4}, GgmlType::F32, std::make_shared<VectorRowSource>(std::vector<float>(4), 4)); }
  catch (const EngineError&) { threw = true; }
  CHECK_MSG(threw, "64-byte tensor name accepted");

  uint64_t size = w.write(path, 3);
  std::ifstream f(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK_MSG(bytes.size() == size, "write() returned %llu, file has %zu", (unsigned long long)size, bytes.size());

  void* ctx = nullptr;
  void* gg = g.init_from_file(path.c_str(), gguf_init_params_abi{false, &ctx});
  CHECK_MSG(gg != nullptr, "ggml could not read our file");
  if (gg) {
    CHECK_MSG(g.version(gg) == 3, "version");
    CHECK_MSG(g.alignment(gg) == 32, "alignment");
    CHECK_MSG(g.n_kv(gg) == 10, "n_kv %lld", (long long)g.n_kv(gg));
    CHECK_MSG(g.n_tensors(gg) == int64_t(specs.size()), "n_tensors");
    int64_t k = g.find_key(gg, "x.u32");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 4 && g.get_u32(gg, k) == 4000000000u, "u32");
    k = g.find_key(gg, "x.i32");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 5 && g.get_i32(gg, k) == -5, "i32");
    k = g.find_key(gg, "x.f32");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 6 && g.get_f32(gg, k) == 1e-5f, "f32");
    k = g.find_key(gg, "x.bool");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 7 && g.get_bool(gg, k), "bool");
    k = g.find_key(gg, "x.str");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 8 && std::string(g.get_str(gg, k)) == "héllo\nworld", "str");
    k = g.find_key(gg, "x.strs");
    CHECK_MSG(k >= 0 && g.kv_type(gg, k) == 9 && g.arr_type(gg, k) == 8 && g.arr_n(gg, k) == 4 &&
              std::string(g.arr_str(gg, k, 2)) == "▁the" && std::string(g.arr_str(gg, k, 1)).empty(), "str array");
    k = g.find_key(gg, "x.f32s");
    CHECK_MSG(k >= 0 && g.arr_type(gg, k) == 6 && g.arr_n(gg, k) == 3 && ((const float*)g.arr_data(gg, k))[2] == 3.25f, "f32 array");
    k = g.find_key(gg, "x.i32s");
    CHECK_MSG(k >= 0 && g.arr_type(gg, k) == 5 && ((const int32_t*)g.arr_data(gg, k))[2] == 6, "i32 array");
    k = g.find_key(gg, "x.u32s");
    CHECK_MSG(k >= 0 && g.arr_type(gg, k) == 4 && ((const uint32_t*)g.arr_data(gg, k))[1] == 8u, "u32 array");
    size_t data0 = g.data_offset(gg);
    CHECK_MSG(data0 % 32 == 0, "data offset not aligned");
    for (const Spec& s : specs) {
      int64_t ti = g.find_tensor(gg, s.name.c_str());
      CHECK_MSG(ti >= 0, "tensor %s missing", s.name.c_str());
      if (ti < 0) continue;
      CHECK_MSG(g.tensor_type(gg, ti) == int(s.type), "%s type", s.name.c_str());
      size_t off = g.tensor_offset(gg, ti);
      CHECK_MSG(off % 32 == 0, "%s offset unaligned", s.name.c_str());
      int64_t rows = int64_t(s.v.size()) / s.ne[0];
      size_t rb = ggml_row_bytes(s.type, s.ne[0]);
      CHECK_MSG(g.tensor_size(gg, ti) == rb * size_t(rows), "%s size", s.name.c_str());
      std::vector<uint8_t> expect(rb * size_t(rows));
      for (int64_t r = 0; r < rows; r++) encode_row(s.type, s.v.data() + r * s.ne[0], expect.data() + r * rb, s.ne[0]);
      CHECK_MSG(data0 + off + expect.size() <= bytes.size() &&
                std::memcmp(bytes.data() + data0 + off, expect.data(), expect.size()) == 0,
            "%s bytes differ", s.name.c_str());
      // ggml_tensor starts with {enum type; pointer buffer; int64 ne[4]} → ne at byte 16 (x86-64 ABI).
      void* t = g.get_tensor(ctx, s.name.c_str());
      CHECK_MSG(t != nullptr, "%s not in ggml context", s.name.c_str());
      if (t) {
        const int64_t* ne = reinterpret_cast<const int64_t*>(static_cast<const char*>(t) + 16);
        for (size_t d = 0; d < 4; d++) {
          int64_t want = d < s.ne.size() ? s.ne[d] : 1;
          CHECK_MSG(ne[d] == want, "%s ne[%zu] = %lld, want %lld", s.name.c_str(), d, (long long)ne[d], (long long)want);
        }
      }
    }
    g.free_(gg);
    if (ctx) g.ctx_free(ctx);
  }

  // --- a source that fails mid-write leaves no file and no temp file ---
  struct Failing : RowSource {
    void fill_rows(int64_t, int64_t, float*) const override { throw EngineError("source broke"); }
  };
  std::string path2 = dir + "/broken.gguf";
  GgufWriter w2;
  w2.add_string("general.architecture", "llama");
  w2.add_tensor("ok.weight", {32, 2}, GgmlType::F32, std::make_shared<VectorRowSource>(std::vector<float>(64, 1.f), 32));
  w2.add_tensor("bad.weight", {32, 2}, GgmlType::Q8_0, std::make_shared<Failing>());
  threw = false;
  try { w2.write(path2, 2); } catch (const EngineError& e) { threw = std::string(e.what()) == "source broke"; }
  CHECK_MSG(threw, "source error not propagated");
  CHECK_MSG(access(path2.c_str(), F_OK) != 0, "a broken write left %s", path2.c_str());
  std::string leftovers = "ls " + dir + " | grep -c tmp > /dev/null";
  CHECK_MSG(std::system(leftovers.c_str()) != 0, "a temp file was left in %s", dir.c_str());

  std::remove(path.c_str());
  rmdir(dir.c_str());
  return test_result("test_gguf_writer");
}
