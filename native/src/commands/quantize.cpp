// quantize.cpp — `finetune-engine quantize`: a 16/32-bit HF base → a pre-quantized bitsandbytes 4-bit checkpoint,
// the format transformers + bitsandbytes save ("-bnb-4bit" bases, model/quant4.h), so a base is quantized once and
// every later QLoRA run loads 4-bit weights instead of quantizing them.
//   { "command": "quantize", "base": dir, "out": dir, "quant_type": "nf4", "double_quant": true, "threads": 0 }
// The seven projections of every layer become NF4 (bitsandbytes' quantize_4bit, blocksize 64, absmax double-quantized
// when double_quant); embeddings, norms, biases and lm_head are copied unchanged, as transformers does. Streaming:
// one tensor at a time in host fp32 (never the whole model), its pages dropped once done; each tensor is quantized
// over all threads. Events: start, progress per tensor, done {summary: {files, seconds, quantize_seconds, …}}.
#include <sys/resource.h>
#include <algorithm>
#include <chrono>
#include <cstring>

#include "commands/command.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/quant4.h"
#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"
#include "util/parallel.h"

namespace nxft {

static bool is_projection(const std::string& name) {
  for (const char* t : kLoraTargets)
    if (name.size() > std::strlen(t) + 7 && name.compare(name.size() - std::strlen(t) - 7, std::string::npos, std::string(t) + ".weight") == 0)
      return true;
  return false;
}

static int cmd_quantize(const Json& job, const std::string& job_path) {
  const auto t0 = std::chrono::steady_clock::now();
  JobReader r(job, job_path);
  const std::string base = r.path("base");
  const std::string out = r.path("out");
  r.choice("quant_type", {"nf4"}, "nf4");
  const bool double_quant = r.boolean("double_quant", true);
  const int threads = resolve_threads(int(r.integer_in("threads", 0, 4096, 0)));
  r.finish();
  if (out == base) r.fail("out", "must differ from base");

  const std::string config_path = path_join(base, "config.json");
  ModelConfig cfg = ModelConfig::load(config_path);
  if (bnb_4bit_config(cfg.raw, config_path)) r.fail("base", base + " is already quantized (config.json has quantization_config)");
  auto st = SafetensorsModel::open_dir(base);
  const std::vector<HfTensorSpec> specs = hf_tensor_specs(cfg);

  // Declare every output tensor up front (the safetensors header needs all sizes), checking the base as we go.
  std::vector<TensorDecl> decls;
  DType model_dtype = DType::F32;
  for (const HfTensorSpec& s : specs) {
    const TensorView* tv = st->find(s.name);
    if (!tv) throw EngineError(base + ": missing tensor " + s.name, base, s.name);
    if (tv->shape != s.shape)
      throw EngineError(path_join(base, st->shard_of(s.name)) + ": tensor " + s.name + " does not have the shape config.json implies",
                        path_join(base, st->shard_of(s.name)), s.name);
    if (tv->dtype != DType::F32 && tv->dtype != DType::F16 && tv->dtype != DType::BF16) throw EngineError(base + ": tensor " + s.name + " is not a float tensor", base, s.name);
    if (!is_projection(s.name)) {
      decls.push_back({s.name, tv->dtype, tv->shape});
      continue;
    }
    model_dtype = tv->dtype;
    const int64_t n = s.numel(), blocks = (n + 63) / 64;
    decls.push_back({s.name, DType::U8, {(n + 1) / 2, 1}});
    decls.push_back({s.name + ".absmax", double_quant ? DType::U8 : DType::F32, {blocks}});
    if (double_quant) {
      decls.push_back({s.name + ".nested_absmax", DType::F32, {(blocks + 255) / 256}});
      decls.push_back({s.name + ".nested_quant_map", DType::F32, {256}});
    }
    decls.push_back({s.name + ".quant_map", DType::F32, {16}});
    decls.push_back({s.name + ".quant_state.bitsandbytes__nf4", DType::U8, {0}});   // size set below
  }
  // The quant_state JSON (QuantState.as_dict(packed=True)): its length depends on the nested offset's digits, known
  // only after quantizing, but the header needs it now; so it is padded with spaces (still valid JSON) to a fixed size.
  const size_t kStateBytes = 256;
  for (TensorDecl& d : decls)
    if (d.name.find(".quant_state.") != std::string::npos) d.shape = {int64_t(kStateBytes)};

  emit_event("start", Json::object()
                          .set("command", Json::string("quantize"))
                          .set("backend", Json::string("cpu"))
                          .set("threads", Json::number(threads))
                          .set("device", Json::string("cpu"))
                          .set("quant_type", Json::string("nf4"))
                          .set("double_quant", Json::boolean(double_quant))
                          .set("tensors", Json::number(double(specs.size()))));
  make_dirs(out);
  const std::string st_path = path_join(out, "model.safetensors");
  SafetensorsWriter writer(st_path, decls, {{"format", "pt"}});
  std::vector<float> w;
  std::vector<uint8_t> packed;
  std::vector<float> absmax;
  double quantize_s = 0;
  int64_t quantized_params = 0;
  for (size_t i = 0; i < specs.size(); i++) {
    const HfTensorSpec& s = specs[i];
    const TensorView* tv = st->find(s.name);
    if (!is_projection(s.name)) {
      writer.write(tv->data, tv->nbytes);
    } else {
      const size_t n = size_t(s.numel()), es = dtype_size(tv->dtype);
      const auto tq = std::chrono::steady_clock::now();
      w.resize(n);
      parallel_ranges(n, 1 << 16, [&](size_t a, size_t b) { convert_to_f32(tv->data + a * es, tv->dtype, w.data() + a, b - a); }, threads);
      packed.assign((n + 1) / 2, 0);
      absmax.assign((n + 63) / 64, 0.0f);
      quantize_nf4(w.data(), n, packed.data(), absmax.data(), threads);
      NestedAbsmax nested;
      if (double_quant) nested = double_quantize(absmax.data(), absmax.size(), threads);
      quantize_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - tq).count();
      quantized_params += int64_t(n);
      // In the declared order: weight, absmax, [nested_absmax, nested_quant_map], quant_map, quant_state.
      writer.write(packed.data(), packed.size());
      if (double_quant) {
        writer.write(nested.q.data(), nested.q.size());
        writer.write(nested.absmax2.data(), nested.absmax2.size() * 4);
        writer.write(dynamic_map_signed().data(), 256 * 4);
      } else {
        writer.write(absmax.data(), absmax.size() * 4);
      }
      writer.write(kNF4Code, 16 * 4);
      Json qs = Json::object();
      qs.set("quant_type", Json::string("nf4")).set("blocksize", Json::number(64)).set("dtype", Json::string(torch_dtype_name(tv->dtype)));
      Json shape = Json::array();
      for (int64_t d : s.shape) shape.push(Json::number(double(d)));
      qs.set("shape", shape);
      if (double_quant)
        qs.set("nested_blocksize", Json::number(256)).set("nested_dtype", Json::string("float32")).set("nested_offset", Json::number(nested.offset));
      std::string text = qs.dump();
      if (text.size() > kStateBytes) throw EngineError("internal: quant_state JSON longer than " + std::to_string(kStateBytes) + " bytes");
      text.resize(kStateBytes, ' ');
      writer.write(text.data(), text.size());
    }
    st->release(s.name);
    emit_progress("quantize", double(i + 1), double(specs.size()), "tensors");
  }
  writer.commit();

  Json files = Json::array();
  files.push(Json::string(st_path));
  for (const auto& f : hf_companion_files(base)) {
    copy_file_atomic(path_join(base, f), path_join(out, f));
    files.push(Json::string(path_join(out, f)));
  }
  // quantization_config as transformers' BitsAndBytesConfig.to_dict() writes it (8-bit-only keys at their defaults).
  Json qc = Json::object();
  qc.set("_load_in_4bit", Json::boolean(true)).set("_load_in_8bit", Json::boolean(false))
      .set("bnb_4bit_compute_dtype", Json::string(torch_dtype_name(model_dtype)))
      .set("bnb_4bit_quant_storage", Json::string("uint8")).set("bnb_4bit_quant_type", Json::string("nf4"))
      .set("bnb_4bit_use_double_quant", Json::boolean(double_quant))
      .set("llm_int8_enable_fp32_cpu_offload", Json::boolean(false)).set("llm_int8_has_fp16_weight", Json::boolean(false))
      .set("llm_int8_skip_modules", Json())   // llm_int8_threshold left to its default: transformers wants "6.0", Json writes 6
      .set("load_in_4bit", Json::boolean(true)).set("load_in_8bit", Json::boolean(false))
      .set("quant_method", Json::string("bitsandbytes"));
  Json config = cfg.raw;
  config.set("quantization_config", qc);
  write_file_atomic(path_join(out, "config.json"), config.dump(2) + "\n");
  files.push(Json::string(path_join(out, "config.json")));

  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double peak_rss = double(ru.ru_maxrss) * 1024.0;   // streaming: far below the model size
  emit_event("done", Json::object().set("summary", Json::object()
                                                       .set("files", files)
                                                       .set("quantized_params", Json::number(double(quantized_params)))
                                                       .set("quantize_seconds", Json::number(quantize_s))
                                                       .set("wall_s", Json::number(wall))
                                                       .set("peak_memory_bytes", Json::number(peak_rss))
                                                       .set("threads", Json::number(threads))));
  return 0;
}

static RegisterCommand reg_quantize("quantize", &cmd_quantize);

}  // namespace nxft
