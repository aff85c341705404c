// checkpoint.cpp — see checkpoint.h.
#include "train/checkpoint.h"
#include <unistd.h>
#include <cstring>
#include <filesystem>
#include "io/safetensors.h"
#include "util/events.h"
#include "util/fs.h"

namespace nxft {

namespace fsys = std::filesystem;

std::string save_checkpoint(const std::string& root, const LoraAdapter& adapter, const std::string& base_name,
                            const std::vector<float>& adam_m, const std::vector<float>& adam_v, const TrainerState& st) {
  make_dirs(root);
  const std::string name = "step-" + std::to_string(st.step);
  const std::string final_dir = path_join(root, name);
  const std::string tmp = path_join(root, "." + name + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fsys::remove_all(tmp, ec);
  make_dirs(tmp);
  adapter.save_peft(tmp, base_name);
  std::vector<TensorToWrite> tensors(2);
  tensors[0].name = "adam_m";
  tensors[0].dtype = DType::F32;
  tensors[0].shape = {int64_t(adam_m.size())};
  tensors[0].data = adam_m.data();
  tensors[1].name = "adam_v";
  tensors[1].dtype = DType::F32;
  tensors[1].shape = {int64_t(adam_v.size())};
  tensors[1].data = adam_v.data();
  write_safetensors(path_join(tmp, "optimizer.safetensors"), tensors);
  Json metrics = Json::array();
  for (const std::string& line : st.metrics) metrics.push(Json::parse(line, "metrics"));
  Json j = Json::object()
               .set("step", Json::number(double(st.step)))
               .set("total_steps", Json::number(double(st.total_steps)))
               .set("n_params", Json::number(double(st.n_params)))
               .set("rows_consumed", Json::number(double(st.rows_consumed)))
               .set("fingerprint", Json::string(st.fingerprint))
               .set("metrics", metrics);
  write_file_atomic(path_join(tmp, "trainer_state.json"), j.dump(1) + "\n");
  fsys::remove_all(final_dir, ec);
  fsys::rename(tmp, final_dir, ec);
  if (ec) throw EngineError("cannot move checkpoint into place: " + final_dir + ": " + ec.message(), final_dir);
  return final_dir;
}

std::string find_latest_checkpoint(const std::string& root) {
  std::error_code ec;
  if (!fsys::is_directory(root, ec)) return "";
  int64_t best = -1;
  std::string best_dir;
  for (const auto& e : fsys::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) != 0) continue;
    char* end = nullptr;
    const long long s = std::strtoll(n.c_str() + 5, &end, 10);
    if (!end || *end != '\0' || s < 0) continue;
    if (!path_exists(path_join(e.path().string(), "trainer_state.json"))) continue;
    if (s > best) best = s, best_dir = e.path().string();
  }
  return best_dir;
}

void load_checkpoint(const std::string& dir, const ModelConfig& cfg, LoraAdapter* adapter, std::vector<float>* adam_m,
                     std::vector<float>* adam_v, TrainerState* st) {
  const std::string state_path = path_join(dir, "trainer_state.json");
  Json j = Json::parse_file(state_path);
  try {
    st->step = j.at("step").as_int();
    st->total_steps = j.at("total_steps").as_int();
    st->n_params = j.at("n_params").as_int();
    st->rows_consumed = j.at("rows_consumed").as_int();
    st->fingerprint = j.at("fingerprint").as_string();
    st->metrics.clear();
    for (const Json& m : j.at("metrics").as_array()) st->metrics.push_back(m.dump());
  } catch (const JsonError& e) {
    throw EngineError(state_path + ": " + e.what(), state_path);
  }
  *adapter = LoraAdapter::load_peft(dir, cfg);
  const std::string opt_path = path_join(dir, "optimizer.safetensors");
  auto f = SafetensorsFile::open(opt_path);
  for (auto [name, vec] : {std::pair<const char*, std::vector<float>*>{"adam_m", adam_m}, {"adam_v", adam_v}}) {
    const TensorView* t = f->find(name);
    if (!t || t->dtype != DType::F32 || t->numel() != st->n_params)
      throw EngineError(opt_path + ": missing or mis-sized tensor " + name + " (expected F32[" + std::to_string(st->n_params) + "])",
                        opt_path);
    vec->resize(size_t(st->n_params));
    std::memcpy(vec->data(), t->data, vec->size() * sizeof(float));
  }
}

}  // namespace nxft
