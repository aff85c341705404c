// gguf-export-llama-quantize.cpp — the reference point for bench/gguf-export.ts: runs llama.cpp's own
// llama_model_quantize (what the llama-quantize tool runs) from node-llama-cpp's libllama on a GGUF.
//   g++ -O2 -std=c++17 bench/gguf-export-llama-quantize.cpp -o /tmp/llq -ldl
//   /tmp/llq <libllama.so> <in.gguf> <out.gguf> <llama_ftype> <threads>
// Only nthread and ftype (the first two fields of llama_model_quantize_params) are set; the rest are
// llama_model_quantize_default_params().
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

struct QuantizeParams {
  int nthread;
  int ftype;
  unsigned char rest[512];
};

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s <libllama.so> <in.gguf> <out.gguf> <llama_ftype> <threads>\n", argv[0]);
    return 2;
  }
  void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::fprintf(stderr, "cannot dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  auto defaults = (QuantizeParams(*)())dlsym(h, "llama_model_quantize_default_params");
  auto quantize = (unsigned (*)(const char*, const char*, const QuantizeParams*))dlsym(h, "llama_model_quantize");
  if (!defaults || !quantize) {
    std::fprintf(stderr, "%s lacks llama_model_quantize\n", argv[1]);
    return 1;
  }
  QuantizeParams p = defaults();
  p.ftype = std::atoi(argv[4]);
  p.nthread = std::atoi(argv[5]);
  return quantize(argv[2], argv[3], &p) == 0 ? 0 : 1;
}
