// fuzz_corpus_replay.cpp — replays every file of native/fuzz/corpus/{json,safetensors} through the same entry
// points as the libFuzzer targets (fuzz/fuzz_entry.h), in the plain g++ build, so inputs the fuzzers found
// (and the seeds) stay covered in CI without clang. A crash or broken invariant aborts the test.
#include <dirent.h>
#include <algorithm>
#include <string>
#include <vector>
#include "../fuzz/fuzz_entry.h"
#include "test_util.h"
#include "util/fs.h"

static std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') out.push_back(dir + "/" + e->d_name);
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

int main() {
  auto json_files = list_dir("native/fuzz/corpus/json");
  auto st_files = list_dir("native/fuzz/corpus/safetensors");
  CHECK_MSG(json_files.size() >= 10, "json corpus has %zu files", json_files.size());
  CHECK_MSG(st_files.size() >= 10, "safetensors corpus has %zu files", st_files.size());
  for (const auto& f : json_files) {
    std::string bytes = nxft::read_file(f);
    nxft_fuzz::fuzz_json_one((const uint8_t*)bytes.data(), bytes.size());
  }
  int accepted = 0;
  for (const auto& f : st_files) {
    std::string bytes = nxft::read_file(f);
    nxft_fuzz::fuzz_safetensors_one((const uint8_t*)bytes.data(), bytes.size());
    try {
      nxft::SafetensorsFile::from_buffer((const uint8_t*)bytes.data(), bytes.size(), f);
      accepted++;
    } catch (const nxft::EngineError&) {
    }
  }
  std::fprintf(stderr, "replayed %zu json and %zu safetensors inputs (%d safetensors accepted)\n", json_files.size(),
               st_files.size(), accepted);
  CHECK(accepted > 0 && accepted < int(st_files.size()));  // the seeds hold both valid and malformed files
  return test_result("fuzz_corpus_replay");
}
