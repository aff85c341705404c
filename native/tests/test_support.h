// test_support.h — what the GGUF test programs add to test_util.h (CHECK_MSG, test_result): a loader for llama.cpp's
// own shared libraries (the prebuilt ones node-llama-cpp ships), the reference they compare our bytes against.
#pragma once
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include "test_util.h"

// dlopen()s `file` from node-llama-cpp's linux-x64 binaries (tests run from the repo root after `npm ci`), or the path
// in the environment variable `env_var`; exits with a FAIL line when it cannot.
inline void* open_llama_cpp_library(const char* env_var, const char* file) {
  const char* env = std::getenv(env_var);
  const std::string lib = env ? env : std::string("node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/") + file;
  void* h = dlopen(lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::fprintf(stderr, "FAIL: cannot dlopen %s: %s (run from the repo root after npm ci, or set %s)\n", lib.c_str(),
                 dlerror(), env_var);
    std::exit(1);
  }
  return h;
}

// Looks up `name` in `h` into the function pointer `f`; exits with a FAIL line when the library lacks it.
template <typename F>
void load_symbol(void* h, F& f, const char* name) {
  f = reinterpret_cast<F>(dlsym(h, name));
  if (!f) {
    std::fprintf(stderr, "FAIL: missing symbol %s\n", name);
    std::exit(1);
  }
}
