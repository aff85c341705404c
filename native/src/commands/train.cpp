// train.cpp — `finetune-engine train`: LoRA / QLoRA fine-tuning (docs/engine-protocol.md "train").
//
// Data: the training rows form one stream, epoch after epoch (each epoch a seeded permutation of all rows, or
// file order when shuffle is false). Optimizer step s, micro-batch m takes stream rows [(s·GA + m)·B, +B), cut
// after the micro-batch's last target (train/shards.h: what follows carries no loss and is attended by nothing).
// Loss of a step = Σ cross-entropy over its targets != -100 / their count (all GA micro-batches together, like
// transformers' Trainer with num_items_in_batch). Then: global grad norm, clip (torch clip_grad_norm_),
// AdamW (torch.optim.AdamW), LR from transformers' schedules. Eval every eval_every steps and at the end;
// checkpoints every save_every steps; resume continues bit-identically from the newest checkpoint.
#include <sys/resource.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include "backend/backend.h"
#if defined(NXFT_HAVE_CUDA)
#include "backend/cuda/cuda_backend.h"
#endif
#include "commands/command.h"
#include "commands/inference_model.h"
#include "dist/collective.h"
#include "model/lora.h"
#include "model/quant4.h"
#include "model/transformer.h"
#include "model/weights.h"
#include "train/checkpoint.h"
#include "train/schedule.h"
#include "train/shards.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/job.h"
#include "util/rng.h"

namespace nxft {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Peak resident memory of this process in bytes (VmHWM; getrusage as a fallback).
double peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) {
      std::istringstream is(line.substr(6));
      double kb = 0;
      is >> kb;
      return kb * 1024.0;
    }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return double(ru.ru_maxrss) * 1024.0;
}

// The order rows are visited in: epoch e is a permutation of [0, R) (identity without shuffle).
class RowOrder {
 public:
  RowOrder(int64_t rows, bool shuffle, uint64_t seed) : rows_(rows), shuffle_(shuffle), seed_(seed) {}
  int64_t row_at(int64_t stream_index) {
    const int64_t epoch = stream_index / rows_, i = stream_index % rows_;
    if (!shuffle_) return i;
    if (epoch != cached_epoch_) {
      perm_.resize(size_t(rows_));
      std::iota(perm_.begin(), perm_.end(), int64_t(0));
      Rng rng = Rng::stream(seed_, "shuffle-epoch-" + std::to_string(epoch));
      for (int64_t k = rows_ - 1; k > 0; k--) {   // Fisher-Yates
        const int64_t j = int64_t(rng.next_u64() % uint64_t(k + 1));
        std::swap(perm_[size_t(k)], perm_[size_t(j)]);
      }
      cached_epoch_ = epoch;
    }
    return perm_[size_t(i)];
  }

 private:
  int64_t rows_;
  bool shuffle_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> perm_;
};

// The schedule (see the top): this rank's row b of micro-batch m of optimizer step `step` is stream row
// (step·GA + m)·B + rank·B_rank + b, the rank's slice [rank·B/W, +B/W) of the micro-batch's B stream rows.
int64_t micro_batch_row(RowOrder& order, int64_t step, int m, int b, int GA, int B, int B_rank, int rank) {
  return order.row_at((step * GA + m) * int64_t(B) + int64_t(rank) * B_rank + b);
}

// The eval batches (evaluate, below): B rows at a time in file order, batch i on rank i % W; [first, end) rows.
std::vector<std::pair<int64_t, int64_t>> eval_batches(const ShardSet& eval, int B, int64_t W, int64_t rank) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t r0 = 0, i = 0; r0 < eval.rows(); r0 += B, i++)
    if (i % W == rank) out.emplace_back(r0, std::min<int64_t>(eval.rows(), r0 + B));
  return out;
}

struct HostRows {   // B rows of T, as the three shard arrays
  std::vector<int32_t> tokens, targets, positions;
  int B = 0, T = 0;
  Batch batch() const { return Batch{tokens.data(), targets.data(), positions.data(), B, T}; }
  int64_t n_targets() const {
    int64_t n = 0;
    for (int32_t t : targets) n += t != -100;
    return n;
  }
  // The tokens of the documents that hold a target: the data trained on, without the rows' padding documents (which
  // hold none). Progress reports its rate, since row tokens overstate unpacked rows tenfold.
  int64_t data_tokens() const {
    int64_t n = 0;
    for (int b = 0; b < B; b++) {
      const size_t row = size_t(b) * T;
      for (int s = 0; s < T;) {   // one document: [s, e)
        int e = s + 1;
        while (e < T && positions[row + e] != 0) e++;
        bool trained = false;
        for (int t = s; t < e && !trained; t++) trained = targets[row + t] != -100;
        if (trained) n += e - s;
        s = e;
      }
    }
    return n;
  }
  // The rows up to their last targets, padding-free (end to end in one row) when that saves work (train/shards.h):
  // the same loss and gradients for less work.
  void cut_after_last_target() {
    const RowsToRun run = cut_rows_after_last_target(&tokens, &targets, &positions, B, T);
    B = run.B;
    T = run.T;
  }
};

// The tokens of the largest batch this rank runs: its training micro-batches of steps [first_step, total_steps) and
// its eval batches (evaluate, above), each cut after its rows' last targets or laid end to end (rows_to_run,
// train/shards.h). Activation buffers are reserved for it before step 1: memory then follows what the steps compute
// (with unpacked rows, one example padded to max_seq_len, far less than whole rows, as padding-free collators), and
// a run that does not fit still fails at step 1, not when its longest example comes. Each row's targets are read
// once, from the end (a packed row answers from its last chunk), and its first position once.
int64_t largest_batch_tokens(const ShardSet& train, const ShardSet* eval, RowOrder& order, int64_t first_step,
                             int64_t total_steps, int GA, int B, int B_rank, int rank, int W) {
  const int T = train.seq_len();
  int64_t largest = int64_t(B_rank) * T;
  if (!trim_rows_enabled()) {
    if (eval) largest = std::max(largest, int64_t(std::min<int64_t>(B, eval->rows())) * eval->seq_len());
    return largest;
  }
  // A batch's tokens as it runs, from its rows' ends (cached: a row is read once however often it comes).
  auto run_tokens = [](const ShardSet& s, std::vector<int>& end, std::vector<signed char>& starts,
                       const std::vector<int64_t>& rows) {
    std::vector<int> ends;
    bool all_start = true;
    for (int64_t row : rows) {
      if (end[size_t(row)] < 0) {
        end[size_t(row)] = s.targets_end(row, trim_granule(s.seq_len()));
        starts[size_t(row)] = s.starts_document(row) ? 1 : 0;
      }
      ends.push_back(end[size_t(row)]);
      all_start = all_start && starts[size_t(row)] == 1;
    }
    const RowsToRun run = rows_to_run(ends, all_start, s.seq_len());
    return int64_t(run.B) * run.T;
  };
  std::vector<int> end(size_t(train.rows()), -1);
  std::vector<signed char> starts(size_t(train.rows()), -1);
  largest = 0;
  std::vector<int64_t> rows(static_cast<size_t>(B_rank));
  for (int64_t step = first_step; step < total_steps && largest < int64_t(B_rank) * T; step++)   // whole rows: no more
    for (int m = 0; m < GA; m++) {
      for (int b = 0; b < B_rank; b++) rows[size_t(b)] = micro_batch_row(order, step, m, b, GA, B, B_rank, rank);
      largest = std::max(largest, run_tokens(train, end, starts, rows));
    }
  if (eval) {
    std::vector<int> eval_end(size_t(eval->rows()), -1);
    std::vector<signed char> eval_starts(size_t(eval->rows()), -1);
    for (auto [first, last] : eval_batches(*eval, B, W, rank)) {
      std::vector<int64_t> eval_rows;
      for (int64_t r = first; r < last; r++) eval_rows.push_back(r);
      largest = std::max(largest, run_tokens(*eval, eval_end, eval_starts, eval_rows));
    }
  }
  return std::max<int64_t>(largest, 1);
}

void read_rows(const ShardSet& s, const std::vector<int64_t>& rows, HostRows* out) {
  const int T = s.seq_len();
  out->B = int(rows.size());
  out->T = T;
  out->tokens.resize(rows.size() * size_t(T));
  out->targets.resize(rows.size() * size_t(T));
  out->positions.resize(rows.size() * size_t(T));
  for (size_t b = 0; b < rows.size(); b++)
    s.read_row(rows[b], &out->tokens[b * size_t(T)], &out->targets[b * size_t(T)], &out->positions[b * size_t(T)]);
}

// Mean loss over all target tokens of the eval set, in batches of B rows in file order. Data-parallel: batch i
// is evaluated by rank i % W and the sums are added over the ranks.
std::pair<double, int64_t> evaluate(Transformer& model, const ShardSet& eval, int B, Collective* dist) {
  double sum = 0;
  int64_t count = 0;
  HostRows hr;
  const int64_t W = dist ? dist->world() : 1, rank = dist ? dist->rank() : 0;
  for (auto [first, last] : eval_batches(eval, B, W, rank)) {
    std::vector<int64_t> rows;
    for (int64_t r = first; r < last; r++) rows.push_back(r);
    read_rows(eval, rows, &hr);
    hr.cut_after_last_target();
    const int64_t n = hr.n_targets();
    if (n == 0) continue;
    sum += model.forward_loss(hr.batch());
    count += n;
  }
  if (dist) {
    double totals[2] = {sum, double(count)};
    dist->all_reduce_host(totals, 2);
    sum = totals[0];
    count = int64_t(totals[1]);
  }
  return {count > 0 ? sum / double(count) : std::nan(""), count};
}

std::string json_line(const std::string& event, Json fields) {
  Json j = Json::object().set("event", Json::string(event));
  for (const auto& kv : fields.as_object()) j.set(kv.first, kv.second);
  return j.dump();
}

Json num(double x) { return std::isfinite(x) ? Json::number(x) : Json(); }

int cmd_train(const Json& job, const std::string& job_path) {
  const auto t_start = Clock::now();
  JobReader r(job, job_path);
  const std::string base = r.path("base");
  const std::vector<std::string> train_files = r.path_list("train_shards");
  const std::vector<std::string> eval_files = r.path_list("eval_shards", {});
  const std::string out = r.path("out");
  // Where checkpoints/step-N/ folders go: <out>/checkpoints unless `checkpoint_dir` names a folder outside `out`
  // (the plugin keys it by the adapter stage's inputs, so a killed run's checkpoints outlive its temp output).
  const std::string ckpt_dir = r.opt_path("checkpoint_dir").empty() ? path_join(out, "checkpoints") : r.opt_path("checkpoint_dir");
  const std::string backend_name = r.choice("backend", {"auto", "cpu", "cuda"}, "auto");
  const int threads = int(r.integer_in("threads", 0, 4096, 0));
  const std::string quantize = r.choice("quantize_base", {"nf4"}, "");
  // quantize_base "nf4" only: double-quantize the absmax (bitsandbytes' bnb_4bit_use_double_quant)
  const bool double_quant = r.boolean("double_quant", false);
  if (double_quant && quantize.empty()) r.fail("double_quant", "applies only with quantize_base \"nf4\"");
  const std::string base_name = r.str("base_model_name_or_path", base);

  LoraSpec spec;
  std::string init_adapter;
  {
    JobReader l = r.sub("lora");
    spec.r = int(l.integer_in("r", 1, 4096, 8));
    spec.alpha = l.num_in("alpha", 1e-9, 1e9, 16);
    spec.dropout = l.num_in("dropout", 0.0, 0.999, 0.0);
    spec.targets = l.str_list("targets", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"});
    spec.rslora = l.boolean("rslora", false);
    init_adapter = l.opt_path("init_adapter");
    // PEFT's trainable_token_indices: embedding (and untied lm_head) rows trained whole, e.g. special tokens a
    // template adds to the tokenizer; ids beyond the base's vocab_size grow the vocabulary (model/lora.h).
    for (int64_t id : l.int_list("trainable_token_indices", {})) {
      if (id < 0 || id >= (1 << 24)) l.fail("trainable_token_indices", "token id " + std::to_string(id) + " is out of range");
      spec.token_indices.push_back(int(id));
    }
    try {
      check_token_indices(spec.token_indices, "");
    } catch (const EngineError& e) {
      l.fail("trainable_token_indices", e.what());
    }
    if (spec.targets.empty()) l.fail("targets", "must list at least one projection");
    std::set<std::string> seen;
    for (const std::string& t : spec.targets) {
      if (lora_target_index(t) < 0)
        l.fail("targets", "unknown projection \"" + t + "\" (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)");
      if (!seen.insert(t).second) l.fail("targets", "\"" + t + "\" listed twice");
    }
    l.finish();
  }
  JobReader t = r.sub("train");
  const uint64_t seed = uint64_t(t.integer_in("seed", 0, int64_t(9007199254740991LL), 0));
  const double base_lr = t.num_in("lr", 0.0, 10.0, 2e-4);
  const std::string schedule = t.choice("schedule", {"constant", "linear", "cosine"}, "linear");
  const int64_t warmup = t.integer_in("warmup_steps", 0, int64_t(1) << 40, 0);
  const bool has_steps = t.has("steps"), has_epochs = t.has("epochs");
  if (!has_steps && t.present("steps")) t.any("steps");     // explicit null: mark as read
  if (!has_epochs && t.present("epochs")) t.any("epochs");
  if (has_steps == has_epochs) t.fail(has_steps ? "epochs" : "steps", "give exactly one of steps and epochs");
  const int64_t steps_req = has_steps ? t.integer_in("steps", 1, int64_t(1) << 40, 1) : 0;
  const double epochs = has_epochs ? t.num_in("epochs", 1e-9, 1e9, 1) : 0;
  const int B = int(t.integer_in("batch_size", 1, 1 << 20, 2));
  const int GA = int(t.integer_in("grad_accum", 1, 1 << 20, 1));
  t.choice("optimizer", {"adamw"}, "adamw");
  const double beta1 = t.num_in("beta1", 0.0, 0.999999999, 0.9);
  const double beta2 = t.num_in("beta2", 0.0, 0.999999999, 0.999);
  const double eps = t.num_in("eps", 0.0, 1.0, 1e-8);
  const double weight_decay = t.num_in("weight_decay", 0.0, 1e6, 0.0);
  const double max_grad_norm = t.num_in("max_grad_norm", 0.0, 1e12, 0.0);
  // gradient_checkpointing: false | true | "offload" (the saved layer inputs in host memory, see TransformerOptions)
  bool grad_ckpt = false, offload_ckpt = false;
  if (t.has("gradient_checkpointing")) {
    const Json& gc = t.any("gradient_checkpointing");
    if (gc.is_bool()) {
      grad_ckpt = gc.as_bool();
    } else if (gc.is_string() && gc.as_string() == "offload") {
      grad_ckpt = offload_ckpt = true;
    } else {
      t.fail("gradient_checkpointing", "must be true, false or \"offload\"");
    }
  } else if (t.present("gradient_checkpointing")) {
    t.any("gradient_checkpointing");   // explicit null: the default (off)
  }
  const int64_t eval_every = t.integer_in("eval_every", 0, int64_t(1) << 40, 0);
  const int64_t save_every = t.integer_in("save_every", 0, int64_t(1) << 40, 0);
  const bool resume = t.boolean("resume", false);
  const bool shuffle = t.boolean("shuffle", true);
  t.finish();
  // Data-parallel (docs/multi-gpu.md): W ranks, each takes B/W rows of every micro-batch.
  const DistConfig dist = read_dist_config(r);
  r.finish();
  const int W = dist.world;
  if (B % W != 0)
    throw EngineError(job_path + ": train.batch_size: " + std::to_string(B) + " rows cannot be split evenly over " + std::to_string(W) +
                          " ranks (make it a multiple of the rank count)",
                      job_path, "train.batch_size");
  const int B_rank = B / W;   // rows of each micro-batch this rank computes
  const bool reporter = dist.writes_outputs();   // emits step/eval/checkpoint events and writes the outputs

  // ---- model, data, adapter ----
  const ModelConfig base_cfg = ModelConfig::load(path_join(base, "config.json"));
  const ModelConfig cfg = with_adapter_vocab(base_cfg, spec);   // the vocabulary grown by trainable tokens
  ShardSet train(train_files, cfg.vocab_size);
  if (train.rows() == 0) throw EngineError(job_path + ": train_shards: the shards hold no rows", job_path, "train_shards");
  std::unique_ptr<ShardSet> eval;
  if (!eval_files.empty()) eval = std::make_unique<ShardSet>(eval_files, cfg.vocab_size);
  const int T = train.seq_len();
  if (T > cfg.max_position_embeddings)
    emit_warning("seq_len " + std::to_string(T) + " of the shards exceeds the model's max_position_embeddings (" +
                 std::to_string(cfg.max_position_embeddings) + ")");
  const int64_t rows_per_step = int64_t(B) * GA;
  const int64_t total_steps =
      has_steps ? steps_req : std::max<int64_t>(1, int64_t(std::ceil(epochs * double(train.rows()) / double(rows_per_step) - 1e-9)));

  LoraAdapter adapter;
  if (!init_adapter.empty()) {
    adapter = LoraAdapter::load_peft(init_adapter, cfg);
    std::set<std::string> want(spec.targets.begin(), spec.targets.end()), got(adapter.spec.targets.begin(), adapter.spec.targets.end());
    if (adapter.spec.r != spec.r || adapter.spec.alpha != spec.alpha || want != got || adapter.spec.rslora != spec.rslora ||
        (!adapter.spec.token_indices.empty() && adapter.spec.token_indices != spec.token_indices))
      throw EngineError(job_path + ": lora.init_adapter: " + init_adapter + " has r/alpha/targets/rslora different from the job's lora settings",
                        job_path, "lora.init_adapter");
    adapter.spec.dropout = spec.dropout;
  } else {
    adapter = LoraAdapter::init(cfg, spec, seed);
  }
  adapter.spec.token_indices = spec.token_indices;
  spec = adapter.spec;   // targets in canonical order

  std::unique_ptr<Backend> be = make_backend(backend_name, threads);
#if defined(NXFT_HAVE_CUDA)
  // A CUDA engine built without cuDNN (or its cudnn-frontend headers) trains, but its attention runs on the portable
  // kernels: packed rows, the shards stage's layout, about 3.5× slower per step at 8B (cuda_train_bench `:portable`).
  if (be->name() == "cuda") {
    const std::string path = cuda_attention_path(*be);
    if (path.rfind("cudnn", 0) != 0 && path.find("NXFT_NO_CUDNN") == std::string::npos)
      emit_warning("CUDA attention runs on the engine's portable kernels (" + path + "), several times slower on "
                   "packed rows than cuDNN's: build the engine with cuDNN 9 and the cudnn-frontend headers "
                   "(NXFT_CUDNN_DIR, NXFT_CUDNN_FRONTEND_DIR; the plugin README's \"GPU\" section)");
  }
#endif
  TransformerOptions opt;
  opt.gradient_checkpointing = grad_ckpt;
  opt.offload_checkpoints = offload_ckpt;
  // A pre-quantized bitsandbytes base (config.json quantization_config) is QLoRA whatever quantize_base says:
  // its weights stay 4-bit as stored.
  const bool prequantized = bnb_4bit_config(cfg.raw, path_join(base, "config.json"));
  opt.quantize_nf4 = quantize == "nf4" || prequantized;
  opt.double_quant = double_quant;
  // On a GPU the logits block is 512 rows × a whole vocabulary up to 128K (125 MiB in bf16 for Llama 3): one
  // fused CE pass per block, head GEMMs of 512 × V × C that still run at full speed, and 0.4 GiB less than a
  // 2048-row block (which counts at 8B with checkpointing). The CPU default (32M elements) is plenty there.
  // Its last block is padded to 64 rows: at most 9 GEMM shapes, each given a good kernel once
  // (TransformerOptions::head_row_granule).
  if (be->name() == "cuda") {
    opt.ce_max_logits = int64_t(512) * 131072;
    opt.head_row_granule = 64;
  }
  apply_memory_saving(opt);   // QLoRA and checkpoint offload: the token embedding in host memory
  opt.checkpoint_vocab_size = base_cfg.vocab_size;
  // Without checkpointing every layer keeps its MLP input h instead of recomputing it in backward
  // (TransformerOptions::keep_mlp_input): on the real path (8B, Alpaca packed 2×2048, H200) 14,875 real tok/s at
  // 32.7 GiB against 14,644 at 29.3 GiB, the same adapter bit for bit (session 8; Unsloth there: 30.8 GiB).
  // NXFT_KEEP_MLP_INPUT=0 recomputes it (3.4 GiB less at 8B 2×2048), =1 keeps it (the default).
  opt.keep_mlp_input = true;
  if (const char* keep_h = std::getenv("NXFT_KEEP_MLP_INPUT"); keep_h && *keep_h) {
    if (std::string(keep_h) != "0" && std::string(keep_h) != "1")
      throw EngineError(std::string("environment NXFT_KEEP_MLP_INPUT=\"") + keep_h + "\": must be 0 or 1", "",
                        "NXFT_KEEP_MLP_INPUT");
    opt.keep_mlp_input = std::string(keep_h) == "1";
  }
  Transformer model(*be, cfg, &spec, opt);
  const size_t n_params = model.num_lora_params();
  Tensor adam_m = be->alloc(n_params, Role::Param), adam_v = be->alloc(n_params, Role::Param);
  be->fill(adam_m, 0.0f, n_params);
  be->fill(adam_v, 0.0f, n_params);

  // What must match for a checkpoint to be resumed.
  std::ostringstream fp;
  // "lora-layout=2": per layer all A then all B (model/transformer.h); optimizer states follow that order.
  fp << "lora-layout=2 r=" << spec.r << " tokens=" << spec.token_indices.size() << " alpha=" << spec.alpha << " targets=" << spec.targets.size() << " B=" << B << " GA=" << GA
     << " seed=" << seed << " shuffle=" << shuffle << " T=" << T << " rows=" << train.rows() << " total=" << total_steps;
  TrainerState state;
  state.total_steps = total_steps;
  state.n_params = int64_t(n_params);
  state.fingerprint = fp.str();
  std::string resumed_from;
  // Every rank must run the same job: the fingerprint is checked at the rendezvous (a rank with other settings
  // is refused there, not after hours of diverging training).
  std::unique_ptr<Collective> coll;
  std::string collective_name;   // for the summary, written after the collective is torn down
  std::vector<std::pair<size_t, size_t>> layer_grads;   // layer l's slice of the gradients: one bucket each
  std::pair<size_t, size_t> tail_grads{0, 0};            // the trainable token rows' slice, if any
  if (dist.enabled()) {
    coll = make_collective(dist, *be, state.fingerprint);
    collective_name = coll->name();
    size_t covered = 0;
    for (int l = 0; l < cfg.num_layers; l++) covered += layer_grads.emplace_back(model.lora_layer_range(l)).second;
    // Trainable token rows (lora.trainable_token_indices) follow the layers' pairs: one more bucket, after the
    // backward (their gradients are complete only when the embedding's gradient is).
    if (covered > n_params) throw EngineError("internal: the per-layer gradient buckets overrun the LoRA gradients");
    tail_grads = {covered, n_params - covered};
  }
  if (resume) {
    const std::string ck = find_latest_checkpoint(ckpt_dir);
    if (ck.empty()) {
      emit_warning("resume: no checkpoint under " + ckpt_dir + "; starting from step 0");
    } else {
      std::vector<float> m, v;
      TrainerState loaded;
      load_checkpoint(ck, cfg, &adapter, &m, &v, &loaded);
      if (loaded.fingerprint != state.fingerprint || loaded.n_params != int64_t(n_params))
        throw EngineError(ck + ": checkpoint was made with different settings (" + loaded.fingerprint + " vs " + state.fingerprint + ")",
                          path_join(ck, "trainer_state.json"), "train.resume");
      adapter.spec.dropout = spec.dropout;
      be->upload(adam_m, m.data(), n_params);
      be->upload(adam_v, v.data(), n_params);
      state.step = loaded.step;
      state.rows_consumed = loaded.rows_consumed;
      state.metrics = loaded.metrics;
      resumed_from = ck;
    }
  }
  model.set_lora(adapter);

  Json start = start_event_fields("train", *be);
  start.set("model_type", Json::string(cfg.model_type))
      .set("params", Json::number(double(cfg.num_params())))
      .set("trainable_params", Json::number(double(n_params)))
      .set("total_steps", Json::number(double(total_steps)))
      .set("train_rows", Json::number(double(train.rows())))
      .set("seq_len", Json::number(T))
      .set("start_step", Json::number(double(state.step)));
  if (opt.quantize_nf4) start.set("base_4bit", Json::string(prequantized ? "bitsandbytes" : "nf4"));
  if (!resumed_from.empty()) start.set("resumed_from", Json::string(resumed_from));
  if (coll)
    start.set("world_size", Json::number(W)).set("rank", Json::number(coll->rank())).set("collective", Json::string(coll->name()));
  emit_event("start", start);
  model.load_weights(base, [reporter](size_t done, size_t total) {
    if (reporter && (done == total || done % 16 == 0)) emit_progress("load", double(done), double(total), "tensors");
  });   // streamed tensor by tensor into the backend
  // A fresh adapter's trainable token rows start as the (resized) base rows; a loaded one brought its own.
  if (!spec.token_indices.empty() && adapter.embed_rows.empty()) model.init_token_rows_from_weights();
  const double load_seconds = std::chrono::duration<double>(Clock::now() - t_start).count();   // job start → weights ready

  // ---- the loop ----
  RowOrder order(train.rows(), shuffle, seed);
  model.reserve_tokens(int(largest_batch_tokens(train, eval.get(), order, state.step, total_steps, GA, B, B_rank,
                                               dist.rank, W)),
                       true);
  std::vector<HostRows> micro(static_cast<size_t>(GA));
  std::vector<float> host_m, host_v;
  double last_loss = std::nan(""), last_eval = std::nan("");
  int64_t last_eval_step = -1;
  int64_t tokens_done = 0, data_tokens_done = 0;
  double train_seconds = 0;
  const int64_t first_step = state.step;
  const float max_norm_f = float(max_grad_norm);

  auto run_eval = [&](int64_t step) {
    auto [loss, count] = evaluate(model, *eval, B, coll.get());
    last_eval = loss;
    last_eval_step = step;
    Json f = Json::object().set("step", Json::number(double(step))).set("loss", num(loss)).set("tokens", Json::number(double(count)));
    if (reporter) emit_event("eval", f);
    state.metrics.push_back(json_line("eval", f));
  };

  // Test hook (test/unit/plugin-dist-adapter.test.ts): NXFT_DIST_FAIL_AT=<rank>:<step> makes that rank fail when
  // it starts that step, as a rank whose GPU or data breaks mid-run would.
  int64_t fail_at_step = -1;
  if (const char* f = std::getenv("NXFT_DIST_FAIL_AT")) {
    int fail_rank = -1;
    long long fail_step = -1;
    if (std::sscanf(f, "%d:%lld", &fail_rank, &fail_step) == 2 && fail_rank == dist.rank) fail_at_step = fail_step;
  }
  for (int64_t step = state.step; step < total_steps; step++) {
    const auto t_step = Clock::now();
    if (step + 1 == fail_at_step)
      throw EngineError("NXFT_DIST_FAIL_AT: rank " + std::to_string(dist.rank) + " fails at step " + std::to_string(step + 1) + " as asked",
                        "", "NXFT_DIST_FAIL_AT");
    int64_t n_items = 0, computed_tokens = 0, data_tokens = 0;
    for (int m = 0; m < GA; m++) {   // this rank's rows: [rank·B/W, +B/W) of each micro-batch's B stream rows
      std::vector<int64_t> rows(static_cast<size_t>(B_rank));
      for (int b = 0; b < B_rank; b++)
        rows[size_t(b)] = micro_batch_row(order, step, m, b, GA, B, B_rank, dist.rank);
      HostRows& hr = micro[size_t(m)];
      read_rows(train, rows, &hr);
      data_tokens += hr.data_tokens();
      // An unpacked row (the template's default: one example padded to max_seq_len) is mostly padding; the step
      // runs the rows up to their last target. Step events count these computed_tokens beside the row tokens.
      hr.cut_after_last_target();
      n_items += hr.n_targets();
      computed_tokens += int64_t(hr.B) * hr.T;
    }
    if (coll) {   // the loss is normalized by the targets of the whole step, on every rank
      double n[3] = {double(n_items), double(computed_tokens), double(data_tokens)};
      coll->all_reduce_host(n, 3);
      n_items = int64_t(n[0]);
      computed_tokens = int64_t(n[1]);
      data_tokens = int64_t(n[2]);
    }
    model.zero_grads();
    double loss_sum = 0;
    if (n_items > 0) {
      const float grad_scale = float(1.0 / double(n_items));
      for (int m = 0; m < GA; m++) {
        // Dropout masks as if one process ran the W ranks' micro-batches one after another (m·W + rank), so
        // the masks do not depend on how many ranks share the step.
        const uint64_t micro_index = (uint64_t(step) * uint64_t(GA) + uint64_t(m)) * uint64_t(W) + uint64_t(dist.rank);
        const uint64_t mb_seed = splitmix64_mix(splitmix64_mix(seed + 0x51ED) + micro_index + 1);
        // The last micro-batch completes each layer's gradients: start that layer's all-reduce right away.
        if (coll && m == GA - 1)
          model.set_layer_grads_hook([&](int l) { coll->all_reduce_async(model.lora_grads(), layer_grads[size_t(l)].first, layer_grads[size_t(l)].second); });
        loss_sum += model.forward_backward(micro[size_t(m)].batch(), grad_scale, mb_seed);
        model.set_layer_grads_hook(nullptr);
        if (coll && m == GA - 1 && tail_grads.second > 0)
          coll->all_reduce_async(model.lora_grads(), tail_grads.first, tail_grads.second);
      }
      if (coll) {
        coll->wait_all();
        coll->all_reduce_host(&loss_sum, 1);
      }
    } else {
      emit_warning("step " + std::to_string(step + 1) + ": no target tokens in this step's rows; skipping the update");
    }
    const double loss = n_items > 0 ? loss_sum / double(n_items) : 0.0;
    if (!std::isfinite(loss))
      throw EngineError("step " + std::to_string(step + 1) + ": loss is " + (std::isnan(loss) ? "NaN" : "infinite") +
                        " (try a lower lr)", "", "train.lr");
    const float grad_norm = float(std::sqrt(be->sum_sq(model.lora_grads(), n_params)));
    if (!std::isfinite(grad_norm))
      throw EngineError("step " + std::to_string(step + 1) + ": gradient norm is not finite", "", "train.lr");
    const double lr = base_lr * lr_multiplier(schedule, step, warmup, total_steps);
    if (n_items > 0) {
      // torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1, in float32
      float coef = 1.0f;
      if (max_grad_norm > 0) coef = std::min(1.0f, max_norm_f / (grad_norm + 1e-6f));
      be->adamw_step(model.lora_params(), model.lora_grads(), adam_m, adam_v, n_params, lr, beta1, beta2, eps,
                     weight_decay, step + 1, coef);
    }
    be->synchronize();
    train_seconds += seconds_since(t_step);
    state.step = step + 1;
    state.rows_consumed = state.step * rows_per_step;
    const int64_t step_tokens = rows_per_step * T;
    tokens_done += step_tokens;
    data_tokens_done += data_tokens;
    last_loss = loss;
    const int64_t done_here = state.step - first_step;
    const double eta = train_seconds / double(done_here) * double(total_steps - state.step);
    Json f = Json::object()
                 .set("step", Json::number(double(state.step)))
                 .set("total_steps", Json::number(double(total_steps)))
                 .set("loss", Json::number(loss))
                 .set("lr", Json::number(lr))
                 .set("grad_norm", Json::number(grad_norm))
                 .set("tokens", Json::number(double(step_tokens)))
                 .set("computed_tokens", Json::number(double(computed_tokens)))
                 .set("target_tokens", Json::number(double(n_items)))
                 .set("data_tokens", Json::number(double(data_tokens)))
                 .set("tokens_per_s", Json::number(train_seconds > 0 ? double(tokens_done) / train_seconds : 0))
                 .set("data_tokens_per_s", Json::number(train_seconds > 0 ? double(data_tokens_done) / train_seconds : 0))
                 .set("elapsed_s", Json::number(seconds_since(t_start)))
                 .set("eta_s", Json::number(eta))
                 .set("epoch", Json::number(double(state.rows_consumed) / double(train.rows())));
    if (reporter) emit_event("step", f);
    state.metrics.push_back(json_line("step", f));
    if (eval && eval_every > 0 && state.step % eval_every == 0) run_eval(state.step);
    if (reporter && save_every > 0 && state.step % save_every == 0) {
      model.get_lora(adapter);
      host_m.resize(n_params);
      host_v.resize(n_params);
      be->download(adam_m, host_m.data(), n_params);
      be->download(adam_v, host_v.data(), n_params);
      const std::string dir = save_checkpoint(ckpt_dir, adapter, base_name, host_m, host_v, state);
      emit_event("checkpoint", Json::object().set("step", Json::number(double(state.step))).set("path", Json::string(dir)));
    }
  }
  // a resumed run that had already evaluated at this step (it finished before) does not evaluate again
  for (const std::string& line : state.metrics) {
    Json m = Json::parse(line, "metrics");
    if (m.at("event").as_string() == "eval" && m.at("step").as_int() == state.step) {
      last_eval_step = state.step;
      last_eval = m.at("loss").is_number() ? m.at("loss").as_number() : std::nan("");
    }
  }
  if (eval && last_eval_step != state.step) run_eval(state.step);
  if (coll) {   // every rank is done with the others: tear the collective down together, then write
    coll->barrier();
    coll.reset();
  }
  if (std::isnan(last_loss) && !state.metrics.empty()) {   // resumed at the very end: report the recorded loss
    for (auto it = state.metrics.rbegin(); it != state.metrics.rend(); ++it) {
      Json m = Json::parse(*it, "metrics");
      if (m.at("event").as_string() == "step") {
        last_loss = m.at("loss").as_number();
        break;
      }
    }
  }

#if defined(NXFT_HAVE_CUDA)
  // NXFT_CUDA_PROFILE=1 (CUDA events around every backend op): the per-op table of the whole run on stderr, so the
  // real path (bench/real_path_run.py) can be profiled as users run it, not only cuda_train_bench's random rows.
  if (be->name() == "cuda" && cuda_profile_enabled(*be))
    std::fprintf(stderr, "#### per-op profile of this train job (all steps; CUDA events around each backend op)\n\n%s\n",
                 cuda_profile_report(*be).c_str());
#endif

  // ---- outputs (each written atomically; data-parallel: once per host, by its local rank 0) ----
  if (!reporter) {
    Json summary = Json::object()
                       .set("wall_s", Json::number(seconds_since(t_start)))
                       .set("train_s", Json::number(train_seconds))
                       .set("rank", Json::number(dist.rank))
                       .set("world_size", Json::number(W))
                       .set("files", Json::array());
    emit_event("done", Json::object().set("summary", summary));
    be->free(adam_m);
    be->free(adam_v);
    return 0;
  }
  model.get_lora(adapter);
  adapter.save_peft(out, base_name);
  std::string metrics;
  for (const std::string& line : state.metrics) metrics += line + "\n";
  write_file_atomic(path_join(out, "metrics.jsonl"), metrics);
  const double wall = seconds_since(t_start);
  Json summary = Json::object()
                     .set("wall_s", Json::number(wall))
                     .set("train_s", Json::number(train_seconds))
                     .set("tokens_per_s", Json::number(train_seconds > 0 ? double(tokens_done) / train_seconds : 0))
                     .set("data_tokens_per_s", Json::number(train_seconds > 0 ? double(data_tokens_done) / train_seconds : 0))
                     .set("peak_memory_bytes", Json::number(peak_rss_bytes()))
                     .set("backend_peak_bytes", Json::number(double(be->peak_bytes())))
                     .set("final_train_loss", num(last_loss))
                     .set("final_eval_loss", num(last_eval))
                     .set("steps", Json::number(double(state.step)))
                     .set("tokens", Json::number(double(state.step * rows_per_step * T)))
        .set("trainable_params", Json::number(double(n_params)))
                     .set("backend", Json::string(be->name()))
                     .set("device", Json::string(be->device()));
  summary.set("load_s", Json::number(load_seconds));
  if (dist.enabled()) summary.set("world_size", Json::number(W)).set("collective", Json::string(collective_name));
  if (opt.quantize_nf4) summary.set("base_4bit", Json::string(prequantized ? "bitsandbytes" : "nf4"));
  // Which side of NXFT_KEEP_MLP_INPUT a run was (it only matters without checkpointing).
  if (!opt.gradient_checkpointing) summary.set("keep_mlp_input", Json::boolean(opt.keep_mlp_input));
  write_file_atomic(path_join(out, "summary.json"), summary.dump(2) + "\n");
  Json files = Json::array();
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "summary.json"})
    files.push(Json::string(path_join(out, f)));
  summary.set("files", files);
  emit_event("done", Json::object().set("summary", summary));
  be->free(adam_m);
  be->free(adam_v);
  return 0;
}

RegisterCommand reg_train("train", &cmd_train);

}  // namespace

}  // namespace nxft
