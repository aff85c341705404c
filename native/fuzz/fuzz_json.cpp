// fuzz_json.cpp — libFuzzer target for the JSON parser/writer, the config parser and the job reader.
// Build: cmake -S native -B native/build-fuzz -DNXFT_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
// Run:   native/build-fuzz/fuzz_json native/fuzz/corpus/json -max_total_time=300
#include "fuzz_entry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nxft_fuzz::fuzz_json_one(data, size);
  return 0;
}
