// lora_io_test.cpp — ModelWeights (load of the stories260K-hf fixture, deterministic random init, save/load
// round trip in f32 and bf16, shape errors) and LoRA adapters (PEFT init bounds and determinism, save_peft →
// load_peft round trip, adapter_config.json layout, and load errors naming the file and tensor).
#include <cmath>
#include <cstring>
#include "io/safetensors.h"
#include "model/lora.h"
#include "model/weights.h"
#include "test_util.h"
#include "util/fs.h"

using namespace nxft;

static ModelConfig tiny_config(const std::string& type) {
  std::string extra = type == "qwen2" ? R"(,"tie_word_embeddings":false)" : "";
  return ModelConfig::from_json(Json::parse(R"({"model_type":")" + type +
                                            R"(","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"pad_token_id":3)" +
                                            extra + "}"),
                                "tiny/config.json");
}

int main() {
  std::string dir = test_tmp_dir("lora_io");

  // --- ModelWeights::load on the fixture ---
  {
    ModelWeights w = ModelWeights::load(std::string(kFixtures) + "/models/stories260K-hf");
    CHECK(w.layers.size() == 5 && w.embed.size() == 512 * 64 && w.lm_head.empty() && w.head() == w.embed.data());
    CHECK(w.layers[2].wk.size() == 32 * 64 && w.layers[4].w_down.size() == 64 * 172 && w.layers[0].bq.empty());
    double s = 0;
    for (float v : w.final_norm) s += v;
    CHECK(std::isfinite(s) && s != 0);
  }
  // --- random_init: deterministic, seeded, transformers' conventions ---
  for (const char* type : {"llama", "qwen2", "gemma"}) {
    ModelConfig c = tiny_config(type);
    ModelWeights a = ModelWeights::random_init(c, 5), b = ModelWeights::random_init(c, 5), d = ModelWeights::random_init(c, 6);
    CHECK(a.embed == b.embed && a.layers[1].w_up == b.layers[1].w_up && a.embed != d.embed);
    CHECK(a.layers[0].wq != a.layers[1].wq);  // per-tensor streams
    float norm_value = std::string(type) == "gemma" ? 0.0f : 1.0f;
    for (float v : a.layers[1].attn_norm) CHECK(v == norm_value);
    for (int j = 0; j < 32; j++) CHECK(a.embed[size_t(3 * 32 + j)] == 0.0f);  // padding row
    double sum = 0, sq = 0;
    for (float v : a.layers[0].w_gate) { sum += v; sq += double(v) * v; }
    double n = double(a.layers[0].w_gate.size()), mean = sum / n, sd = std::sqrt(sq / n - mean * mean);
    CHECK_MSG(std::fabs(sd - 0.02) < 0.002 && std::fabs(mean) < 0.002, "%s: mean %g sd %g", type, mean, sd);
    if (std::string(type) == "qwen2") {
      CHECK(a.layers[0].bq.size() == 32 && a.layers[0].bk.size() == 16 && !a.lm_head.empty());
      for (float v : a.layers[0].bk) CHECK(v == 0.0f);
    }
  }
  // --- save/load round trip (f32 exact, bf16 = RNE of the fp32 values) and shape checking ---
  {
    ModelConfig c = tiny_config("qwen2");
    ModelWeights w = ModelWeights::random_init(c, 1);
    for (const char* dt : {"f32", "bf16"}) {
      std::string md = dir + "/model-" + dt;
      make_dirs(md);
      write_file_atomic(md + "/config.json", R"({"model_type":"qwen2","hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"pad_token_id":3,"tie_word_embeddings":false})");
      w.save_safetensors(md + "/model.safetensors", dt);
      ModelWeights r = ModelWeights::load(md);
      auto a = w.named_tensors(), b = r.named_tensors();
      CHECK(a.size() == b.size() && a.size() == 1 + 2 * 12 + 2);
      int bad = 0;
      for (size_t i = 0; i < a.size() && i < b.size(); i++)
        for (size_t k = 0; k < a[i].data->size(); k++) {
          float want = std::string(dt) == "f32" ? (*a[i].data)[k] : bf16_to_f32(f32_to_bf16((*a[i].data)[k]));
          if ((*b[i].data)[k] != want) bad++;
        }
      CHECK_MSG(bad == 0, "%s: %d values differ after save/load", dt, bad);
    }
    // config that disagrees with the weights → error naming the file and tensor
    std::string md = dir + "/model-f32";
    write_file_atomic(md + "/config.json", R"({"model_type":"qwen2","hidden_size":32,"intermediate_size":40,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"tie_word_embeddings":false})");
    EXPECT_THROW(EngineError, [&] { ModelWeights::load(md); }, "model.safetensors", "model.layers.0.mlp.gate_proj.weight",
                 "[48, 32]", "[40, 32]");
    write_file_atomic(md + "/config.json", R"({"model_type":"qwen2","hidden_size":32,"intermediate_size":48,"num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"tie_word_embeddings":false})");
    EXPECT_THROW(EngineError, [&] { ModelWeights::load(md); }, "missing tensor model.layers.2.input_layernorm.weight");
    EXPECT_THROW(EngineError, [&] { w.save_safetensors(dir + "/x.safetensors", "q8"); }, "unsupported dtype \"q8\"");
  }

  // --- LoRA ---
  ModelConfig c = tiny_config("llama");
  LoraSpec spec;
  spec.r = 4;
  spec.alpha = 8;
  spec.targets = {"down_proj", "q_proj", "v_proj"};  // any order in; kLoraTargets order out
  {
    LoraAdapter a = LoraAdapter::init(c, spec, 11), b = LoraAdapter::init(c, spec, 11), d = LoraAdapter::init(c, spec, 12);
    CHECK(a.pairs.size() == 6 && a.spec.targets == std::vector<std::string>({"q_proj", "v_proj", "down_proj"}));
    CHECK(a.pairs[0].layer == 0 && a.pairs[0].target == "q_proj" && a.pairs[5].layer == 1 && a.pairs[5].target == "down_proj");
    const LoraPair* dn = a.find(1, "down_proj");
    CHECK(dn && dn->in == 48 && dn->out == 32 && dn->A.size() == 4 * 48 && dn->B.size() == 32 * 4);
    CHECK(a.find(0, "v_proj")->out == 16 && a.find(0, "k_proj") == nullptr);
    for (const auto& p : a.pairs) {
      float bound = float(1.0 / std::sqrt(double(p.in)));
      float mx = 0;
      for (float v : p.A) { CHECK(std::fabs(v) <= bound); mx = std::max(mx, std::fabs(v)); }
      CHECK(mx > 0.8f * bound);  // really spread over the interval
      for (float v : p.B) CHECK(v == 0.0f);
    }
    CHECK(a.pairs[2].A == b.pairs[2].A && a.pairs[2].A != d.pairs[2].A && a.pairs[0].A != a.pairs[3].A);
    CHECK(std::fabs(spec.scale() - 2.0) < 1e-12);
    LoraSpec rs = spec;
    rs.rslora = true;
    CHECK(std::fabs(rs.scale() - 4.0) < 1e-12);
    LoraSpec badspec = spec;
    badspec.targets = {"lm_head"};
    EXPECT_THROW(EngineError, [&] { LoraAdapter::init(c, badspec, 0); }, "unsupported target module \"lm_head\"");
    badspec.targets = {"q_proj", "q_proj"};
    EXPECT_THROW(EngineError, [&] { LoraAdapter::init(c, badspec, 0); }, "listed twice");
  }
  {
    LoraAdapter a = LoraAdapter::init(c, spec, 3);
    for (auto& p : a.pairs)
      for (size_t i = 0; i < p.B.size(); i++) p.B[i] = float(i % 7) * 0.01f - 0.03f;
    a.spec.dropout = 0.05;
    std::string ad = dir + "/adapter";
    a.save_peft(ad, "tiny-base");
    LoraAdapter b = LoraAdapter::load_peft(ad, c);
    CHECK(b.spec.r == 4 && b.spec.alpha == 8 && b.spec.dropout == 0.05 && !b.spec.rslora && b.spec.targets == a.spec.targets);
    CHECK(b.pairs.size() == a.pairs.size());
    for (size_t i = 0; i < a.pairs.size() && i < b.pairs.size(); i++)
      CHECK(a.pairs[i].A == b.pairs[i].A && a.pairs[i].B == b.pairs[i].B && a.pairs[i].target == b.pairs[i].target);
    // adapter_config.json: sorted keys, indent 2, PEFT values
    std::string text = read_file(ad + "/adapter_config.json");
    Json j = Json::parse(text);
    std::string prev;
    for (const auto& kv : j.as_object()) { CHECK_MSG(kv.first > prev, "keys not sorted at %s", kv.first.c_str()); prev = kv.first; }
    CHECK(j.at("peft_type").as_string() == "LORA" && j.at("task_type").as_string() == "CAUSAL_LM" && j.at("r").as_int() == 4);
    CHECK(j.at("lora_alpha").as_number() == 8 && j.at("base_model_name_or_path").as_string() == "tiny-base");
    CHECK(j.at("target_modules").size() == 3 && !j.at("use_rslora").as_bool() && j.at("bias").as_string() == "none");
    CHECK(text.find("{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,") == 0 && text.find("\"lora_alpha\": 8,") != std::string::npos);
    auto f = SafetensorsFile::open(ad + "/adapter_model.safetensors");
    CHECK(f->metadata().at("format") == "pt" && f->tensors().size() == 12);
    const TensorView* tv = f->find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    CHECK(tv && tv->dtype == DType::F32 && tv->shape == std::vector<int64_t>({4, 48}));
    tv = f->find("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
    CHECK(tv && tv->shape == std::vector<int64_t>({16, 4}));

    // --- load errors ---
    auto cfg_with = [&](const std::string& key, const std::string& value) {
      Json jj = j;
      jj.set(key, Json::parse(value));
      write_file_atomic(ad + "/adapter_config.json", jj.dump(2));
    };
    cfg_with("r", "8");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "adapter_model.safetensors", "layers.0.self_attn.q_proj.lora_A.weight",
                 "has shape [4, 32], expected [8, 32]");
    cfg_with("r", "0");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "adapter_config.json: r:");
    cfg_with("peft_type", "\"IA3\"");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "adapter_config.json: peft_type");
    cfg_with("target_modules", "\".*proj\"");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "target_modules", "regular-expression");
    cfg_with("target_modules", R"(["q_proj","k_proj","v_proj","down_proj"])");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight");
    cfg_with("target_modules", R"(["q_proj","v_proj"])");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "unexpected tensor base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
    cfg_with("use_dora", "true");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "use_dora");
    cfg_with("rank_pattern", R"({"q_proj": 2})");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "rank_pattern");
    write_file_atomic(ad + "/adapter_config.json", "{\"r\": 4,\n \"peft_type\": }");
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "adapter_config.json:2:");
    // a base with another shape
    write_file_atomic(ad + "/adapter_config.json", text);
    ModelConfig other = tiny_config("llama");
    other.intermediate_size = 40;
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, other); }, "layers.0.mlp.down_proj.lora_A.weight", "expected [4, 40]");
    ModelConfig fewer = tiny_config("llama");
    fewer.num_layers = 1;
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, fewer); }, "unexpected tensor base_model.model.model.layers.1.");
    CHECK(LoraAdapter::load_peft(ad, c).pairs.size() == 6);  // restored config loads again
    ::unlink((ad + "/adapter_model.safetensors").c_str());
    EXPECT_THROW(EngineError, [&] { LoraAdapter::load_peft(ad, c); }, "adapter_model.safetensors: missing");
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  return test_result("lora_io_test");
}
