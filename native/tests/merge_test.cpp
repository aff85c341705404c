// merge_test.cpp — the merge command on a tiny sharded bf16 model: W' = W + scale·B·A compared with a
// straightforward fp64 computation (f32 output within fp32 rounding, bf16/f16 outputs = the correctly rounded
// value within 1 ulp), untouched tensors copied bit for bit, sharding/index/config/companion files, and errors.
// Also runs the init command and checks its folder loads back.
#include <cmath>
#include <cstring>
#include <map>
#include "commands/command.h"
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/weights.h"
#include "test_util.h"
#include "util/fs.h"
#include "util/rng.h"

using namespace nxft;

static const char* kConfig =
    R"({"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,)"
    R"("num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"tie_word_embeddings":false,"torch_dtype":"bfloat16","rope_theta":10000.0})";

static int run_command(const std::string& name, const std::string& job_json, const std::string& job_path) {
  write_file_atomic(job_path, job_json);
  CommandFn fn = find_command(name);
  if (!fn) { std::fprintf(stderr, "command %s not registered\n", name.c_str()); g_failures++; return -1; }
  return fn(Json::parse(job_json), job_path);
}

static std::vector<float> read_f32(const TensorView& tv) {
  std::vector<float> v(size_t(tv.numel()));
  convert_to_f32(tv.data, tv.dtype, v.data(), v.size());
  return v;
}

int main() {
  std::string dir = test_tmp_dir("merge");
  const std::string base = dir + "/base", adapter_dir = dir + "/adapter";
  ModelConfig cfg = ModelConfig::from_json(Json::parse(kConfig), "config.json");

  // --- base: random init, bf16, two shards split after layer 0, with an index json and companion files ---
  ModelWeights w = ModelWeights::random_init(cfg, 21);
  make_dirs(base);
  std::map<std::string, std::string> weight_map;
  std::vector<TensorToWrite> shard[2];
  for (const auto& nt : w.named_tensors()) {
    int s = (nt.spec.name.find("layers.1.") != std::string::npos || nt.spec.name.find("lm_head") != std::string::npos ||
             nt.spec.name == "model.norm.weight") ? 1 : 0;
    TensorToWrite t;
    t.name = nt.spec.name;
    t.dtype = DType::BF16;
    t.shape = nt.spec.shape;
    t.f32 = nt.data->data();
    shard[s].push_back(t);
    weight_map[t.name] = s == 0 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(base + "/model-00001-of-00002.safetensors", shard[0]);
  write_safetensors(base + "/model-00002-of-00002.safetensors", shard[1]);
  Json wm = Json::object();
  for (auto& kv : weight_map) wm.set(kv.first, Json::string(kv.second));
  write_file_atomic(base + "/model.safetensors.index.json",
                    Json::object().set("metadata", Json::object().set("total_size", Json::number(0))).set("weight_map", wm).dump(2));
  write_file_atomic(base + "/config.json", kConfig);
  write_file_atomic(base + "/tokenizer.json", "{\"tok\": 1}");
  write_file_atomic(base + "/generation_config.json", "{\"bos_token_id\": 1}");

  // --- adapter: PEFT init with non-zero B, rsLoRA off, alpha 16 / r 4 = scale 4 ---
  LoraSpec spec;
  spec.r = 4;
  spec.alpha = 16;
  spec.targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  LoraAdapter ad = LoraAdapter::init(cfg, spec, 5);
  for (auto& p : ad.pairs) {
    Rng rng = Rng::stream(99, p.target + std::to_string(p.layer));
    for (float& b : p.B) b = float(rng.normal(0, 0.05));
  }
  ad.save_peft(adapter_dir, "tiny");

  auto base_st = SafetensorsModel::open_dir(base);
  std::map<std::string, const LoraPair*> lora_of;
  for (const auto& p : ad.pairs) {
    bool attn = p.target.find("_proj") != std::string::npos && p.target.size() == 6;  // q_proj k_proj v_proj o_proj
    lora_of["model.layers." + std::to_string(p.layer) + (attn ? ".self_attn." : ".mlp.") + p.target + ".weight"] = &p;
  }
  CHECK(lora_of.size() == 14);

  // bf16 twice: whole tensors, then tiny row chunks (3 rows of 32 values per chunk: many chunks per tensor).
  for (const char* dt : {"f32", "bf16", "f16", "bf16-chunked"}) {
    std::string dts = dt;
    if (dts == "bf16-chunked") { ::setenv("NXFT_MERGE_CHUNK_ELEMS", "100", 1); dts = "bf16"; }
    const std::string out = dir + "/merged-" + dt;
    std::string job = std::string(R"({"command":"merge","base":")") + base + R"(","adapter":")" + adapter_dir +
                      R"(","dtype":")" + dts + R"(","out":")" + out + R"(","threads":2})";
    CHECK(run_command("merge", job, dir + "/merge.json") == 0);
    auto m = SafetensorsModel::open_dir(out);
    CHECK(m->shard_files() == base_st->shard_files());
    Json idx = Json::parse(read_file(out + "/model.safetensors.index.json"));
    CHECK(idx.at("weight_map").size() == weight_map.size());
    for (auto& kv : weight_map) CHECK(idx.at("weight_map").at(kv.first).as_string() == kv.second && m->shard_of(kv.first) == kv.second);
    DType D = float_dtype_from_string(dts);
    uint64_t total = 0;
    for (const auto& n : m->names()) total += m->get(n).nbytes;
    CHECK(uint64_t(idx.at("metadata").at("total_size").as_number()) == total);
    Json conf = Json::parse(read_file(out + "/config.json"));
    CHECK(conf.at("torch_dtype").as_string() == torch_dtype_name(D) && !conf.has("dtype"));
    CHECK(conf.at("hidden_size").as_int() == 32 && conf.at("rope_theta").as_number() == 10000.0);
    CHECK(read_file(out + "/tokenizer.json") == "{\"tok\": 1}" && path_exists(out + "/generation_config.json"));

    int worst_ulp = 0, untouched_bad = 0;
    double worst_f32 = 0;
    for (const auto& name : base_st->names()) {
      const TensorView& b = base_st->get(name);
      const TensorView& o = m->get(name);
      CHECK(o.dtype == D && o.shape == b.shape);
      auto it = lora_of.find(name);
      if (it == lora_of.end()) {
        // unchanged tensors: the base value converted to D (bf16 → bf16 byte-identical)
        std::vector<float> bv = read_f32(b), ov = read_f32(o);
        for (size_t i = 0; i < bv.size(); i++) {
          float want = D == DType::F16 ? f16_to_f32(f32_to_f16(bv[i])) : bv[i];
          if (ov[i] != want) untouched_bad++;
        }
        continue;
      }
      const LoraPair& p = *it->second;
      std::vector<float> bv = read_f32(b), ov = read_f32(o);
      for (int i = 0; i < p.out; i++)
        for (int j = 0; j < p.in; j++) {
          double delta = 0, mag = 0;
          for (int k = 0; k < spec.r; k++) {
            double t = double(p.B[size_t(i * spec.r + k)]) * double(p.A[size_t(k * p.in + j)]);
            delta += t;
            mag += std::fabs(t);
          }
          double want = double(bv[size_t(i * p.in + j)]) + spec.scale() * delta;   // fp64 reference
          float got = ov[size_t(i * p.in + j)];
          if (D == DType::F32) {
            // fp32 evaluation error bound of W + s·Σ_k B·A: (r + 3) · 2^-24 · (|W| + s·Σ|B·A|); report the ratio.
            double bound = (spec.r + 3) * std::ldexp(1.0, -24) * (std::fabs(double(bv[size_t(i * p.in + j)])) + spec.scale() * mag);
            worst_f32 = std::max(worst_f32, std::fabs(double(got) - want) / bound);
          } else {
            uint16_t want_bits = D == DType::BF16 ? f32_to_bf16(float(want)) : f32_to_f16(float(want));
            uint16_t got_bits = D == DType::BF16 ? f32_to_bf16(got) : f32_to_f16(got);
            worst_ulp = std::max(worst_ulp, std::abs(int(want_bits) - int(got_bits)));
          }
        }
    }
    std::fprintf(stderr, "merge %s: worst f32 error / fp32 bound %.3g, worst 16-bit ulp %d\n", dt, worst_f32, worst_ulp);
    CHECK_MSG(untouched_bad == 0, "%s: %d untouched values changed", dt, untouched_bad);
    CHECK_MSG(worst_f32 <= 1.0, "%s: f32 merge error exceeds the fp32 bound (ratio %g)", dt, worst_f32);
    CHECK_MSG(worst_ulp <= 1, "%s: 16-bit merge off by %d ulp", dt, worst_ulp);
    ::unsetenv("NXFT_MERGE_CHUNK_ELEMS");
    if (dts == "bf16") {
      // The merged model loads as ModelWeights (shapes check against config.json).
      ModelWeights mw = ModelWeights::load(out);
      CHECK(mw.layers.size() == 2 && mw.lm_head.size() == 64 * 32);
    }
  }

  // --- single-file base: output is a single model.safetensors with no index ---
  {
    std::string b1 = dir + "/base1";
    make_dirs(b1);
    w.save_safetensors(b1 + "/model.safetensors", "f32");
    write_file_atomic(b1 + "/config.json", kConfig);
    std::string out = dir + "/merged1";
    CHECK(run_command("merge", R"({"command":"merge","base":")" + b1 + R"(","adapter":")" + adapter_dir + R"(","dtype":"f32","out":")" + out + "\"}",
                      dir + "/m1.json") == 0);
    CHECK(path_exists(out + "/model.safetensors") && !path_exists(out + "/model.safetensors.index.json"));
    auto m = SafetensorsModel::open_dir(out);
    // unchanged f32 tensors are byte-identical
    CHECK(std::memcmp(m->get("model.embed_tokens.weight").data, w.embed.data(), w.embed.size() * 4) == 0);
  }

  // --- errors: adapter for another shape; out == base; unknown job key; nothing half-written ---
  {
    ModelConfig other = cfg;
    other.intermediate_size = 40;
    LoraAdapter bad = LoraAdapter::init(other, spec, 1);
    bad.save_peft(dir + "/bad-adapter", "x");
    std::string out = dir + "/merged-bad";
    EXPECT_THROW(EngineError, [&] {
      run_command("merge", R"({"command":"merge","base":")" + base + R"(","adapter":")" + dir + R"(/bad-adapter","dtype":"bf16","out":")" + out + "\"}",
                  dir + "/bad.json");
    }, "adapter_model.safetensors", "mlp.gate_proj.lora_B.weight", "[48, 4]");
    CHECK(!path_exists(out + "/config.json"));
    EXPECT_THROW(EngineError, [&] {
      run_command("merge", R"({"command":"merge","base":")" + base + R"(","adapter":")" + adapter_dir + R"(","dtype":"bf16","out":")" + base + "/\"}",
                  dir + "/bad2.json");
    }, "bad2.json: out: must differ from base");
    EXPECT_THROW(EngineError, [&] {
      run_command("merge", R"({"command":"merge","base":")" + base + R"(","adapter":")" + adapter_dir + R"(","dtype":"q4","out":")" + out + "\"}",
                  dir + "/bad3.json");
    }, "bad3.json: dtype: \"q4\" is not one of");
    EXPECT_THROW(EngineError, [&] {
      run_command("merge", R"({"command":"merge","base":")" + base + R"(","adapter":")" + adapter_dir + R"(","dtype":"f32","out":")" + out + R"(","shards":2})",
                  dir + "/bad4.json");
    }, "bad4.json: shards: unknown field");
  }

  // --- init: deterministic folder that loads back ---
  {
    write_file_atomic(dir + "/init-config.json", kConfig);
    for (const char* name : {"i1", "i2"}) {
      std::string job = R"({"command":"init","config":")" + dir + R"(/init-config.json","seed":7,"dtype":"bf16","out":")" + dir + "/" + name +
                        R"(","tokenizer_files":[")" + base + R"(/tokenizer.json"]})";
      CHECK(run_command("init", job, dir + "/init.json") == 0);
    }
    CHECK(read_file(dir + "/i1/model.safetensors") == read_file(dir + "/i2/model.safetensors"));
    CHECK(read_file(dir + "/i1/config.json") == kConfig && read_file(dir + "/i1/tokenizer.json") == "{\"tok\": 1}");
    ModelWeights iw = ModelWeights::load(dir + "/i1");
    ModelWeights ref = ModelWeights::random_init(cfg, 7);
    CHECK(iw.layers[1].wv.size() == ref.layers[1].wv.size());
    bool same = true;
    for (size_t i = 0; i < ref.layers[1].wv.size(); i++) same &= iw.layers[1].wv[i] == bf16_to_f32(f32_to_bf16(ref.layers[1].wv[i]));
    CHECK(same);
    EXPECT_THROW(EngineError, [&] {
      run_command("init", R"({"command":"init","config":")" + dir + R"(/init-config.json","out":")" + dir + R"(/i3","tokenizer_files":["/nonexistent/t.json"]})",
                  dir + "/init-bad.json");
    }, "tokenizer_files[0]: no such file");
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  return test_result("merge_test");
}
