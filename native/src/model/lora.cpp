// lora.cpp — LoRA adapters: deterministic PEFT-style init, and the PEFT on-disk format
// (adapter_config.json + adapter_model.safetensors, native.md §3).
#include "model/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "io/safetensors.h"
#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/rng.h"

namespace nxft {

double LoraSpec::scale() const { return rslora ? alpha / std::sqrt(double(r)) : alpha / double(r); }

int LoraSpec::vocab_size(const ModelConfig& base) const {
  return token_indices.empty() ? base.vocab_size : std::max(base.vocab_size, token_indices.back() + 1);
}

ModelConfig with_adapter_vocab(const ModelConfig& base, const LoraSpec& spec) {
  ModelConfig c = base;
  c.vocab_size = spec.vocab_size(base);
  return c;
}

void check_token_indices(const std::vector<int>& idx, const std::string& where) {
  for (size_t i = 0; i < idx.size(); i++) {
    if (idx[i] < 0 || idx[i] >= (1 << 24)) throw EngineError(where + "token index " + std::to_string(idx[i]) + " is out of range");
    if (i > 0 && idx[i] <= idx[i - 1]) throw EngineError(where + "token indices must be ascending without repeats");
  }
}

// PEFT's names for the trainable token rows (TrainableTokensWrapper around embed_tokens / lm_head).
static const char* kEmbedTokensDelta = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta";
static const char* kHeadTokensDelta = "base_model.model.lm_head.token_adapter.trainable_tokens_delta";

LoraPair* LoraAdapter::find(int layer, const std::string& target) {
  for (auto& p : pairs)
    if (p.layer == layer && p.target == target) return &p;
  return nullptr;
}
const LoraPair* LoraAdapter::find(int layer, const std::string& target) const {
  for (const auto& p : pairs)
    if (p.layer == layer && p.target == target) return &p;
  return nullptr;
}

static bool is_attn_target(const std::string& t) { return t == "q_proj" || t == "k_proj" || t == "v_proj" || t == "o_proj"; }

std::string LoraAdapter::peft_name(int layer, const std::string& target, char which) {
  return "base_model.model.model.layers." + std::to_string(layer) + (is_attn_target(target) ? ".self_attn." : ".mlp.") +
         target + (which == 'A' ? ".lora_A.weight" : ".lora_B.weight");
}

// (in, out) of a projection, from the config.
static void proj_dims(const ModelConfig& c, const std::string& t, int* in, int* out) {
  const int C = c.hidden_size, F = c.intermediate_size, Q = c.num_heads * c.head_dim, KV = c.num_kv_heads * c.head_dim;
  if (t == "q_proj") { *in = C; *out = Q; }
  else if (t == "k_proj" || t == "v_proj") { *in = C; *out = KV; }
  else if (t == "o_proj") { *in = Q; *out = C; }
  else if (t == "gate_proj" || t == "up_proj") { *in = C; *out = F; }
  else if (t == "down_proj") { *in = F; *out = C; }
  else throw EngineError("unknown LoRA target \"" + t + "\"");
}

// Checks a spec; `where` prefixes messages (e.g. "job.json: lora.targets: "). Targets come back in
// kLoraTargets order, so adapters are laid out the same way whatever order the user wrote.
static std::vector<std::string> checked_targets(const LoraSpec& spec, const std::string& where) {
  if (spec.r <= 0) throw EngineError(where + "r must be a positive integer, got " + std::to_string(spec.r));
  if (!(spec.alpha > 0) || !std::isfinite(spec.alpha)) throw EngineError(where + "alpha must be positive");
  if (!(spec.dropout >= 0 && spec.dropout < 1)) throw EngineError(where + "dropout must be in [0, 1)");
  if (spec.targets.empty()) throw EngineError(where + "targets must not be empty");
  std::set<std::string> want;
  for (const auto& t : spec.targets) {
    if (std::find_if(std::begin(kLoraTargets), std::end(kLoraTargets), [&](const char* k) { return t == k; }) == std::end(kLoraTargets))
      throw EngineError(where + "unsupported target module \"" + t +
                        "\" (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
    if (!want.insert(t).second) throw EngineError(where + "target \"" + t + "\" listed twice");
  }
  std::vector<std::string> ordered;
  for (const char* k : kLoraTargets)
    if (want.count(k)) ordered.push_back(k);
  return ordered;
}

LoraAdapter LoraAdapter::init(const ModelConfig& cfg, const LoraSpec& spec, uint64_t seed) {
  // PEFT's reset_lora_parameters with init_lora_weights=True: kaiming_uniform_(A, a=√5), i.e.
  // A ~ U(-1/√in, 1/√in), and B = 0. Values come from Rng::stream(seed, peft_name(l, t, 'A')) (util/rng.h),
  // so each pair is independent of the others and of the target list.
  LoraAdapter ad;
  ad.spec = spec;
  ad.spec.targets = checked_targets(spec, "lora: ");
  for (int l = 0; l < cfg.num_layers; l++)
    for (const auto& t : ad.spec.targets) {
      LoraPair p;
      p.target = t;
      p.layer = l;
      proj_dims(cfg, t, &p.in, &p.out);
      p.A.resize(size_t(spec.r) * size_t(p.in));
      p.B.assign(size_t(p.out) * size_t(spec.r), 0.0f);
      const double bound = 1.0 / std::sqrt(double(p.in));
      Rng rng = Rng::stream(seed, peft_name(l, t, 'A'));
      for (float& a : p.A) a = float(rng.uniform(-bound, bound));
      ad.pairs.push_back(std::move(p));
    }
  return ad;
}

void LoraAdapter::save_peft(const std::string& dir, const std::string& base_model_name_or_path) const {
  make_dirs(dir);
  // adapter_config.json: the keys PEFT's LoraConfig writes (native.md §3.2), sorted and indented like
  // json.dumps(indent=2, sort_keys=True). Features we do not use keep PEFT's defaults.
  std::map<std::string, Json> cfg;
  Json targets = Json::array();
  for (const auto& t : spec.targets) targets.push(Json::string(t));
  cfg["alpha_pattern"] = Json::object();
  cfg["auto_mapping"] = Json();
  cfg["base_model_name_or_path"] = base_model_name_or_path.empty() ? Json() : Json::string(base_model_name_or_path);
  cfg["bias"] = Json::string("none");
  cfg["exclude_modules"] = Json();
  cfg["fan_in_fan_out"] = Json::boolean(false);
  cfg["inference_mode"] = Json::boolean(true);
  cfg["init_lora_weights"] = Json::boolean(true);
  cfg["layer_replication"] = Json();
  cfg["layers_pattern"] = Json();
  cfg["layers_to_transform"] = Json();
  cfg["loftq_config"] = Json::object();
  cfg["lora_alpha"] = Json::number(spec.alpha);
  cfg["lora_bias"] = Json::boolean(false);
  cfg["lora_dropout"] = Json::number(spec.dropout);
  cfg["megatron_config"] = Json();
  cfg["megatron_core"] = Json::string("megatron.core");
  cfg["modules_to_save"] = Json();
  cfg["peft_type"] = Json::string("LORA");
  cfg["r"] = Json::number(spec.r);
  cfg["rank_pattern"] = Json::object();
  cfg["revision"] = Json();
  cfg["target_modules"] = targets;
  cfg["task_type"] = Json::string("CAUSAL_LM");
  if (!spec.token_indices.empty()) {
    // A list targets the input embedding (PEFT ties a tied lm_head to it); an untied head is listed by name.
    Json idx = Json::array();
    for (int i : spec.token_indices) idx.push(Json::number(i));
    if (head_rows.empty()) cfg["trainable_token_indices"] = idx;
    else cfg["trainable_token_indices"] = Json::object().set("embed_tokens", idx).set("lm_head", idx);
  }
  cfg["use_dora"] = Json::boolean(false);
  cfg["use_rslora"] = Json::boolean(spec.rslora);
  Json j = Json::object();
  for (auto& kv : cfg) j.set(kv.first, kv.second);  // std::map iterates sorted

  // Tensors sorted by name (as safetensors' writer orders same-dtype tensors), F32.
  std::vector<TensorToWrite> tensors;
  for (const auto& p : pairs) {
    if (p.A.size() != size_t(spec.r) * size_t(p.in) || p.B.size() != size_t(p.out) * size_t(spec.r))
      throw EngineError("save_peft: pair " + peft_name(p.layer, p.target, 'A') + " has wrong sizes");
    TensorToWrite a, b;
    a.name = peft_name(p.layer, p.target, 'A');
    a.shape = {spec.r, p.in};
    a.f32 = p.A.data();
    b.name = peft_name(p.layer, p.target, 'B');
    b.shape = {p.out, spec.r};
    b.f32 = p.B.data();
    tensors.push_back(a);
    tensors.push_back(b);
  }
  if (!spec.token_indices.empty()) {
    const size_t K = spec.token_indices.size();
    if (embed_rows.empty() || embed_rows.size() % K != 0 || (!head_rows.empty() && head_rows.size() != embed_rows.size()))
      throw EngineError("save_peft: trainable token rows have wrong sizes");
    const int64_t C = int64_t(embed_rows.size() / K);
    TensorToWrite e;
    e.name = kEmbedTokensDelta;
    e.shape = {int64_t(K), C};
    e.f32 = embed_rows.data();
    tensors.push_back(e);
    if (!head_rows.empty()) {
      TensorToWrite h = e;
      h.name = kHeadTokensDelta;
      h.f32 = head_rows.data();
      tensors.push_back(h);
    }
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorToWrite& x, const TensorToWrite& y) { return x.name < y.name; });
  write_safetensors(path_join(dir, "adapter_model.safetensors"), tensors, {{"format", "pt"}});
  write_file_atomic(path_join(dir, "adapter_config.json"), j.dump(2));
}

LoraAdapter LoraAdapter::load_peft(const std::string& dir, const ModelConfig& cfg) {
  const std::string cfg_path = path_join(dir, "adapter_config.json");
  const std::string st_path = path_join(dir, "adapter_model.safetensors");
  Json j;
  try {
    j = Json::parse(read_file(cfg_path), cfg_path);
  } catch (const JsonError& e) {
    throw EngineError(e.what(), cfg_path);
  }
  auto fail = [&](const std::string& field, const std::string& what) -> void {
    throw EngineError(cfg_path + ": " + field + ": " + what, cfg_path, field);
  };
  if (!j.is_object()) fail("(root)", "expected a JSON object");
  auto get = [&](const char* k) -> const Json* {
    const Json* v = j.find(k);
    return (v && !v->is_null()) ? v : nullptr;
  };
  const Json* pt = get("peft_type");
  if (!pt || !pt->is_string() || pt->as_string() != "LORA") fail("peft_type", "expected \"LORA\"");
  LoraSpec spec;
  const Json* r = get("r");
  if (!r || !r->is_number() || r->as_number() != std::floor(r->as_number()) || r->as_number() < 1 || r->as_number() > 65536)
    fail("r", "expected a positive integer");
  spec.r = int(r->as_number());
  const Json* alpha = get("lora_alpha");
  spec.alpha = 8;  // PEFT's default
  if (alpha) {
    if (!alpha->is_number()) fail("lora_alpha", "expected a number");
    spec.alpha = alpha->as_number();
  }
  if (const Json* d = get("lora_dropout")) {
    if (!d->is_number()) fail("lora_dropout", "expected a number");
    spec.dropout = d->as_number();
  }
  if (const Json* rs = get("use_rslora")) {
    if (!rs->is_bool()) fail("use_rslora", "expected true or false");
    spec.rslora = rs->as_bool();
  }
  // Features this engine does not implement are refused rather than ignored.
  auto refuse_true = [&](const char* k) {
    if (const Json* v = get(k)) if (!(v->is_bool() && !v->as_bool())) fail(k, "only false is supported");
  };
  refuse_true("use_dora");
  refuse_true("fan_in_fan_out");
  refuse_true("lora_bias");
  if (const Json* b = get("bias")) if (!b->is_string() || b->as_string() != "none") fail("bias", "only \"none\" is supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (const Json* v = get(k)) if (!v->is_object() || v->size() != 0) fail(k, "per-module ranks/alphas are not supported");
  for (const char* k : {"modules_to_save", "layers_to_transform", "layer_replication"})
    if (const Json* v = get(k)) if (!(v->is_array() && v->size() == 0)) fail(k, "not supported (must be null)");
  const Json* tm = get("target_modules");
  if (!tm) fail("target_modules", "missing");
  if (tm->is_string()) fail("target_modules", "regular-expression targets are not supported; list module names");
  if (!tm->is_array()) fail("target_modules", "expected a list of module names");
  for (const Json& t : tm->as_array()) {
    if (!t.is_string()) fail("target_modules", "expected a list of module names");
    spec.targets.push_back(t.as_string());
  }
  try {
    spec.targets = checked_targets(spec, "");
  } catch (const EngineError& e) {
    fail("target_modules", e.what());
  }

  // trainable_token_indices: a list (the input embedding, and a tied head with it) or {"embed_tokens": [...],
  // "lm_head": [...]} with the same list for both (an untied head; the rows we train are those of both).
  bool untied_head_rows = false;
  if (const Json* tt = get("trainable_token_indices")) {
    auto read_list = [&](const Json& v, const std::string& field) {
      std::vector<int> out;
      if (!v.is_array() || v.size() == 0) fail(field, "expected a non-empty list of token ids");
      for (const Json& x : v.as_array()) {
        if (!x.is_number() || x.as_number() != std::floor(x.as_number())) fail(field, "expected integer token ids");
        out.push_back(int(x.as_number()));
      }
      try {
        check_token_indices(out, "");
      } catch (const EngineError& e) {
        fail(field, e.what());
      }
      return out;
    };
    if (tt->is_array()) {
      spec.token_indices = read_list(*tt, "trainable_token_indices");
    } else if (tt->is_object()) {
      for (const auto& kv : tt->as_object())
        if (kv.first != "embed_tokens" && kv.first != "lm_head")
          fail("trainable_token_indices", "only embed_tokens and lm_head are supported, found \"" + kv.first + "\"");
      const Json* e = tt->find("embed_tokens");
      if (!e) fail("trainable_token_indices", "a dict must list embed_tokens");
      spec.token_indices = read_list(*e, "trainable_token_indices.embed_tokens");
      if (const Json* h = tt->find("lm_head")) {
        if (read_list(*h, "trainable_token_indices.lm_head") != spec.token_indices)
          fail("trainable_token_indices.lm_head", "must list the same tokens as embed_tokens");
        untied_head_rows = true;
      }
    } else {
      fail("trainable_token_indices", "expected a list of token ids or a dict of them");
    }
    if (untied_head_rows && cfg.tie_word_embeddings)
      fail("trainable_token_indices.lm_head", "the base ties lm_head to embed_tokens (tie_word_embeddings): list the tokens once");
    if (!untied_head_rows && !cfg.tie_word_embeddings)
      fail("trainable_token_indices", "the base has its own lm_head (tie_word_embeddings false): list the tokens for embed_tokens and lm_head");
  }

  if (!path_exists(st_path)) {
    if (path_exists(path_join(dir, "adapter_model.bin")))
      throw EngineError(dir + ": adapter_model.bin (pickle) is not supported; save the adapter with safetensors", dir);
    throw EngineError(st_path + ": missing", st_path);
  }
  auto file = SafetensorsFile::open(st_path);
  LoraAdapter ad;
  ad.spec = spec;
  std::set<std::string> used;
  for (int l = 0; l < cfg.num_layers; l++)
    for (const auto& t : spec.targets) {
      LoraPair p;
      p.target = t;
      p.layer = l;
      proj_dims(cfg, t, &p.in, &p.out);
      for (char which : {'A', 'B'}) {
        std::string name = peft_name(l, t, which);
        const TensorView* tv = file->find(name);
        if (!tv) throw EngineError(st_path + ": missing tensor " + name + " (target_modules lists " + t + ")", st_path, name);
        std::vector<int64_t> want = which == 'A' ? std::vector<int64_t>{spec.r, p.in} : std::vector<int64_t>{p.out, spec.r};
        if (tv->shape != want) {
          auto s = [](const std::vector<int64_t>& v) {
            std::string o = "[";
            for (size_t i = 0; i < v.size(); i++) o += (i ? ", " : "") + std::to_string(v[i]);
            return o + "]";
          };
          throw EngineError(st_path + ": tensor " + name + " has shape " + s(tv->shape) + ", expected " + s(want) +
                                " (r = " + std::to_string(spec.r) + " from adapter_config.json and the base config)",
                            st_path, name);
        }
        if (tv->dtype != DType::F32 && tv->dtype != DType::F16 && tv->dtype != DType::BF16)
          throw EngineError(st_path + ": tensor " + name + " has dtype " + dtype_name(tv->dtype) + " (expected F32, F16 or BF16)", st_path, name);
        std::vector<float>& dst = which == 'A' ? p.A : p.B;
        dst.resize(size_t(tv->numel()));
        convert_to_f32(tv->data, tv->dtype, dst.data(), dst.size());
        for (float v : dst)
          if (!std::isfinite(v)) throw EngineError(st_path + ": tensor " + name + " contains NaN or Inf", st_path, name);
        used.insert(name);
      }
      ad.pairs.push_back(std::move(p));
    }
  if (!spec.token_indices.empty()) {
    const int64_t K = int64_t(spec.token_indices.size()), C = cfg.hidden_size;
    for (const char* name : {kEmbedTokensDelta, kHeadTokensDelta}) {
      const bool head = name == kHeadTokensDelta;
      if (head && !untied_head_rows) continue;
      const TensorView* tv = file->find(name);
      if (!tv) throw EngineError(st_path + ": missing tensor " + name + " (adapter_config.json lists trainable_token_indices)", st_path, name);
      if (tv->shape != std::vector<int64_t>{K, C})
        throw EngineError(st_path + ": tensor " + std::string(name) + " has the wrong shape, expected [" + std::to_string(K) + ", " +
                              std::to_string(C) + "] (trainable_token_indices × hidden_size)", st_path, name);
      if (tv->dtype != DType::F32 && tv->dtype != DType::F16 && tv->dtype != DType::BF16)
        throw EngineError(st_path + ": tensor " + std::string(name) + " has dtype " + dtype_name(tv->dtype) + " (expected F32, F16 or BF16)", st_path, name);
      std::vector<float>& dst = head ? ad.head_rows : ad.embed_rows;
      dst.resize(size_t(K * C));
      convert_to_f32(tv->data, tv->dtype, dst.data(), dst.size());
      for (float v : dst)
        if (!std::isfinite(v)) throw EngineError(st_path + ": tensor " + std::string(name) + " contains NaN or Inf", st_path, name);
      used.insert(name);
    }
  }
  for (const auto& tv : file->tensors())
    if (!used.count(tv.name))
      throw EngineError(st_path + ": unexpected tensor " + tv.name + " (not a lora_A/lora_B of the listed target_modules and the base's " +
                            std::to_string(cfg.num_layers) + " layers)", st_path, tv.name);
  return ad;
}

}  // namespace nxft
