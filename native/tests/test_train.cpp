// test_train.cpp — the `train` command end to end on a tiny random llama (no fixtures needed):
//   * LR schedules equal transformers' get_*_schedule_with_warmup (golden values below)
//   * shard validation errors name the file
//   * resume from a checkpoint is bit-identical (losses and adapter bytes), with shuffle, dropout, grad-accum
//   * determinism: same job twice, and 1 vs 2 threads, give identical adapter bytes
//   * gradient accumulation: B=4×GA=1 and B=2×GA=2 give the same losses (same rows per step)
//   * a diverging run stops with an error naming the step
//   * rows cut after their micro-batch's last target (unpacked rows: one example, then padding) train as whole rows
#include <stdlib.h>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include "commands/command.h"
#include "math_test_util.h"
#include "model/lora.h"
#include "model/weights.h"
#include "train/schedule.h"
#include "train/shards.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/json.h"

using namespace nxft;
namespace fsys = std::filesystem;

namespace {

std::string g_tmp;

void write_text(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f << s;
}

void test_schedules() {
  // transformers 5.24, base lr 2e-4, warmup 3, total 10; get_last_lr() before each of 12 steps:
  const double linear[12] = {0.0, 6.666666666666667e-05, 0.00013333333333333334, 0.0002, 0.00017142857142857143,
                             0.00014285714285714287, 0.00011428571428571428, 8.571428571428571e-05, 5.714285714285714e-05,
                             2.857142857142857e-05, 0.0, 0.0};
  const double cosine[12] = {0.0, 6.666666666666667e-05, 0.00013333333333333334, 0.0002, 0.0001900968867902419,
                             0.00016234898018587337, 0.00012225209339563145, 7.774790660436858e-05, 3.7651019814126654e-05,
                             9.903113209758096e-06, 0.0, 9.903113209758086e-06};
  const double constant[12] = {0.0, 6.666666666666667e-05, 0.00013333333333333334, 0.0002, 0.0002, 0.0002, 0.0002, 0.0002,
                               0.0002, 0.0002, 0.0002, 0.0002};
  for (int s = 0; s < 12; s++) {
    MT_CHECK(std::fabs(2e-4 * lr_multiplier("linear", s, 3, 10) - linear[s]) <= 1e-20, "linear schedule step %d", s);
    MT_CHECK(std::fabs(2e-4 * lr_multiplier("cosine", s, 3, 10) - cosine[s]) <= 1e-19, "cosine schedule step %d", s);
    MT_CHECK(std::fabs(2e-4 * lr_multiplier("constant", s, 3, 10) - constant[s]) <= 1e-20, "constant schedule step %d", s);
  }
}

// The shard header (docs/engine-protocol.md "Token shards"); each row then appends tokens, targets, positions.
std::string shard_header(int T, int R) {
  std::string bytes = "NXFTSHD1";
  for (uint32_t v : {1u, uint32_t(T), uint32_t(R), 0u}) bytes.append(reinterpret_cast<const char*>(&v), 4);
  return bytes;
}

// A shard of R rows, T=16: each row packs two documents of random tokens (targets = next token in the document).
void write_shard(const std::string& path, int R, int V, uint64_t seed) {
  const int T = 16;
  mt::Rng rng(seed);
  std::string bytes = shard_header(T, R);
  for (int r = 0; r < R; r++) {
    int split = 5 + int(rng.uniform() * 8);
    std::vector<int32_t> tok(T), tg(T), pos(T);
    for (int t = 0; t < T; t++) {
      pos[size_t(t)] = t < split ? t : t - split;
      tok[size_t(t)] = pos[size_t(t)] == 0 ? 1 : 2 + int(rng.uniform() * (V - 2));
    }
    for (int t = 0; t < T; t++) tg[size_t(t)] = (t + 1 < T && pos[size_t(t + 1)] != 0) ? tok[size_t(t + 1)] : -100;
    for (auto* a : {&tok, &tg, &pos}) bytes.append(reinterpret_cast<const char*>(a->data()), size_t(T) * 4);
  }
  write_text(path, bytes);
}

std::string make_model() {
  const std::string dir = g_tmp + "/model";
  make_dirs(dir);
  const std::string cfg = R"({"model_type":"llama","architectures":["LlamaForCausalLM"],"vocab_size":40,"hidden_size":16,
    "intermediate_size":24,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
    "rope_theta":10000.0,"tie_word_embeddings":true,"hidden_act":"silu","torch_dtype":"float32"})";
  write_text(dir + "/config.json", cfg);
  ModelWeights w = ModelWeights::random_init(ModelConfig::from_json(Json::parse(cfg), "config.json"), 5);
  w.save_safetensors(dir + "/model.safetensors", "f32");
  return dir;
}

Json train_job(const std::string& model, const std::string& out) {
  const std::string j = R"({"command":"train","base":")" + model + R"(","train_shards":[")" + g_tmp +
                        R"(/train.tokens.bin"],"eval_shards":[")" + g_tmp + R"(/eval.tokens.bin"],"out":")" + out +
                        R"(","backend":"cpu","threads":2,
      "lora":{"r":4,"alpha":8,"dropout":0.1,"targets":["q_proj","v_proj","o_proj","gate_proj","down_proj"],"rslora":false,"init_adapter":null},
      "quantize_base":null,
      "train":{"seed":3,"lr":5e-3,"schedule":"cosine","warmup_steps":1,"steps":6,"epochs":null,"batch_size":2,"grad_accum":2,
               "optimizer":"adamw","beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.01,"max_grad_norm":1.0,
               "gradient_checkpointing":false,"eval_every":3,"save_every":3,"resume":false,"shuffle":true},
      "base_model_name_or_path":"tiny"})";
  return Json::parse(j, "job");
}

Json& train_of(Json& job) { return const_cast<Json&>(job.at("train")); }

// Runs `train`; returns the losses of the step events in metrics.jsonl ("" on error, with the message in *err).
std::vector<double> run_train(const Json& job, std::string* err = nullptr) {
  const std::string path = g_tmp + "/job.json";
  write_text(path, job.dump());
  CommandFn fn = find_command("train");
  std::vector<double> losses;
  try {
    fn(job, path);
  } catch (const EngineError& e) {
    if (err) *err = e.what();
    return losses;
  }
  std::ifstream f(job.at("out").as_string() + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    Json m = Json::parse(line);
    if (m.at("event").as_string() == "step") losses.push_back(m.at("loss").as_number());
  }
  return losses;
}

std::string file_bytes(const std::string& p) { return path_exists(p) ? read_file(p) : std::string(); }

void test_resume_and_determinism(const std::string& model) {
  const std::string outA = g_tmp + "/outA", outB = g_tmp + "/outB", outC = g_tmp + "/outC";
  Json job = train_job(model, outA);
  auto full = run_train(job);
  MT_CHECK(full.size() == 6, "expected 6 step losses, got %zu", full.size());
  MT_CHECK(full.size() == 6 && full[5] < full[0], "loss did not go down: %g → %g", full.empty() ? 0 : full[0],
           full.empty() ? 0 : full[5]);
  const std::string adapterA = file_bytes(outA + "/adapter_model.safetensors");
  MT_CHECK(!adapterA.empty(), "no adapter written");
  MT_CHECK(path_exists(outA + "/checkpoints/step-3/trainer_state.json"), "no checkpoint at step 3");
  MT_CHECK(path_exists(outA + "/summary.json"), "no summary.json");

  // resume: drop everything after step 3 and continue
  fsys::remove_all(outA + "/checkpoints/step-6");
  fsys::remove(outA + "/adapter_model.safetensors");
  fsys::remove(outA + "/metrics.jsonl");
  const_cast<Json&>(job.at("train")).set("resume", Json::boolean(true));
  auto resumed = run_train(job);
  MT_CHECK(resumed == full, "resumed losses differ from the uninterrupted run");
  MT_CHECK(file_bytes(outA + "/adapter_model.safetensors") == adapterA, "resumed adapter differs from the uninterrupted run");

  // determinism: the same job again, and with 1 thread
  Json jobB = train_job(model, outB);
  auto again = run_train(jobB);
  MT_CHECK(again == full && file_bytes(outB + "/adapter_model.safetensors") == adapterA, "same job gave a different result");
  Json jobC = train_job(model, outC);
  jobC.set("threads", Json::number(1));
  auto one = run_train(jobC);
  MT_CHECK(one == full && file_bytes(outC + "/adapter_model.safetensors") == adapterA, "1 thread differs from 2 threads");
}

// `eval` of the trained adapter over the eval shards reproduces train's final eval loss exactly (same batches).
void test_eval_command(const std::string& model) {
  const std::string out = g_tmp + "/outA";
  Json summary = Json::parse_file(out + "/summary.json");
  const std::string captured = g_tmp + "/eval-events.jsonl";
  Json job = Json::parse(R"({"command":"eval","model":")" + model + R"(","adapter":")" + out + R"(","shards":[")" + g_tmp +
                         R"(/eval.tokens.bin"],"batch_size":2,"backend":"cpu","threads":2})");
  std::fflush(stdout);
  FILE* f = std::freopen(captured.c_str(), "w", stdout);
  (void)f;
  find_command("eval")(job, g_tmp + "/eval-job.json");
  std::fflush(stdout);
  f = std::freopen("/dev/null", "w", stdout);
  std::string text = read_file(captured);
  size_t pos = text.rfind("{\"event\":\"done\"");
  MT_CHECK(pos != std::string::npos, "eval emitted no done event");
  if (pos == std::string::npos) return;
  Json done = Json::parse(text.substr(pos, text.find('\n', pos) - pos));
  const double got = done.at("summary").at("loss").as_number(), want = summary.at("final_eval_loss").as_number();
  MT_CHECK(got == want, "eval command loss %.17g != train's final eval loss %.17g", got, want);
}

void test_grad_accum(const std::string& model) {
  Json a = train_job(model, g_tmp + "/ga1"), b = train_job(model, g_tmp + "/ga2");
  for (Json* j : {&a, &b}) {
    Json& t = train_of(*j);
    t.set("shuffle", Json::boolean(false)).set("save_every", Json::number(0)).set("eval_every", Json::number(0));
    t.set("steps", Json::number(3));
    const_cast<Json&>(j->at("lora")).set("dropout", Json::number(0));
  }
  train_of(a).set("batch_size", Json::number(4)).set("grad_accum", Json::number(1));
  train_of(b).set("batch_size", Json::number(2)).set("grad_accum", Json::number(2));
  auto la = run_train(a), lb = run_train(b);
  MT_CHECK(la.size() == 3 && lb.size() == 3, "grad-accum runs did not finish");
  for (size_t i = 0; i < la.size() && i < lb.size(); i++)
    MT_CHECK(std::fabs(la[i] - lb[i]) <= 1e-5 * std::fabs(la[i]), "step %zu: B4×GA1 loss %.9g vs B2×GA2 %.9g", i + 1, la[i], lb[i]);
}

// gradient checkpointing recomputes layers in backward, "offload" keeps the saved inputs in host memory:
// identical losses and adapter bytes; a bad value names the field; epochs → steps.
void test_checkpointing_and_epochs(const std::string& model) {
  Json a = train_job(model, g_tmp + "/gc0"), b = train_job(model, g_tmp + "/gc1"), c = train_job(model, g_tmp + "/gc2");
  for (Json* j : {&a, &b, &c}) train_of(*j).set("save_every", Json::number(0)).set("eval_every", Json::number(0));
  train_of(b).set("gradient_checkpointing", Json::boolean(true));
  train_of(c).set("gradient_checkpointing", Json::string("offload"));
  auto la = run_train(a), lb = run_train(b), lc = run_train(c);
  MT_CHECK(la.size() == 6 && la == lb, "gradient checkpointing changed the losses");
  MT_CHECK(lc == la, "offloaded gradient checkpointing changed the losses");
  MT_CHECK(file_bytes(g_tmp + "/gc0/adapter_model.safetensors") == file_bytes(g_tmp + "/gc1/adapter_model.safetensors"),
           "gradient checkpointing changed the adapter");
  MT_CHECK(file_bytes(g_tmp + "/gc0/adapter_model.safetensors") == file_bytes(g_tmp + "/gc2/adapter_model.safetensors"),
           "offloaded gradient checkpointing changed the adapter");
  Json bad = train_job(model, g_tmp + "/gc3");
  train_of(bad).set("gradient_checkpointing", Json::string("host"));
  std::string err;
  MT_CHECK(run_train(bad, &err).empty(), "gradient_checkpointing \"host\" should be refused");
  MT_CHECK(err.find("gradient_checkpointing") != std::string::npos && err.find("offload") != std::string::npos,
           "a bad gradient_checkpointing value should name the field and the choices: %s", err.c_str());
  Json e = train_job(model, g_tmp + "/epochs");
  train_of(e).set("steps", Json()).set("epochs", Json::number(1.5)).set("save_every", Json::number(0));
  auto le = run_train(e);   // 12 rows, 2×2 rows per step: ceil(1.5·12/4) = 5 steps
  MT_CHECK(le.size() == 5, "epochs 1.5 over 12 rows at 4 rows/step should run 5 steps, ran %zu", le.size());
}

// QLoRA: the same job with NF4 base weights trains, starts near the fp32 loss and learns.
void test_qlora(const std::string& model) {
  Json a = train_job(model, g_tmp + "/fp32"), b = train_job(model, g_tmp + "/nf4");
  for (Json* j : {&a, &b}) train_of(*j).set("save_every", Json::number(0)).set("eval_every", Json::number(0));
  b.set("quantize_base", Json::string("nf4"));
  auto la = run_train(a), lb = run_train(b);
  MT_CHECK(la.size() == 6 && lb.size() == 6, "qlora runs did not finish");
  if (la.size() == 6 && lb.size() == 6) {
    MT_CHECK(std::fabs(la[0] - lb[0]) < 0.05 * la[0] && la[0] != lb[0], "nf4 first loss %.6g vs fp32 %.6g", lb[0], la[0]);
    MT_CHECK(lb[5] < lb[0], "qlora loss did not go down (%.6g → %.6g)", lb[0], lb[5]);
  }
}

void test_divergence(const std::string& model) {
  // an initial adapter with absurd weights overflows fp32 in the first forward pass
  Json j = train_job(model, g_tmp + "/diverge");
  ModelConfig cfg = ModelConfig::load(model + "/config.json");
  LoraSpec spec;
  spec.r = 4;
  spec.alpha = 8;
  spec.targets = {"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"};
  LoraAdapter huge = LoraAdapter::init(cfg, spec, 1);
  for (LoraPair& p : huge.pairs) {
    for (float& x : p.A) x = 1e18f;
    for (float& x : p.B) x = 1e18f;
  }
  huge.save_peft(g_tmp + "/huge-adapter", "tiny");
  const_cast<Json&>(j.at("lora")).set("init_adapter", Json::string(g_tmp + "/huge-adapter"));
  train_of(j).set("save_every", Json::number(0));
  std::string err;
  auto l = run_train(j, &err);
  MT_CHECK(l.empty() && err.find("step ") != std::string::npos &&
               (err.find("NaN") != std::string::npos || err.find("infinite") != std::string::npos ||
                err.find("not finite") != std::string::npos),
           "diverging run did not stop with a step-naming error (got \"%s\")", err.c_str());
}

// Unpacked rows (the template's default): T=64, one example of 4–29 tokens, then the padding document (pad id 0,
// no targets, positions from 0). Each step's rows are cut after their last target: the same losses and adapter as
// whole rows (NXFT_TRIM_ROWS=0), and the same eval loss, within float rounding of sums over fewer rows, for fewer
// computed tokens.
void write_unpacked_shard(const std::string& path, int R, int V, uint64_t seed) {
  const int T = 64;
  mt::Rng rng(seed);
  std::string bytes = shard_header(T, R);
  for (int r = 0; r < R; r++) {
    const int L = 4 + int(rng.uniform() * 26);
    std::vector<int32_t> tok(T, 0), tg(T, -100), pos(T);
    for (int t = 0; t < T; t++) {
      pos[size_t(t)] = t < L ? t : t - L;
      if (t < L) tok[size_t(t)] = t == 0 ? 1 : 2 + int(rng.uniform() * (V - 2));
    }
    for (int t = 0; t + 1 < L; t++) tg[size_t(t)] = tok[size_t(t + 1)];
    for (auto* a : {&tok, &tg, &pos}) bytes.append(reinterpret_cast<const char*>(a->data()), size_t(T) * 4);
  }
  write_text(path, bytes);
}

void test_trimmed_rows(const std::string& model) {
  {   // the length: last target + 1 over the rows, rounded up to max(16, T/8) 16-aligned, within [granule, T]
    std::vector<int32_t> tg(size_t(2) * 2048, -100);
    MT_CHECK(trimmed_row_length(tg.data(), 2, 2048) == 256, "no targets: one granule (256), got %d",
             trimmed_row_length(tg.data(), 2, 2048));
    tg[1700] = 5;
    MT_CHECK(trimmed_row_length(tg.data(), 2, 2048) == 1792, "last target 1700: 1792, got %d", trimmed_row_length(tg.data(), 2, 2048));
    tg[2048 + 1990] = 5;   // the second row's target decides
    MT_CHECK(trimmed_row_length(tg.data(), 2, 2048) == 2048, "last target 1990 of row 2: 2048, got %d",
             trimmed_row_length(tg.data(), 2, 2048));
    std::vector<int32_t> small(32, -100);
    small[15] = 1;
    MT_CHECK(trimmed_row_length(small.data(), 1, 32) == 16, "T=32, last target 15: 16, got %d", trimmed_row_length(small.data(), 1, 32));
    small[16] = 1;
    MT_CHECK(trimmed_row_length(small.data(), 1, 32) == 32, "T=32, last target 16: 32, got %d", trimmed_row_length(small.data(), 1, 32));
    std::vector<int32_t> odd(100, -100);
    odd[70] = 1;
    MT_CHECK(trimmed_row_length(odd.data(), 1, 100) == 80, "T=100, last target 70: 80 (granules of 16), got %d",
             trimmed_row_length(odd.data(), 1, 100));
  }
  write_unpacked_shard(g_tmp + "/unpacked.tokens.bin", 8, 40, 11);
  int64_t example_tokens = 0;   // Σ over the rows of their example's length (the document before the padding)
  {   // targets_end (what train reserves its buffers by) read from the end in chunks agrees with the whole row
    ShardSet shards({g_tmp + "/unpacked.tokens.bin"}, 40);
    std::vector<int32_t> tok(64), tg(64), pos(64);
    for (int64_t r = 0; r < shards.rows(); r++) {
      shards.read_row(r, tok.data(), tg.data(), pos.data());
      int want = 0;
      for (int t = 0; t < 64; t++)
        if (tg[size_t(t)] != -100) want = t + 1;
      for (int chunk : {1, 5, 16, 64, 100})
        MT_CHECK(shards.targets_end(r, chunk) == want, "row %lld, chunks of %d: targets_end %d, want %d", (long long)r,
                 chunk, shards.targets_end(r, chunk), want);
      int L = 1;
      while (L < 64 && pos[size_t(L)] != 0) L++;
      example_tokens += L;
    }
  }
  {   // the shape each micro-batch runs in: padding-free (one row) when it saves an eighth of the cut rows
    auto is = [](RowsToRun r, int B, int T, bool e2e) { return r.B == B && r.T == T && r.end_to_end == e2e; };
    MT_CHECK(is(rows_to_run({20, 15}, true, 64), 1, 48, true), "ends 20+15 of 64: one row of 48");
    MT_CHECK(is(rows_to_run({64, 60}, true, 64), 2, 64, false), "ends 64, 60: 128 end to end saves nothing: cut rows");
    MT_CHECK(is(rows_to_run({60, 50}, true, 64), 1, 112, true), "ends 60+50: 112 of 128, an eighth saved: end to end");
    MT_CHECK(is(rows_to_run({20, 15}, false, 64), 2, 32, false), "a row starting mid-document: cut rows");
    MT_CHECK(is(rows_to_run({20}, true, 64), 1, 32, false), "one row: cut");
    MT_CHECK(is(rows_to_run({0, 0}, true, 64), 2, 16, false), "no targets: cut to one granule");
    MT_CHECK(is(rows_to_run({9, 0, 30, 0}, true, 2048), 1, 256, true), "rows without targets add nothing");
    setenv("NXFT_PADDING_FREE", "0", 1);
    MT_CHECK(is(rows_to_run({20, 15}, true, 64), 2, 32, false), "NXFT_PADDING_FREE=0: cut rows");
    unsetenv("NXFT_PADDING_FREE");
    setenv("NXFT_TRIM_ROWS", "0", 1);
    MT_CHECK(is(rows_to_run({20, 15}, true, 64), 2, 64, false), "NXFT_TRIM_ROWS=0: whole rows");
    unsetenv("NXFT_TRIM_ROWS");
    // The arrays: row 0's first 9 tokens (a document of 12, cut after its last target), then row 1's first 5 (a
    // document of 3 and the first 2 of the next), then a padding document to 16 (token 0, no target, positions 0…).
    const int T = 32;
    std::vector<int32_t> tok(2 * T), tg(2 * T, -100), pos(2 * T);
    for (int t = 0; t < 2 * T; t++) tok[size_t(t)] = 100 + t;
    for (int t = 0; t < T; t++) pos[size_t(t)] = t < 12 ? t : t - 12;
    for (int t = 0; t < T; t++) pos[size_t(T + t)] = t < 3 ? t : t - 3;
    for (int t = 0; t < 9; t++) tg[size_t(t)] = t;
    for (int t : {0, 1, 4}) tg[size_t(T + t)] = 50 + t;
    const RowsToRun run = cut_rows_after_last_target(&tok, &tg, &pos, 2, T);
    MT_CHECK(run.B == 1 && run.T == 16 && run.end_to_end && tok.size() == 16, "9 + 5 tokens of two rows of 32: one row of 16");
    const std::vector<int32_t> want_tok = {100, 101, 102, 103, 104, 105, 106, 107, 108, 132, 133, 134, 135, 136, 0, 0};
    const std::vector<int32_t> want_tg = {0, 1, 2, 3, 4, 5, 6, 7, 8, 50, 51, -100, -100, 54, -100, -100};
    const std::vector<int32_t> want_pos = {0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 0, 1, 0, 1};
    MT_CHECK(tok == want_tok && tg == want_tg && pos == want_pos, "end-to-end row's tokens, targets or positions differ");
  }
  // Three runs of the same job: padding-free (the default), cut rows (NXFT_PADDING_FREE=0), whole rows
  // (NXFT_TRIM_ROWS=0). The same losses, eval loss and adapter; less work in that order.
  Json a = train_job(model, g_tmp + "/free"), c = train_job(model, g_tmp + "/cut"), b = train_job(model, g_tmp + "/whole");
  for (Json* j : {&a, &c, &b}) {
    Json shards = Json::array();
    shards.push(Json::string(g_tmp + "/unpacked.tokens.bin"));
    j->set("train_shards", shards).set("eval_shards", shards);   // eval batches are cut the same way
    train_of(*j).set("save_every", Json::number(0)).set("eval_every", Json::number(4)).set("steps", Json::number(4));
    const_cast<Json&>(j->at("lora")).set("dropout", Json::number(0));   // masks follow the layout
  }
  auto la = run_train(a);
  setenv("NXFT_PADDING_FREE", "0", 1);
  auto lc = run_train(c);
  unsetenv("NXFT_PADDING_FREE");
  setenv("NXFT_TRIM_ROWS", "0", 1);
  auto lb = run_train(b);
  unsetenv("NXFT_TRIM_ROWS");
  MT_CHECK(la.size() == 4 && lc.size() == 4 && lb.size() == 4, "runs did not finish (%zu, %zu, %zu steps)", la.size(),
           lc.size(), lb.size());
  for (size_t i = 0; i < lb.size(); i++) {
    if (i < la.size())
      MT_CHECK(std::fabs(la[i] - lb[i]) <= 1e-6 * std::fabs(lb[i]), "step %zu: padding-free loss %.9g vs whole rows %.9g", i + 1, la[i], lb[i]);
    if (i < lc.size())
      MT_CHECK(std::fabs(lc[i] - lb[i]) <= 1e-6 * std::fabs(lb[i]), "step %zu: cut rows loss %.9g vs whole rows %.9g", i + 1, lc[i], lb[i]);
  }
  const double eval_whole = Json::parse_file(g_tmp + "/whole/summary.json").at("final_eval_loss").as_number();
  for (const char* run : {"free", "cut"}) {
    const double e = Json::parse_file(g_tmp + "/" + run + "/summary.json").at("final_eval_loss").as_number();
    MT_CHECK(std::fabs(e - eval_whole) <= 1e-6 * std::fabs(eval_whole), "eval loss of the %s run %.9g vs whole rows %.9g",
             run, e, eval_whole);
  }
  const ModelConfig cfg = ModelConfig::load(model + "/config.json");
  const LoraAdapter B = LoraAdapter::load_peft(g_tmp + "/whole", cfg);
  for (const char* run : {"free", "cut"}) {
    const LoraAdapter A = LoraAdapter::load_peft(g_tmp + "/" + run, cfg);
    double worst = 0, scale = 0;
    for (size_t p = 0; p < A.pairs.size() && p < B.pairs.size(); p++)
      for (auto [x, y] : {std::pair{&A.pairs[p].A, &B.pairs[p].A}, std::pair{&A.pairs[p].B, &B.pairs[p].B}})
        for (size_t i = 0; i < x->size() && i < y->size(); i++) {
          worst = std::max(worst, double(std::fabs((*x)[i] - (*y)[i])));
          scale = std::max(scale, double(std::fabs((*y)[i])));
        }
    MT_CHECK(A.pairs.size() == B.pairs.size() && worst <= 1e-5 * scale, "the %s run's adapter differs from whole rows' by %.3g (largest %.3g)",
             run, worst, scale);
  }
  // The work: every step of the cut run computes fewer tokens than its 4 rows × 64, the padding-free run fewer
  // again; the whole-row run all of them.
  auto computed = [&](const std::string& out) {
    std::vector<double> c;
    std::ifstream f(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      Json m = Json::parse(line);
      if (m.at("event").as_string() == "step") c.push_back(m.at("computed_tokens").as_number());
    }
    return c;
  };
  const std::vector<double> free_c = computed(g_tmp + "/free"), cut_c = computed(g_tmp + "/cut");
  for (double x : cut_c) MT_CHECK(x < 256, "a cut step computed %g tokens of 256 row tokens", x);
  MT_CHECK(free_c.size() == 4 && cut_c.size() == 4, "the step events have no computed_tokens");
  double free_sum = 0, cut_sum = 0;
  for (size_t i = 0; i < free_c.size() && i < cut_c.size(); i++) {
    MT_CHECK(free_c[i] <= cut_c[i], "step %zu: padding-free computed %g tokens, cut rows %g", i + 1, free_c[i], cut_c[i]);
    free_sum += free_c[i];
    cut_sum += cut_c[i];
  }
  MT_CHECK(free_sum < cut_sum, "padding-free computed %g tokens in all, no fewer than cut rows' %g", free_sum, cut_sum);
  // data_tokens: the examples without their padding, however rows are laid out. 4 steps of 4 rows = 2 epochs.
  auto data = [&](const std::string& out) {
    double sum = 0;
    std::ifstream f(out + "/metrics.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      Json m = Json::parse(line);
      if (m.at("event").as_string() == "step") sum += m.at("data_tokens").as_number();
    }
    return sum;
  };
  for (const char* run : {"free", "cut", "whole"})
    MT_CHECK(data(g_tmp + "/" + run) == 2.0 * double(example_tokens), "data tokens of the %s run: %g, want %g", run,
             data(g_tmp + "/" + run), 2.0 * double(example_tokens));
  for (double x : computed(g_tmp + "/whole")) MT_CHECK(x == 256, "a whole-row step computed %g tokens, not 256", x);
}

void test_shard_errors() {
  const std::string bad = g_tmp + "/bad.tokens.bin";
  auto expect = [&](const std::string& bytes, const char* needle) {
    write_text(bad, bytes);
    std::string msg;
    try {
      ShardSet s({bad}, 40);
      std::vector<int32_t> a(48);
      for (int64_t r = 0; r < s.rows(); r++) s.read_row(r, a.data(), a.data() + 16, a.data() + 32);
    } catch (const EngineError& e) {
      msg = e.what();
    }
    MT_CHECK(msg.find(bad) != std::string::npos && msg.find(needle) != std::string::npos,
             "shard error should name the file and say \"%s\", got \"%s\"", needle, msg.c_str());
  };
  write_shard(bad, 2, 40, 1);
  const std::string good = read_file(bad);
  expect("NXFTSHD2" + good.substr(8), "magic");
  expect(good.substr(0, good.size() - 4), "does not match header");
  std::string ver = good;
  ver[8] = 2;
  expect(ver, "version");
  std::string tok = good;
  int32_t big = 1000;
  std::memcpy(&tok[24 + 4], &big, 4);
  expect(tok, "outside the vocabulary");
}

}  // namespace

int main() {
  char tmpl[] = "/tmp/nxft-test-train-XXXXXX";
  g_tmp = mkdtemp(tmpl);
  std::freopen("/dev/null", "w", stdout);   // the commands' JSON events are not this test's output
  test_schedules();
  test_shard_errors();
  write_shard(g_tmp + "/train.tokens.bin", 12, 40, 7);
  write_shard(g_tmp + "/eval.tokens.bin", 3, 40, 8);
  const std::string model = make_model();
  test_resume_and_determinism(model);
  test_eval_command(model);
  test_grad_accum(model);
  test_qlora(model);
  test_checkpointing_and_epochs(model);
  test_divergence(model);
  test_trimmed_rows(model);
  std::error_code ec;
  if (!mt::failures()) fsys::remove_all(g_tmp, ec);
  return mt::finish("test_train");
}
