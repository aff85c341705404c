// export.h — Hugging Face checkpoint (or PEFT adapter) → GGUF, as llama.cpp's convert_hf_to_gguf.py +
// llama-quantize would produce it (../shared/notes/native.md §2), with no Python and no llama.cpp build.
//
// Architectures: llama (and mistral, which llama.cpp also runs as `llama`), qwen2, gemma.
//   llama:  Q/K rows permuted from HF's rotate-half layout to llama.cpp's interleaved pairs (§2.6);
//           Llama-3.1-style rope scaling becomes the rope_freqs.weight tensor.
//   qwen2:  q/k/v biases; no permutation (NEOX rope).
//   gemma:  every *norm.weight gets +1 baked in (Gemma's RMSNorm is x·(1+w)); no output.weight (tied);
//           no permutation.
// Everything is validated (config, every tensor's presence, dtype and shape, the tokenizer, the preset)
// before the output file is created; tensors then stream from the mmapped safetensors into the file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>
#include "gguf/gguf_writer.h"
#include "util/json.h"

namespace nxft {

class JobReader;

// The `tokenizer` object of an export-gguf job (docs/engine-protocol.md), checked: tokens non-empty, scores and
// token_types (when given) as long as tokens, ids inside the vocabulary, model ∈ {llama, gpt2}, gpt2 needs
// merges. Errors name the job file and the field (tokenizer.scores, …).
struct TokenizerMeta {
  std::string model, pre;
  std::vector<std::string> tokens, merges;
  std::vector<float> scores;
  std::vector<int32_t> token_types;
  int64_t bos_id = -1, eos_id = -1, eot_id = -1, unk_id = -1, pad_id = -1;
  int add_bos = -1, add_eos = -1, add_space_prefix = -1;   // -1 = not given
  std::string chat_template;
  bool has_chat_template = false;

  static TokenizerMeta from_job(JobReader& r);   // r = the job's "tokenizer" sub-reader
  void add_to(GgufWriter& w) const;               // the tokenizer.* keys
};

struct ExportSummary {
  std::string out;
  uint64_t bytes = 0;
  size_t tensors = 0;
  std::map<std::string, int> tensor_types;   // "Q4_K" → count
  std::vector<std::string> warnings;
};

// Merged/base model folder → GGUF. `type` is a preset name (f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k).
ExportSummary export_model_gguf(const std::string& model_dir, const std::string& out, const std::string& type,
                                const TokenizerMeta& tok, const std::string& name, int threads);

// PEFT adapter folder → GGUF LoRA adapter for llama.cpp (§2.9). `type` ∈ f32, f16, bf16, q8_0.
ExportSummary export_adapter_gguf(const std::string& adapter_dir, const std::string& base_config,
                                  const std::string& out, const std::string& type, const std::string& name,
                                  int threads);

// Row order that turns HF rotate-half rows into llama.cpp's interleaved pairs: new row r takes old row
// map[r]. `rows` = n_head·head_dim. (Exposed for tests.)
std::vector<int64_t> llama_qk_row_permutation(int64_t rows, int n_head);

}  // namespace nxft
