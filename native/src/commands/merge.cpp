// merge.cpp — `finetune-engine merge`: fold a LoRA adapter into its base model.
//   { "command": "merge", "base": "/abs/hf-dir", "adapter": "/abs/adapter-dir", "dtype": "bf16",
//     "out": "/abs/merged-dir", "threads": 0 }
// W' = W + scale·(B·A), computed in fp32 like PEFT's merge_and_unload (B·A first, then × scale, then added),
// stored as dtype (f32 | f16 | bf16, round-to-nearest-even). Every other tensor is converted to dtype (copied
// byte for byte when it already is). The output is sharded exactly like the base: same shard file names,
// same tensor → file mapping and order, and an index json when the base had one.
//
// Streaming: the base is mmap'd and processed one tensor at a time; only the tensor being merged exists in fp32,
// and a writer thread writes tensor i while tensor i+1 is computed (at most two finished tensors wait in the
// queue), so an 8B model never sits in memory twice. Converted tensors are processed in chunks of whole rows
// (kChunkElems values), so even the embedding never exists in fp32 or in the output dtype all at once.
// A pre-quantized bitsandbytes base (config.json quantization_config, model/quant4.h): its 4-bit weights are
// dequantized exactly as bitsandbytes does, then merged like any other; the quant-state tensors are not written and
// config.json loses quantization_config, so the output is an ordinary 16-bit (or f32) HF model.
// Compute (dequantise, B·A, convert) is spread over all cores. Every file is written atomically; config.json is written last, so a folder with a config.json that
// matches this run is complete.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <dirent.h>
#include <sys/stat.h>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unistd.h>

#include "commands/command.h"
#include "io/safetensors.h"
#include "model/quant4.h"
#include "model/lora.h"
#include "model/validate.h"
#include "model/weights.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"
#include "util/parallel.h"

namespace nxft {

namespace {

// A bounded queue in front of one SafetensorsWriter, drained by its own thread.
class WriteQueue {
 public:
  struct Item {
    const uint8_t* ptr = nullptr;   // bytes to write: ptr (borrowed, e.g. from the base's mmap) …
    size_t n = 0;
    std::vector<uint8_t> owned;     // … or owned bytes
    std::function<void()> after;    // run on the writer thread once written (e.g. drop the mmap'd pages)
  };
  explicit WriteQueue(SafetensorsWriter* w) : w_(w), th_([this] { run(); }) {}
  ~WriteQueue() {
    if (th_.joinable()) {
      { std::lock_guard<std::mutex> lk(mu_); closed_ = true; }
      cv_.notify_all();
      th_.join();
    }
  }
  void push(Item&& item) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return q_.size() < kMaxPending || err_; });
    if (err_) std::rethrow_exception(err_);
    q_.push_back(std::move(item));
    cv_.notify_all();
  }
  void finish() {  // waits for every queued item to be written; rethrows a write error
    { std::lock_guard<std::mutex> lk(mu_); closed_ = true; }
    cv_.notify_all();
    th_.join();
    if (err_) std::rethrow_exception(err_);
  }

 private:
  static constexpr size_t kMaxPending = 2;
  SafetensorsWriter* w_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> q_;
  bool closed_ = false;
  std::exception_ptr err_;
  std::thread th_;
  void run() {
    while (true) {
      Item it;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return;
        it = std::move(q_.front());
        q_.pop_front();
      }
      cv_.notify_all();
      try {
        if (!it.owned.empty()) w_->write(it.owned.data(), it.owned.size());
        else if (it.n) w_->write(it.ptr, it.n);
        if (it.after) it.after();
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        err_ = std::current_exception();
        q_.clear();
        cv_.notify_all();
        return;
      }
    }
  }
};

constexpr size_t kChunkElems = size_t(1) << 23;  // 8M values per chunk: 32 MB fp32, 16 MB bf16

// Chunk size; tests shrink it with NXFT_MERGE_CHUNK_ELEMS to exercise multi-chunk tensors on tiny models.
size_t chunk_elems() {
  const char* e = std::getenv("NXFT_MERGE_CHUNK_ELEMS");
  long long v = e ? std::atoll(e) : 0;
  return v > 0 ? size_t(v) : kChunkElems;
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64; }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); i++) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

// W (out, in) += scale · B (out, r) · A (r, in), rows spread over threads, in the same steps and roundings as
// PEFT's merge on the CPU: delta = B @ A in fp32, then delta * scaling (fp32), then W + delta (fp32).
// PyTorch's CPU fp32 GEMM for these shapes accumulates each output in k order with fused multiply-adds
// (checked bit for bit against torch 2.15 on 48x8x48 … 2048x16x2048), so we do the same: acc = fma(b, a, acc).
// The fma is formed as float(double(acc) + double(b)·double(a)): the product of two floats is exact in double,
// so only the sum is rounded twice (to double, then float), which differs from a true fma only when the double
// sum lands exactly on a float rounding midpoint — and this form vectorises without FMA hardware.
// W holds rows [row0, row1) of the weight.
void add_lora_delta(float* W, const LoraPair& p, size_t row0, size_t row1, int r, float scale, int threads) {
  const size_t in = size_t(p.in);
  parallel_ranges(row1 - row0, 8, [&](size_t c0, size_t c1) {
    std::vector<float> acc(in);
    for (size_t i = row0 + c0; i < row0 + c1; i++) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int k = 0; k < r; k++) {
        const double b = p.B[i * size_t(r) + size_t(k)];
        const float* a = p.A.data() + size_t(k) * in;
        for (size_t j = 0; j < in; j++) acc[j] = float(double(acc[j]) + b * double(a[j]));
      }
      float* w = W + (i - row0) * in;
      for (size_t j = 0; j < in; j++) w[j] += acc[j] * scale;
    }
  }, threads);
}


}  // namespace

static int cmd_merge(const Json& job, const std::string& job_path) {
  auto t0 = std::chrono::steady_clock::now();
  JobReader r(job, job_path);
  const std::string base = r.path("base");
  const std::string adapter = r.path("adapter");
  const std::string dtype_s = r.choice("dtype", {"f32", "f16", "bf16"});
  const std::string out = r.path("out");
  const int threads = resolve_threads(int(r.integer_in("threads", 0, 4096, 0)));
  r.finish();
  auto same_dir = [](std::string a, std::string b) {
    while (a.size() > 1 && a.back() == '/') a.pop_back();
    while (b.size() > 1 && b.back() == '/') b.pop_back();
    return a == b;
  };
  if (same_dir(out, base)) r.fail("out", "must differ from base (the base is read while the output is written)");
  if (same_dir(out, adapter)) r.fail("out", "must differ from adapter");
  const DType D = float_dtype_from_string(dtype_s);

  ModelConfig cfg = ModelConfig::load(path_join(base, "config.json"));
  auto st = SafetensorsModel::open_dir(base);
  validate_checkpoint(cfg, *st, base);
  LoraAdapter ad = LoraAdapter::load_peft(adapter, cfg);
  const float scale = float(ad.spec.scale());  // PEFT multiplies an fp32 tensor by the Python float: fp32 scale
  // Trainable tokens (model/lora.h): embed_tokens (and lm_head) get the vocabulary the adapter needs, new rows
  // the mean of the base's, then the adapter's rows written over theirs (PEFT's TrainableTokensLayer.merge).
  const int merged_vocab = ad.spec.vocab_size(cfg);
  std::map<std::string, const std::vector<float>*> token_rows_of;
  if (!ad.spec.token_indices.empty()) {
    token_rows_of["model.embed_tokens.weight"] = &ad.embed_rows;
    token_rows_of["lm_head.weight"] = ad.head_rows.empty() ? &ad.embed_rows : &ad.head_rows;   // a tied head: the same rows
  }

  // Validate the whole base against its config before writing anything.
  const bool prequantized = bnb_4bit_config(cfg.raw, path_join(base, "config.json"));
  std::map<std::string, Bnb4bitWeight> quantized;   // by weight name
  for (const auto& name : st->names())
    if (std::optional<Bnb4bitWeight> q = bnb_4bit_weight(*st, name)) quantized.emplace(name, std::move(*q));
  if (!quantized.empty() && !prequantized)
    throw EngineError(path_join(base, "config.json") + ": the checkpoint holds bitsandbytes 4-bit weights (e.g. " +
                          quantized.begin()->first + ") but config.json has no quantization_config", path_join(base, "config.json"),
                      "quantization_config");
  std::map<std::string, const LoraPair*> lora_of;
  for (const auto& spec : hf_tensor_specs(cfg)) {
    auto qit = quantized.find(spec.name);
    if (qit != quantized.end()) {
      if (qit->second.shape != spec.shape)
        throw EngineError(qit->second.file + ": tensor " + spec.name + " has shape " + shape_str(qit->second.shape) +
                              " (quant_state) but config.json implies " + shape_str(spec.shape), qit->second.file, spec.name);
      continue;
    }
    const TensorView* tv = st->find(spec.name);
    if (!tv) throw EngineError(base + ": missing tensor " + spec.name, base, spec.name);
    if (tv->shape != spec.shape) {
      std::string f = path_join(base, st->shard_of(spec.name));
      throw EngineError(f + ": tensor " + spec.name + " has shape " + shape_str(tv->shape) + " but config.json implies " +
                            shape_str(spec.shape), f, spec.name);
    }
    if (!is_float(tv->dtype)) {
      std::string f = path_join(base, st->shard_of(spec.name));
      throw EngineError(f + ": tensor " + spec.name + " has dtype " + dtype_name(tv->dtype) + " (expected a float type)", f, spec.name);
    }
  }
  for (const auto& p : ad.pairs) {
    std::string name = "model.layers." + std::to_string(p.layer) +
                       (p.target == "q_proj" || p.target == "k_proj" || p.target == "v_proj" || p.target == "o_proj" ? ".self_attn." : ".mlp.") +
                       p.target + ".weight";
    lora_of[name] = &p;
  }

  // Output plan: per base shard, its tensors in file order (= data order).
  struct Plan { std::string file; std::vector<const TensorView*> tensors; };
  std::vector<Plan> plans;
  std::map<std::string, size_t> plan_of;
  for (const auto& f : st->shard_files()) { plan_of[f] = plans.size(); plans.push_back({f, {}}); }
  for (const auto& name : st->names())
    if (!(prequantized && is_bnb_aux_tensor(name))) plans[plan_of[st->shard_of(name)]].tensors.push_back(st->find(name));
  // A 4-bit weight is written in D with its unquantized shape.
  auto quant_of = [&](const TensorView* tv) -> const Bnb4bitWeight* {
    auto it = quantized.find(tv->name);
    return it == quantized.end() ? nullptr : &it->second;
  };
  auto out_dtype = [&](const TensorView* tv) { return quant_of(tv) || is_float(tv->dtype) ? D : tv->dtype; };
  auto out_shape = [&](const TensorView* tv) {
    if (token_rows_of.count(tv->name)) return std::vector<int64_t>{merged_vocab, tv->shape[1]};
    return quant_of(tv) ? quant_of(tv)->shape : tv->shape;
  };
  auto out_numel = [&](const TensorView* tv) {
    if (token_rows_of.count(tv->name)) return int64_t(merged_vocab) * tv->shape[1];
    return quant_of(tv) ? quant_of(tv)->numel : tv->numel();
  };
  size_t total_tensors = 0;
  uint64_t total_bytes = 0;
  for (auto& pl : plans) {
    std::sort(pl.tensors.begin(), pl.tensors.end(), [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
    total_tensors += pl.tensors.size();
    for (const TensorView* tv : pl.tensors) total_bytes += uint64_t(out_numel(tv)) * dtype_size(out_dtype(tv));
  }

  emit_event("start", Json::object()
                          .set("command", Json::string("merge"))
                          .set("backend", Json::string("cpu"))
                          .set("threads", Json::number(threads))
                          .set("device", Json::string("cpu"))
                          .set("tensors", Json::number(double(total_tensors)))
                          .set("merged_tensors", Json::number(double(lora_of.size())))
                          .set("bytes", Json::number(double(total_bytes)))
                          .set("scale", Json::number(ad.spec.scale()))
                          .set("dtype", Json::string(dtype_s)));
  make_dirs(out);

  Json files = Json::array();
  Json weight_map = Json::object();
  size_t done = 0;
  auto last_emit = std::chrono::steady_clock::now();
  auto progress = [&](bool force) {
    auto now = std::chrono::steady_clock::now();
    if (!force && std::chrono::duration<double>(now - last_emit).count() < 0.25) return;
    last_emit = now;
    emit_progress("merge", double(done), double(total_tensors), "tensors");
  };
  std::vector<float> f32;  // the tensor being merged, fp32
  for (const Plan& pl : plans) {
    std::vector<TensorDecl> decls;
    for (const TensorView* tv : pl.tensors) decls.push_back({tv->name, out_dtype(tv), out_shape(tv)});
    const std::string path = path_join(out, pl.file);
    SafetensorsWriter writer(path, decls, {{"format", "pt"}});
    {
      WriteQueue q(&writer);
      for (const TensorView* tv : pl.tensors) {
        const Bnb4bitWeight* q4 = quant_of(tv);
        const size_t n = size_t(out_numel(tv));
        auto it = lora_of.find(tv->name);
        auto tok = token_rows_of.find(tv->name);
        if (tok != token_rows_of.end()) {
          // The whole (grown) matrix in fp32 once: the mean needs every base row first.
          const size_t C = size_t(tv->shape[1]), base_rows = size_t(tv->shape[0]);
          f32.assign(n, 0.0f);
          convert_to_f32(tv->data, tv->dtype, f32.data(), base_rows * C);
          std::vector<double> mean(C, 0.0);
          for (size_t r = 0; r < base_rows; r++)
            for (size_t c = 0; c < C; c++) mean[c] += f32[r * C + c];
          for (size_t r = base_rows; r < size_t(merged_vocab); r++)
            for (size_t c = 0; c < C; c++) f32[r * C + c] = float(mean[c] / double(base_rows));
          for (size_t k = 0; k < ad.spec.token_indices.size(); k++)
            std::memcpy(f32.data() + size_t(ad.spec.token_indices[k]) * C, tok->second->data() + k * C, C * sizeof(float));
          WriteQueue::Item item;
          item.owned.resize(n * dtype_size(D));
          convert_from_f32(f32.data(), item.owned.data(), D, n);
          st->release(tv->name);
          q.push(std::move(item));
        } else if (!q4 && (!is_float(tv->dtype) || (tv->dtype == D && it == lora_of.end()))) {
          // Unchanged: straight from the mmap, zero-copy, in 64 MB pieces whose pages are dropped once written.
          const size_t piece = size_t(64) << 20;
          for (size_t off = 0; off < tv->nbytes; off += piece) {
            WriteQueue::Item item;
            item.ptr = tv->data + off;
            item.n = std::min(piece, tv->nbytes - off);
            const std::string name = tv->name;
            const size_t len = item.n;
            item.after = [&st, name, off, len] { st->release(name, off, len); };
            q.push(std::move(item));
          }
        } else if (n > 0) {
          // Converted and/or merged in chunks of whole rows, so memory stays bounded whatever the tensor size
          // (a 128256 x 4096 embedding is 2 GB in fp32): convert the rows to fp32, add their LoRA delta,
          // convert to D, hand the chunk to the writer.
          const std::vector<int64_t> shape = out_shape(tv);
          const size_t rows = shape.empty() ? 1 : size_t(shape[0]);
          const size_t row_elems = n / rows;
          const size_t chunk_rows = std::max<size_t>(1, chunk_elems() / row_elems);
          for (size_t r0 = 0; r0 < rows; r0 += chunk_rows) {
            const size_t r1 = std::min(rows, r0 + chunk_rows);
            const size_t e0 = r0 * row_elems, ne = (r1 - r0) * row_elems;
            const uint8_t* src = q4 ? nullptr : tv->data + e0 * dtype_size(tv->dtype);
            WriteQueue::Item item;
            item.owned.resize(ne * dtype_size(D));
            if (it != lora_of.end() || q4) {
              f32.resize(ne);
              parallel_ranges(ne, 1 << 16, [&](size_t a, size_t b) {
                if (q4) bnb_dequantize(*q4, int64_t(e0 + a), int64_t(b - a), f32.data() + a);
                else convert_to_f32(src + a * dtype_size(tv->dtype), tv->dtype, f32.data() + a, b - a);
              }, threads);
              if (it != lora_of.end()) add_lora_delta(f32.data(), *it->second, r0, r1, ad.spec.r, scale, threads);
              parallel_ranges(ne, 1 << 16, [&](size_t a, size_t b) {
                convert_from_f32(f32.data() + a, item.owned.data() + a * dtype_size(D), D, b - a);
              }, threads);
            } else {  // dtype change only: through a small fp32 buffer per worker
              parallel_ranges(ne, 1 << 16, [&](size_t a, size_t b) {
                std::vector<float> tmp(b - a);
                convert_to_f32(src + a * dtype_size(tv->dtype), tv->dtype, tmp.data(), b - a);
                convert_from_f32(tmp.data(), item.owned.data() + a * dtype_size(D), D, b - a);
              }, threads);
            }
            if (!q4) st->release(tv->name, e0 * dtype_size(tv->dtype), ne * dtype_size(tv->dtype));  // source rows done
            q.push(std::move(item));
          }
        }
        weight_map.set(tv->name, Json::string(pl.file));
        done++;
        progress(false);
      }
      q.finish();
    }
    writer.commit();
    files.push(Json::string(path));
  }
  f32.clear();
  f32.shrink_to_fit();
  progress(true);

  // Index json when the base had one (same name, same weight_map, new total_size).
  const std::string index_name = "model.safetensors.index.json";
  if (path_exists(path_join(base, index_name))) {
    Json wm = Json::object();
    std::vector<std::pair<std::string, Json>> entries(weight_map.as_object().begin(), weight_map.as_object().end());
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& e : entries) wm.set(e.first, e.second);
    Json idx = Json::object();
    idx.set("metadata", Json::object().set("total_size", Json::number(double(total_bytes))));
    idx.set("weight_map", wm);
    write_file_atomic(path_join(out, index_name), idx.dump(2) + "\n");
    files.push(Json::string(path_join(out, index_name)));
  } else if (path_exists(path_join(out, index_name))) {
    ::unlink(path_join(out, index_name).c_str());  // stale index from an earlier, sharded output
  }

  for (const auto& f : hf_companion_files(base)) {
    copy_file_atomic(path_join(base, f), path_join(out, f));
    files.push(Json::string(path_join(out, f)));
  }
  Json config = prequantized ? without_quantization_config(cfg.raw) : cfg.raw;
  const char* tdn = torch_dtype_name(D);
  bool set_any = false;
  for (const char* key : {"torch_dtype", "dtype"})
    if (config.has(key)) { config.set(key, Json::string(tdn)); set_any = true; }
  if (!set_any) config.set("torch_dtype", Json::string(tdn));
  if (merged_vocab != cfg.vocab_size) config.set("vocab_size", Json::number(merged_vocab));
  write_file_atomic(path_join(out, "config.json"), config.dump(2) + "\n");
  files.push(Json::string(path_join(out, "config.json")));

  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  emit_event("done", Json::object().set("summary", Json::object()
                                                       .set("files", files)
                                                       .set("tensors", Json::number(double(total_tensors)))
                                                       .set("merged_tensors", Json::number(double(lora_of.size())))
                                                       .set("bytes", Json::number(double(total_bytes)))
                                                       .set("dtype", Json::string(dtype_s))
                                                       .set("wall_s", Json::number(wall))));
  return 0;
}

static RegisterCommand reg_merge("merge", &cmd_merge);

}  // namespace nxft
