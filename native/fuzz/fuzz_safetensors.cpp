// fuzz_safetensors.cpp — libFuzzer target for the safetensors header/offset validation.
// Build: cmake -S native -B native/build-fuzz -DNXFT_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++
// Run:   native/build-fuzz/fuzz_safetensors native/fuzz/corpus/safetensors -max_total_time=300
#include "fuzz_entry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nxft_fuzz::fuzz_safetensors_one(data, size);
  return 0;
}
