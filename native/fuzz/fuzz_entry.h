// fuzz_entry.h — the parse entry points exercised by the fuzzers (fuzz_json.cpp, fuzz_safetensors.cpp) and by the
// corpus replay test (tests/fuzz_corpus_replay.cpp), so a crash found by fuzzing is re-checked in every build.
// Contract: bad input may only throw JsonError or EngineError; any other exception, a crash, a sanitizer report,
// or a broken invariant (abort()) is a bug.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"
#include "util/events.h"
#include "util/job.h"
#include "util/json.h"

namespace nxft_fuzz {

inline void fuzz_check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz invariant broken: %s\n", what);
    std::abort();
  }
}

// JSON: parse; if accepted, the compact and indented dumps must parse back to the same compact dump.
// Accepted objects are also fed to the config parser and the job reader (errors are fine, crashes are not).
inline void fuzz_json_one(const uint8_t* data, size_t size) {
  std::string text((const char*)data, size);
  nxft::Json j;
  try {
    j = nxft::Json::parse(text, "fuzz.json");
  } catch (const nxft::JsonError&) {
    return;
  }
  std::string compact = j.dump();
  std::string pretty = j.dump(2);
  nxft::Json back = nxft::Json::parse(compact, "roundtrip");
  fuzz_check(back.dump() == compact, "json compact dump does not round-trip");
  fuzz_check(nxft::Json::parse(pretty, "roundtrip2").dump() == compact, "json indented dump does not round-trip");
  if (!j.is_object()) return;
  try {
    nxft::ModelConfig c = nxft::ModelConfig::from_json(j, "fuzz/config.json");
    std::vector<double> f = c.rope_inv_freq();
    std::vector<float> g = c.rope_inv_freq_f32();
    fuzz_check(f.size() == size_t(c.head_dim / 2) && g.size() == f.size(), "rope size");
    (void)c.num_params();
  } catch (const nxft::EngineError&) {
  } catch (const nxft::JsonError&) {
  }
  try {
    nxft::JobReader r(j, "/fuzz/job.json");
    (void)r.num("lr", 1.0);
    (void)r.integer("steps", 0);
    (void)r.str_list("targets", {});
    (void)r.opt_path("base");
    std::unique_ptr<nxft::JobReader> sub;
    if (r.opt_sub("train", &sub)) { (void)sub->boolean("shuffle", true); sub->finish(); }
    r.finish();
  } catch (const nxft::EngineError&) {
  }
}

// safetensors: parse and validate; if accepted, every tensor must lie inside the buffer, tile it exactly, and
// small float tensors must convert.
inline void fuzz_safetensors_one(const uint8_t* data, size_t size) {
  std::unique_ptr<nxft::SafetensorsFile> f;
  try {
    f = nxft::SafetensorsFile::from_buffer(data, size, "fuzz.safetensors");
  } catch (const nxft::EngineError&) {
    return;
  }
  uint64_t covered = 0;
  for (const auto& t : f->tensors()) {
    fuzz_check(t.data >= data && t.data + t.nbytes <= data + size, "tensor outside the buffer");
    fuzz_check(uint64_t(t.numel()) * nxft::dtype_size(t.dtype) == t.nbytes, "tensor size mismatch");
    fuzz_check(f->find(t.name) == &t, "find() does not return the tensor");
    covered += t.nbytes;
    if ((t.dtype == nxft::DType::F32 || t.dtype == nxft::DType::F16 || t.dtype == nxft::DType::BF16 ||
         t.dtype == nxft::DType::F64) && t.numel() <= 4096) {
      std::vector<float> v(size_t(t.numel()));
      nxft::convert_to_f32(t.data, t.dtype, v.data(), v.size());
    }
  }
  uint64_t header = 0;
  for (int i = 7; i >= 0; i--) header = (header << 8) | data[i];
  fuzz_check(8 + header + covered == size, "tensors do not tile the byte buffer");
}

}  // namespace nxft_fuzz
