// export.cpp — HF checkpoint / PEFT adapter → GGUF (see export.h).
#include "gguf/export.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include "gguf/gguf_types_policy.h"
#include "gguf/quants.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/lora.h"
#include "model/quant4.h"
#include "model/weights.h"
#include "util/dtype.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"

namespace nxft {

static constexpr uint32_t kQuantVersion = 2;   // GGML_QNT_VERSION, written by the converter and llama-quantize

// ---------------------------------------------------------------------------------------------------------
// tokenizer metadata

TokenizerMeta TokenizerMeta::from_job(JobReader& r) {
  // Absent and null mean "not given" for every optional field; `opt` reads such a field (marking it used).
  auto opt = [&](const char* key) -> const Json* {
    if (!r.present(key)) return nullptr;
    const Json& v = r.any(key);
    return v.is_null() ? nullptr : &v;
  };
  TokenizerMeta t;
  t.model = r.choice("model", {"llama", "gpt2"});
  t.pre = r.str("pre", "");
  t.tokens = r.str_list("tokens");
  if (t.tokens.empty()) r.fail("tokens", "must not be empty");
  const int64_t n = int64_t(t.tokens.size());
  if (const Json* s = opt("scores")) {
    if (!s->is_array()) r.fail("scores", "expected an array of numbers");
    for (const Json& v : s->as_array()) {
      if (!v.is_number()) r.fail("scores", "expected an array of numbers, found " + v.dump());
      t.scores.push_back(float(v.as_number()));
    }
    if (int64_t(t.scores.size()) != n)
      r.fail("scores", "has " + std::to_string(t.scores.size()) + " entries but tokens has " + std::to_string(n));
  }
  if (const Json* s = opt("token_types")) {
    if (!s->is_array()) r.fail("token_types", "expected an array of integers");
    for (const Json& v : s->as_array()) {
      if (!v.is_number() || v.as_number() != std::floor(v.as_number()) || v.as_number() < 1 || v.as_number() > 6)
        r.fail("token_types", "values must be integers 1..6 (normal, unknown, control, user-defined, unused, byte), found " + v.dump());
      t.token_types.push_back(int32_t(v.as_number()));
    }
    if (int64_t(t.token_types.size()) != n)
      r.fail("token_types", "has " + std::to_string(t.token_types.size()) + " entries but tokens has " + std::to_string(n));
  }
  if (const Json* s = opt("merges")) {
    if (!s->is_array()) r.fail("merges", "expected an array of strings");
    for (const Json& v : s->as_array()) {
      if (!v.is_string()) r.fail("merges", "expected an array of strings, found " + v.dump());
      t.merges.push_back(v.as_string());
    }
  }
  if (t.model == "gpt2" && t.merges.empty()) r.fail("merges", "a gpt2 (byte-level BPE) tokenizer needs its merges");
  if (t.model == "gpt2" && t.pre.empty()) r.fail("pre", "a gpt2 tokenizer needs its pre-tokenizer name (e.g. llama-bpe, qwen2)");
  auto id = [&](const char* key) -> int64_t {
    const Json* v = opt(key);
    if (!v) return -1;
    if (!v->is_number() || v->as_number() != std::floor(v->as_number())) r.fail(key, "expected an integer token id, got " + v->dump());
    int64_t x = int64_t(v->as_number());
    if (x < 0 || x >= n) r.fail(key, "token id " + std::to_string(x) + " is outside the vocabulary (0.." + std::to_string(n - 1) + ")");
    return x;
  };
  t.bos_id = id("bos_id");
  t.eos_id = id("eos_id");
  t.eot_id = id("eot_id");
  t.unk_id = id("unk_id");
  t.pad_id = id("pad_id");
  auto flag = [&](const char* key) -> int {
    const Json* v = opt(key);
    if (!v) return -1;
    if (!v->is_bool()) r.fail(key, "expected true or false, got " + v->dump());
    return v->as_bool() ? 1 : 0;
  };
  t.add_bos = flag("add_bos");
  t.add_eos = flag("add_eos");
  t.add_space_prefix = flag("add_space_prefix");
  if (const Json* v = opt("chat_template")) {
    if (!v->is_string()) r.fail("chat_template", "expected a string");
    t.chat_template = v->as_string();
    t.has_chat_template = true;
  }
  r.finish();
  return t;
}

void TokenizerMeta::add_to(GgufWriter& w) const {
  w.add_string("tokenizer.ggml.model", model);
  if (!pre.empty()) w.add_string("tokenizer.ggml.pre", pre);
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  if (!scores.empty()) w.add_f32_array("tokenizer.ggml.scores", scores);
  if (!token_types.empty()) w.add_i32_array("tokenizer.ggml.token_type", token_types);
  if (!merges.empty()) w.add_string_array("tokenizer.ggml.merges", merges);
  if (bos_id >= 0) w.add_u32("tokenizer.ggml.bos_token_id", uint32_t(bos_id));
  if (eos_id >= 0) w.add_u32("tokenizer.ggml.eos_token_id", uint32_t(eos_id));
  if (eot_id >= 0) w.add_u32("tokenizer.ggml.eot_token_id", uint32_t(eot_id));
  if (unk_id >= 0) w.add_u32("tokenizer.ggml.unknown_token_id", uint32_t(unk_id));
  if (pad_id >= 0) w.add_u32("tokenizer.ggml.padding_token_id", uint32_t(pad_id));
  if (add_bos >= 0) w.add_bool("tokenizer.ggml.add_bos_token", add_bos == 1);
  if (add_eos >= 0) w.add_bool("tokenizer.ggml.add_eos_token", add_eos == 1);
  if (add_space_prefix >= 0) w.add_bool("tokenizer.ggml.add_space_prefix", add_space_prefix == 1);
  if (has_chat_template) w.add_string("tokenizer.chat_template", chat_template);
}

// ---------------------------------------------------------------------------------------------------------
// tensor sources

std::vector<int64_t> llama_qk_row_permutation(int64_t rows, int n_head) {
  // Per head of d rows, HF holds [x_0 … x_{d/2-1} | x_{d/2} … x_{d-1}] (rotate-half pairs (i, i+d/2));
  // llama.cpp's NORM rope rotates consecutive pairs, so new row h·d + 2i + j takes old row h·d + j·d/2 + i.
  const int64_t d = rows / n_head;
  std::vector<int64_t> map(static_cast<size_t>(rows));
  for (int64_t h = 0; h < n_head; h++)
    for (int64_t i = 0; i < d / 2; i++)
      for (int64_t j = 0; j < 2; j++) map[size_t(h * d + 2 * i + j)] = h * d + j * (d / 2) + i;
  return map;
}

// Rows of a safetensors tensor converted to fp32, optionally reordered (Q/K permutation) and shifted by
// `add` (Gemma's norm +1). A 1-D tensor is one row. Reads straight from the mmap, row by row.
struct SafetensorRows : RowSource {
  const TensorView* tv;
  int64_t row_len;
  std::vector<int64_t> row_map;   // empty = identity
  float add = 0.0f;
  std::shared_ptr<const Bnb4bitWeight> q4;   // set: tv is a bitsandbytes 4-bit weight, dequantized as bitsandbytes does
  SafetensorRows(const TensorView* t, int64_t len) : tv(t), row_len(len) {}
  void fill_rows(int64_t first, int64_t n, float* out) const override {
    const size_t es = dtype_size(tv->dtype);
    for (int64_t r = 0; r < n; r++) {
      int64_t src = row_map.empty() ? first + r : row_map[size_t(first + r)];
      float* o = out + r * row_len;
      if (q4) bnb_dequantize(*q4, src * row_len, row_len, o);
      else convert_to_f32(tv->data + size_t(src * row_len) * es, tv->dtype, o, size_t(row_len));
      if (add != 0.0f)
        for (int64_t i = 0; i < row_len; i++) o[i] += add;
    }
    // Rows read in order are not needed again: drop their pages so a multi-GB tensor never becomes resident.
    if (row_map.empty() && !q4) drop(tv->data + size_t(first * row_len) * es, size_t(n * row_len) * es);
  }
  void release() const override { drop(tv->data, tv->nbytes); }
  // Drops the whole pages inside [p, p+n) from our address space (they stay in the page cache; the mapping is
  // private and read-only, so a later access simply faults them in again).
  static void drop(const uint8_t* p, size_t n) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    uintptr_t a = (uintptr_t(p) + page - 1) / page * page, b = (uintptr_t(p) + n) / page * page;
    if (b > a) madvise(reinterpret_cast<void*>(a), b - a, MADV_DONTNEED);
  }
};

static std::vector<float> read_all_f32(const TensorView& tv) {
  std::vector<float> v(size_t(tv.numel()));
  convert_to_f32(tv.data, tv.dtype, v.data(), v.size());
  return v;
}

// Llama-3.1 rope scaling as llama.cpp wants it: per-frequency divisors (1 = unchanged, factor = fully
// scaled, smooth blend in between), computed like the converter's generate_extra_tensors.
static std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const int d = c.head_dim;
  const RopeScaling& rs = c.rope_scaling;
  const double old_ctx = rs.original_max_position_embeddings;
  const double low_wl = old_ctx / rs.low_freq_factor, high_wl = old_ctx / rs.high_freq_factor;
  std::vector<float> f;
  for (int i = 0; i < d; i += 2) {
    float freq = 1.0f / std::pow(float(c.rope_theta), float(i) / float(d));
    double wavelen = 2 * 3.14159265358979323846 / double(freq);
    if (wavelen < high_wl) f.push_back(1.0f);
    else if (wavelen > low_wl) f.push_back(float(rs.factor));
    else {
      double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      f.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return f;
}

static std::string arch_of(const ModelConfig& c, const std::string& source) {
  if (c.model_type == "llama" || c.model_type == "mistral") return "llama";
  if (c.model_type == "qwen2") return "qwen2";
  if (c.model_type == "gemma") return "gemma";
  throw EngineError(source + ": model_type \"" + c.model_type + "\" cannot be exported to GGUF (supported: llama, mistral, qwen2, gemma)",
                    source, "model_type");
}

// The hyperparameter keys convert_hf_to_gguf.py writes for each architecture (§2.2, §2.3).
static void add_hparams(GgufWriter& w, const std::string& arch, const ModelConfig& c) {
  const std::string a = arch + ".";
  const bool explicit_head_dim = c.raw.is_object() && c.raw.find("head_dim") && !c.raw.find("head_dim")->is_null();
  w.add_u32(a + "context_length", uint32_t(c.max_position_embeddings));
  w.add_u32(a + "embedding_length", uint32_t(c.hidden_size));
  w.add_u32(a + "block_count", uint32_t(c.num_layers));
  w.add_u32(a + "feed_forward_length", uint32_t(c.intermediate_size));
  w.add_u32(a + "attention.head_count", uint32_t(c.num_heads));
  w.add_u32(a + "attention.head_count_kv", uint32_t(c.num_kv_heads));
  w.add_f32(a + "attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  if (arch == "gemma") {
    w.add_u32(a + "attention.key_length", uint32_t(c.head_dim));
    w.add_u32(a + "attention.value_length", uint32_t(c.head_dim));
    if (c.rope_theta != 10000.0) w.add_f32(a + "rope.freq_base", float(c.rope_theta));
    return;
  }
  w.add_f32(a + "rope.freq_base", float(c.rope_theta));
  if (explicit_head_dim) {
    w.add_u32(a + "attention.key_length", uint32_t(c.head_dim));
    w.add_u32(a + "attention.value_length", uint32_t(c.head_dim));
  }
  if (c.rope_scaling.type == "linear") {
    w.add_string(a + "rope.scaling.type", "linear");
    w.add_f32(a + "rope.scaling.factor", float(c.rope_scaling.factor));
  }
  if (arch == "llama") {
    w.add_u32(a + "vocab_size", uint32_t(c.vocab_size));
    w.add_u32(a + "rope.dimension_count", uint32_t(c.head_dim));
  }
}

// One planned tensor: HF source → GGUF name, ggml shape and transform.
struct PlannedTensor {
  std::string gguf_name;
  std::vector<int64_t> ne;
  int layer = -1;
  std::shared_ptr<const RowSource> src;
};

static void check_float_dtype(const TensorView& tv, const std::string& dir) {
  if (tv.dtype != DType::F32 && tv.dtype != DType::F16 && tv.dtype != DType::BF16 && tv.dtype != DType::F64)
    throw EngineError(dir + ": tensor " + tv.name + " has dtype " + dtype_name(tv.dtype) + " (expected F32, F16 or BF16)", dir);
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

ExportSummary export_model_gguf(const std::string& model_dir, const std::string& out, const std::string& type,
                                const TokenizerMeta& tok, const std::string& name, int threads) {
  const GgufPreset preset = gguf_preset(type);
  const std::string config_path = path_join(model_dir, "config.json");
  ModelConfig c = ModelConfig::load(config_path);
  const std::string arch = arch_of(c, config_path);
  auto st = SafetensorsModel::open_dir(model_dir);

  const bool gemma = arch == "gemma", llama = arch == "llama";
  const int64_t C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, HD = c.head_dim;
  const int64_t QD = int64_t(c.num_heads) * HD, KD = int64_t(c.num_kv_heads) * HD;
  std::set<std::string> used;
  // A pre-quantized bitsandbytes checkpoint (model/quant4.h): its 4-bit weights by name, dequantized on the fly.
  std::map<std::string, std::shared_ptr<const Bnb4bitWeight>> q4_of;

  // Fetch a tensor, check dtype and shape (PyTorch order), mark it used.
  auto get = [&](const std::string& hf, const std::vector<int64_t>& shape) -> const TensorView* {
    if (std::optional<Bnb4bitWeight> q = bnb_4bit_weight(*st, hf)) {
      if (q->shape != shape)
        throw EngineError(q->file + ": tensor " + hf + " has shape " + shape_str(q->shape) + " (quant_state) but config.json implies " +
                              shape_str(shape), q->file, hf);
      used.insert(hf);
      q4_of[hf] = std::make_shared<const Bnb4bitWeight>(std::move(*q));
      return st->find(hf);
    }
    const TensorView* tv = st->find(hf);
    if (!tv) throw EngineError(model_dir + ": missing tensor " + hf + " (needed for " + c.model_type + ")", model_dir);
    check_float_dtype(*tv, model_dir);
    if (tv->shape != shape)
      throw EngineError(model_dir + ": tensor " + hf + " has shape " + shape_str(tv->shape) + " but config.json implies " +
                            shape_str(shape), model_dir);
    used.insert(hf);
    return tv;
  };
  std::vector<PlannedTensor> plan;
  // 2-D weight [out, in] → ne {in, out}; optional row permutation.
  auto add_matrix = [&](const std::string& hf, const std::string& gg, int64_t rows, int64_t cols, int layer,
                        int permute_heads) {
    const TensorView* tv = get(hf, {rows, cols});
    auto src = std::make_shared<SafetensorRows>(tv, cols);
    if (q4_of.count(hf)) src->q4 = q4_of[hf];
    if (permute_heads > 0) src->row_map = llama_qk_row_permutation(rows, permute_heads);
    plan.push_back({gg, {cols, rows}, layer, src});
  };
  // 1-D vector; optional element permutation (llama q/k biases) or +1 (gemma norms).
  auto add_vector = [&](const std::string& hf, const std::string& gg, int64_t n, int layer, int permute_heads,
                        float add) {
    const TensorView* tv = get(hf, {n});
    if (permute_heads > 0) {
      std::vector<float> v = read_all_f32(*tv), p(v.size());
      std::vector<int64_t> map = llama_qk_row_permutation(n, permute_heads);
      for (int64_t i = 0; i < n; i++) p[size_t(i)] = v[size_t(map[size_t(i)])];
      plan.push_back({gg, {n}, layer, std::make_shared<VectorRowSource>(std::move(p), n)});
      return;
    }
    auto src = std::make_shared<SafetensorRows>(tv, n);
    src->add = add;
    plan.push_back({gg, {n}, layer, src});
  };

  const float norm_add = gemma ? 1.0f : 0.0f;
  if (llama && c.rope_scaling.type == "llama3") {
    std::vector<float> f = llama3_rope_factors(c);
    int64_t n = int64_t(f.size());
    plan.push_back({"rope_freqs.weight", {n}, -1, std::make_shared<VectorRowSource>(std::move(f), n)});
  }
  add_matrix("model.embed_tokens.weight", "token_embd.weight", V, C, -1, 0);
  for (int l = 0; l < c.num_layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string b = "blk." + std::to_string(l) + ".";
    add_vector(p + "input_layernorm.weight", b + "attn_norm.weight", C, l, 0, norm_add);
    add_matrix(p + "self_attn.q_proj.weight", b + "attn_q.weight", QD, C, l, llama ? c.num_heads : 0);
    add_matrix(p + "self_attn.k_proj.weight", b + "attn_k.weight", KD, C, l, llama ? c.num_kv_heads : 0);
    add_matrix(p + "self_attn.v_proj.weight", b + "attn_v.weight", KD, C, l, 0);
    add_matrix(p + "self_attn.o_proj.weight", b + "attn_output.weight", C, QD, l, 0);
    if (c.attention_bias) {
      add_vector(p + "self_attn.q_proj.bias", b + "attn_q.bias", QD, l, llama ? c.num_heads : 0, 0.0f);
      add_vector(p + "self_attn.k_proj.bias", b + "attn_k.bias", KD, l, llama ? c.num_kv_heads : 0, 0.0f);
      add_vector(p + "self_attn.v_proj.bias", b + "attn_v.bias", KD, l, 0, 0.0f);
    }
    add_vector(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", C, l, 0, norm_add);
    add_matrix(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", F, C, l, 0);
    add_matrix(p + "mlp.up_proj.weight", b + "ffn_up.weight", F, C, l, 0);
    add_matrix(p + "mlp.down_proj.weight", b + "ffn_down.weight", C, F, l, 0);
  }
  add_vector("model.norm.weight", "output_norm.weight", C, -1, 0, norm_add);
  bool tied = true;
  if (st->find("lm_head.weight")) {
    if (gemma || c.tie_word_embeddings) {
      used.insert("lm_head.weight");   // tied: llama.cpp reuses token_embd as the output
    } else {
      add_matrix("lm_head.weight", "output.weight", V, C, -1, 0);
      tied = false;
    }
  } else if (!gemma && !c.tie_word_embeddings) {
    throw EngineError(model_dir + ": missing tensor lm_head.weight (config.json has tie_word_embeddings false)", model_dir);
  }
  for (const std::string& n : st->names()) {
    if (used.count(n)) continue;
    if (n.find("rotary_emb.inv_freq") != std::string::npos) continue;   // a buffer, recomputed by llama.cpp
    if (is_bnb_aux_tensor(n) && bnb_4bit_config(c.raw, config_path)) continue;   // part of a 4-bit weight
    throw EngineError(model_dir + ": tensor " + n + " has no GGUF mapping for " + c.model_type +
                          " (unsupported layer or architecture variant)", model_dir);
  }
  if (int64_t(tok.tokens.size()) != V)
    throw EngineError("tokenizer.tokens has " + std::to_string(tok.tokens.size()) +
                          " entries but the model's embedding has " + std::to_string(V) +
                          " rows (config.json vocab_size); pad the vocabulary to vocab_size", "", "tokenizer.tokens");

  // Metadata, in the order the converter writes it.
  GgufWriter w;
  ExportSummary sum;
  w.add_string("general.architecture", arch);
  w.add_string("general.type", "model");
  w.add_string("general.name", name.empty() ? basename_of(model_dir) : name);
  add_hparams(w, arch, c);
  w.add_u32("general.file_type", preset.file_type);
  tok.add_to(w);
  w.add_u32("general.quantization_version", kQuantVersion);

  for (const PlannedTensor& t : plan) {
    TensorTypeChoice ch = choose_tensor_type(preset, t.gguf_name, t.ne, t.layer, c.num_layers, tied);
    if (!ch.fallback_note.empty()) sum.warnings.push_back(ch.fallback_note);
    w.add_tensor(t.gguf_name, t.ne, ch.type, t.src);
    sum.tensor_types[ggml_type_name(ch.type)]++;
  }
  // Everything validated: only now does a file appear.
  for (const std::string& m : sum.warnings) emit_warning(m);
  sum.out = out;
  sum.tensors = w.tensor_count();
  sum.bytes = w.write(out, threads, [&](size_t i, size_t n, const std::string& tn, GgmlType tt) {
    emit_progress("quantize", double(i), double(n), "tensors", tn + " " + ggml_type_name(tt));
  });
  return sum;
}

// ---------------------------------------------------------------------------------------------------------
// LoRA adapter

ExportSummary export_adapter_gguf(const std::string& adapter_dir, const std::string& base_config,
                                  const std::string& out, const std::string& type, const std::string& name,
                                  int threads) {
  GgmlType gt;
  if (type == "f32") gt = GgmlType::F32;
  else if (type == "f16") gt = GgmlType::F16;
  else if (type == "bf16") gt = GgmlType::BF16;
  else if (type == "q8_0") gt = GgmlType::Q8_0;
  else throw EngineError("adapter GGUF type \"" + type + "\" is not supported (expected f32, f16, bf16 or q8_0)", "", "type");
  ModelConfig c = ModelConfig::load(base_config);
  const std::string arch = arch_of(c, base_config);
  LoraAdapter ad = LoraAdapter::load_peft(adapter_dir, c);
  if (ad.pairs.empty()) throw EngineError(adapter_dir + ": the adapter has no LoRA weights", adapter_dir);
  // llama.cpp's LoRA GGUF holds low-rank pairs only; the vocabulary of a base is fixed in its own GGUF.
  if (!ad.spec.token_indices.empty())
    throw EngineError(adapter_dir + ": the adapter trains token rows (trainable_token_indices) that a GGUF LoRA adapter cannot carry; "
                      "export the merged model instead", path_join(adapter_dir, "adapter_config.json"), "trainable_token_indices");

  static const std::map<std::string, std::string> gguf_of = {
      {"q_proj", "attn_q"},      {"k_proj", "attn_k"},   {"v_proj", "attn_v"},    {"o_proj", "attn_output"},
      {"gate_proj", "ffn_gate"}, {"up_proj", "ffn_up"}, {"down_proj", "ffn_down"}};
  GgufWriter w;
  ExportSummary sum;
  w.add_string("general.architecture", arch);
  w.add_string("general.type", "adapter");
  w.add_string("general.name", name.empty() ? basename_of(adapter_dir) : name);
  w.add_string("adapter.type", "lora");
  // llama.cpp scales by alpha/r; rsLoRA's alpha/√r is carried as alpha' = alpha·√r (§2.9).
  const double r = ad.spec.r;
  const double alpha = ad.spec.rslora ? ad.spec.alpha * std::sqrt(r) : ad.spec.alpha;
  w.add_f32("adapter.lora.alpha", float(alpha));
  w.add_u32("general.quantization_version", kQuantVersion);
  const bool llama = arch == "llama";
  for (const LoraPair& p : ad.pairs) {
    auto it = gguf_of.find(p.target);
    if (it == gguf_of.end()) throw EngineError(adapter_dir + ": LoRA target " + p.target + " has no GGUF mapping", adapter_dir);
    const std::string base = "blk." + std::to_string(p.layer) + "." + it->second + ".weight";
    const int64_t R = ad.spec.r;
    // lora_a: PEFT A (r, in) → ne {in, r}; lora_b: PEFT B (out, r) → ne {r, out}, rows permuted like the
    // base weight's for llama q/k (A's rows are rank rows, untouched).
    std::vector<float> B = p.B;
    int heads = !llama ? 0 : p.target == "q_proj" ? c.num_heads : p.target == "k_proj" ? c.num_kv_heads : 0;
    if (heads > 0) {
      std::vector<int64_t> map = llama_qk_row_permutation(p.out, heads);
      std::vector<float> Bp(B.size());
      for (int64_t o = 0; o < p.out; o++)
        for (int64_t k = 0; k < R; k++) Bp[size_t(o * R + k)] = B[size_t(map[size_t(o)] * R + k)];
      B.swap(Bp);
    }
    auto type_for = [&](int64_t row_len, const std::string& tn) {
      if (row_len % ggml_block_elems(gt) == 0) return gt;
      sum.warnings.push_back(tn + ": row length " + std::to_string(row_len) + " is not a multiple of 32, using F16");
      return GgmlType::F16;
    };
    GgmlType ta = type_for(p.in, base + ".lora_a"), tb = type_for(R, base + ".lora_b");
    w.add_tensor(base + ".lora_a", {p.in, R}, ta, std::make_shared<VectorRowSource>(p.A, p.in));
    w.add_tensor(base + ".lora_b", {R, p.out}, tb, std::make_shared<VectorRowSource>(std::move(B), R));
    sum.tensor_types[ggml_type_name(ta)]++;
    sum.tensor_types[ggml_type_name(tb)]++;
  }
  for (const std::string& m : sum.warnings) emit_warning(m);
  sum.out = out;
  sum.tensors = w.tensor_count();
  sum.bytes = w.write(out, threads);
  return sum;
}

}  // namespace nxft
