// inference_model.h — what `eval` and `generate` both set up: a backend, the transformer for a config and,
// optionally, a PEFT adapter applied unmerged; plus the fields every command's `start` event carries.
#pragma once
#include <algorithm>
#include <memory>
#include <string>
#include "backend/backend.h"
#include "model/lora.h"
#include "model/transformer.h"
#include "util/json.h"

namespace nxft {

struct InferenceModel {
  std::unique_ptr<LoraAdapter> adapter;   // null without an adapter
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;     // declared last: destroyed before the backend it runs on
};

// Weights are not loaded yet: the caller streams them in with model->load_weights(dir, …) after its `start` event.
// An adapter with trainable tokens beyond the base's vocabulary grows it, and so does `vocab_size` (the job field
// of eval and generate: a base measured with the tokens a tuned model added; new rows are the mean of the base's):
// `cfg` comes back with the model's vocab_size (token ids and logits cover the added tokens).
inline InferenceModel make_inference_model(ModelConfig& cfg, const std::string& adapter_dir,
                                           const std::string& backend_name, int threads, int vocab_size = 0) {
  InferenceModel m;
  TransformerOptions opt;
  opt.checkpoint_vocab_size = cfg.vocab_size;
  if (!adapter_dir.empty()) {
    m.adapter = std::make_unique<LoraAdapter>(LoraAdapter::load_peft(adapter_dir, cfg));
    cfg = with_adapter_vocab(cfg, m.adapter->spec);
  }
  cfg.vocab_size = std::max(cfg.vocab_size, vocab_size);
  m.backend = make_backend(backend_name, threads);
  m.model = std::make_unique<Transformer>(*m.backend, cfg, m.adapter ? &m.adapter->spec : nullptr, opt);
  if (m.adapter) m.model->set_lora(*m.adapter);
  return m;
}

// {"command", "backend", "threads", "device"} — extend with command-specific fields before emitting.
inline Json start_event_fields(const std::string& command, const Backend& be) {
  Json f = Json::object();
  f.set("command", Json::string(command))
      .set("backend", Json::string(be.name()))
      .set("threads", Json::number(be.threads()))
      .set("device", Json::string(be.device()));
  return f;
}

}  // namespace nxft
