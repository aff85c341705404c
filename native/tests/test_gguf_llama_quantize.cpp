// test_gguf_llama_quantize — our quantized exports are byte-identical to llama-quantize's.
//
// node-llama-cpp ships llama.cpp's libllama, which exports llama_model_quantize (what the llama-quantize tool
// runs). For stories260K-hf (rows of 64/172: every fallback path) and a synthetic 256-wide llama with an untied
// output (every K-quant path, use_more_bits layers), we export F32 with our exporter, let llama.cpp quantize that
// file to each preset, export the same preset ourselves, and require the same tensors, the same type for each
// and the same bytes.
//
// Run from the repository root (ctest does). NXFT_LIBLLAMA overrides the library path.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "gguf/export.h"
#include "gguf/ggml_types.h"
#include "io/safetensors.h"
#include "util/events.h"
#include "util/fs.h"
#include "test_support.h"

using namespace nxft;


// llama.h (llama.cpp v0.4.0, the release node-llama-cpp 3.21.1 bundles): we only set the first two fields,
// nthread and ftype; the rest comes from llama_model_quantize_default_params(). The tail pad absorbs growth.
struct QuantizeParams {
  int32_t nthread;
  int32_t ftype;
  unsigned char rest[512];
};
typedef QuantizeParams (*default_params_fn)();
typedef uint32_t (*quantize_fn)(const char*, const char*, const QuantizeParams*);

// Minimal GGUF reader: tensor name → (type, bytes).
struct GgufTensors {
  std::map<std::string, std::pair<uint32_t, std::string>> t;
};
static GgufTensors read_tensors(const std::string& path) {
  std::string b = read_file(path);
  size_t p = 0;
  auto u32 = [&]() { uint32_t v; std::memcpy(&v, b.data() + p, 4); p += 4; return v; };
  auto u64 = [&]() { uint64_t v; std::memcpy(&v, b.data() + p, 8); p += 8; return v; };
  auto str = [&]() { uint64_t n = u64(); std::string s = b.substr(p, n); p += n; return s; };
  std::function<void(uint32_t)> skip = [&](uint32_t type) {
    static const int sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) { str(); return; }
    if (type == 9) { uint32_t et = u32(); uint64_t n = u64(); for (uint64_t i = 0; i < n; i++) skip(et); return; }
    p += size_t(sizes[type]);
  };
  p = 8;
  uint64_t nt = u64(), nkv = u64();
  uint32_t alignment = 32;
  for (uint64_t i = 0; i < nkv; i++) {
    std::string k = str();
    uint32_t type = u32();
    if (k == "general.alignment") { alignment = u32(); continue; }
    skip(type);
  }
  struct Info { std::string name; uint32_t type; uint64_t offset, nbytes; };
  std::vector<Info> infos;
  for (uint64_t i = 0; i < nt; i++) {
    Info in;
    in.name = str();
    uint32_t nd = u32();
    std::vector<int64_t> ne;
    for (uint32_t d = 0; d < nd; d++) ne.push_back(int64_t(u64()));
    in.type = u32();
    in.offset = u64();
    int64_t rows = 1;
    for (size_t d = 1; d < ne.size(); d++) rows *= ne[d];
    in.nbytes = ggml_row_bytes(GgmlType(in.type), ne[0]) * uint64_t(rows);
    infos.push_back(in);
  }
  size_t data0 = (p + alignment - 1) / alignment * alignment;
  GgufTensors g;
  for (const Info& in : infos) g.t[in.name] = {in.type, b.substr(data0 + in.offset, in.nbytes)};
  return g;
}

static TokenizerMeta dummy_tokenizer(int n) {
  TokenizerMeta t;
  t.model = "llama";
  t.pre = "default";
  for (int i = 0; i < n; i++) {
    t.tokens.push_back(i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : "tok" + std::to_string(i));
    t.scores.push_back(float(-i));
    t.token_types.push_back(i == 0 ? 2 : i < 3 ? 3 : 1);
  }
  t.bos_id = 1;
  t.eos_id = 2;
  t.unk_id = 0;
  return t;
}

static void write_synthetic(const std::string& dir) {
  make_dirs(dir);
  const int C = 256, F = 512, L = 8, NH = 4, NKV = 2, HD = 64, V = 512;
  std::mt19937 rng(99);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<std::vector<float>> store;
  std::vector<TensorToWrite> ts;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float base) {
    size_t n = 1;
    for (int64_t d : shape) n *= size_t(d);
    std::vector<float> v(n);
    for (float& x : v) x = base + nd(rng);
    store.push_back(std::move(v));
    TensorToWrite t;
    t.name = name;
    t.dtype = DType::F32;
    t.shape = shape;
    ts.push_back(t);
  };
  add("model.embed_tokens.weight", {V, C}, 0);
  for (int l = 0; l < L; l++) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {C}, 1);
    add(p + "self_attn.q_proj.weight", {NH * HD, C}, 0);
    add(p + "self_attn.k_proj.weight", {NKV * HD, C}, 0);
    add(p + "self_attn.v_proj.weight", {NKV * HD, C}, 0);
    add(p + "self_attn.o_proj.weight", {C, NH * HD}, 0);
    add(p + "post_attention_layernorm.weight", {C}, 1);
    add(p + "mlp.gate_proj.weight", {F, C}, 0);
    add(p + "mlp.up_proj.weight", {F, C}, 0);
    add(p + "mlp.down_proj.weight", {C, F}, 0);
  }
  add("model.norm.weight", {C}, 1);
  add("lm_head.weight", {V, C}, 0);
  for (size_t i = 0; i < ts.size(); i++) ts[i].data = store[i].data();
  write_safetensors(path_join(dir, "model.safetensors"), ts);
  write_file_atomic(path_join(dir, "config.json"),
                    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 256, "
                    "\"intermediate_size\": 512, \"num_hidden_layers\": 8, \"num_attention_heads\": 4, "
                    "\"num_key_value_heads\": 2, \"vocab_size\": 512, \"max_position_embeddings\": 256, "
                    "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false}");
}

int main() {
  void* h = open_llama_cpp_library("NXFT_LIBLLAMA", "libllama.v0.4.0.so");
  default_params_fn defaults;
  quantize_fn quantize;
  load_symbol(h, defaults, "llama_model_quantize_default_params");
  load_symbol(h, quantize, "llama_model_quantize");
  char tmpl[] = "/tmp/nxft-llama-quantize-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string synthetic = path_join(dir, "synthetic");
  write_synthetic(synthetic);

  struct Case { std::string model; std::vector<std::string> presets; };
  // stories260K: llama-quantize has no fallback for Q8_0/Q4_0 rows of 172 (it throws), so only the K presets.
  const std::vector<Case> cases = {
      {"../shared/fixtures/models/stories260K-hf", {"q4_k_m", "q5_k_m", "q6_k"}},
      {synthetic, {"q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0"}},
  };
  const std::map<std::string, int> ftype = {{"q8_0", 7}, {"q4_0", 2}, {"q4_k_m", 15}, {"q5_k_m", 17}, {"q6_k", 18}};
  int compared = 0;
  for (const Case& c : cases) {
    const std::string f32 = path_join(dir, basename_of(c.model) + ".f32.gguf");
    export_model_gguf(c.model, f32, "f32", dummy_tokenizer(512), "t", 2);
    for (const std::string& preset : c.presets) {
      const std::string ref = path_join(dir, basename_of(c.model) + ".ref." + preset + ".gguf");
      const std::string ours = path_join(dir, basename_of(c.model) + ".ours." + preset + ".gguf");
      QuantizeParams qp = defaults();
      qp.nthread = 1;
      qp.ftype = ftype.at(preset);
      uint32_t rc = quantize(f32.c_str(), ref.c_str(), &qp);
      CHECK_MSG(rc == 0, "llama_model_quantize %s %s failed (%u)", c.model.c_str(), preset.c_str(), rc);
      if (rc != 0) continue;
      export_model_gguf(c.model, ours, preset, dummy_tokenizer(512), "t", 2);
      GgufTensors a = read_tensors(ref), b = read_tensors(ours);
      CHECK_MSG(a.t.size() == b.t.size(), "%s: llama.cpp wrote %zu tensors, we %zu", preset.c_str(), a.t.size(), b.t.size());
      for (const auto& kv : a.t) {
        auto it = b.t.find(kv.first);
        CHECK_MSG(it != b.t.end(), "%s: we lack %s", preset.c_str(), kv.first.c_str());
        if (it == b.t.end()) continue;
        CHECK_MSG(kv.second.first == it->second.first, "%s %s: llama-quantize chose %s, we %s", preset.c_str(), kv.first.c_str(),
              ggml_type_name(GgmlType(kv.second.first)), ggml_type_name(GgmlType(it->second.first)));
        CHECK_MSG(kv.second.second == it->second.second, "%s %s (%s): bytes differ", preset.c_str(), kv.first.c_str(),
              ggml_type_name(GgmlType(kv.second.first)));
        compared++;
      }
      std::remove(ref.c_str());
      std::remove(ours.c_str());
    }
    std::remove(f32.c_str());
  }
  std::remove(path_join(synthetic, "model.safetensors").c_str());
  std::remove(path_join(synthetic, "config.json").c_str());
  rmdir(synthetic.c_str());
  rmdir(dir.c_str());
  std::printf("compared %d tensors with llama_model_quantize's output\n", compared);
  return test_result("test_gguf_llama_quantize");
}
