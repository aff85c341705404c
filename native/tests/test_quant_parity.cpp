// test_quant_parity — our ggml quantizers produce the same bytes as llama.cpp's own.
//
// node-llama-cpp ships llama.cpp's ggml as shared libraries; libggml-base.so exports ggml_quantize_chunk,
// which is what llama-quantize calls per tensor (with no importance matrix it runs the reference
// quantizers). We dlopen it, quantize the same random rows with both, and require identical bytes for
// Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, F16 and BF16. We also dequantize with ggml and with ours
// (must agree exactly) and check the reconstruction error against per-type bounds.
//
// Run from the repository root (ctest does). NXFT_GGML_BASE overrides the library path.
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gguf/quants.h"
#include "test_support.h"

using namespace nxft;

typedef size_t (*quantize_chunk_fn)(int type, const float* src, void* dst, int64_t start, int64_t nrows,
                                    int64_t n_per_row, const float* imatrix);
typedef void (*quantize_init_fn)(int type);
typedef const void* (*get_type_traits_fn)(int type);


// Rows that exercise the quantizers' corner cases: gaussian, uniform, heavy outliers, all-positive,
// all-negative, constant, zero blocks, tiny magnitudes (fp16 subnormal scales), mixed scales per block.
static std::vector<float> make_rows(int kind, int64_t n, std::mt19937& rng) {
  std::vector<float> x(size_t(n), 0.0f);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < n; i++) {
    switch (kind) {
      case 0: x[i] = g(rng) * 0.02f; break;
      case 1: x[i] = u(rng); break;
      case 2: x[i] = g(rng) * 0.05f * ((rng() % 97 == 0) ? 40.0f : 1.0f); break;
      case 3: x[i] = std::fabs(g(rng)) + 0.1f; break;
      case 4: x[i] = -std::fabs(g(rng)) * 3.0f; break;
      case 5: x[i] = 0.125f; break;
      case 6: x[i] = (i / 256) % 2 == 0 ? 0.0f : g(rng); break;
      case 7: x[i] = g(rng) * 1e-6f; break;
      case 8: x[i] = g(rng) * std::pow(10.0f, float(int(i / 32) % 5) - 2.0f); break;
      case 9: x[i] = float(int(rng() % 7) - 3) * 0.25f; break;  // few distinct values: many rounding ties
    }
  }
  return x;
}

int main() {
  void* h = open_llama_cpp_library("NXFT_GGML_BASE", "libggml-base.so");
  quantize_chunk_fn quantize_chunk;
  quantize_init_fn quantize_init;
  load_symbol(h, quantize_chunk, "ggml_quantize_chunk");
  load_symbol(h, quantize_init, "ggml_quantize_init");
  struct Deq { GgmlType t; const char* sym; };
  const Deq deqs[] = {{GgmlType::Q8_0, "dequantize_row_q8_0"}, {GgmlType::Q4_0, "dequantize_row_q4_0"},
                      {GgmlType::Q5_0, "dequantize_row_q5_0"}, {GgmlType::Q5_1, "dequantize_row_q5_1"},
                      {GgmlType::Q4_K, "dequantize_row_q4_K"}, {GgmlType::Q5_K, "dequantize_row_q5_K"},
                      {GgmlType::Q6_K, "dequantize_row_q6_K"}};
  // RMS reconstruction error bound relative to the row's RMS, for gaussian rows (kind 0). Loose enough
  // for any correct quantizer of that bit width, tight enough to catch a wrong scale or packing.
  auto rms_bound = [](GgmlType t) {
    switch (t) {
      case GgmlType::Q8_0: return 0.01;
      case GgmlType::Q6_K: return 0.03;
      case GgmlType::Q5_K: case GgmlType::Q5_0: case GgmlType::Q5_1: return 0.06;
      default: return 0.12;  // 4-bit
    }
  };

  const GgmlType types[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K,
                            GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::BF16};
  const int64_t n_per_row = 512, nrows = 32;
  int compared_blocks = 0;
  // Twice: with the SIMD fast paths (AVX2 K-quant fits, F16C) where the CPU has them, then the scalar code.
  for (int pass = 0; pass < 2; pass++) {
  quants_force_scalar(pass == 1);
  std::mt19937 rng(1234);
  for (GgmlType t : types) {
    quantize_init(int(t));
    for (int kind = 0; kind < 10; kind++) {
      std::vector<float> x = make_rows(kind, n_per_row * nrows, rng);
      size_t row_bytes = ggml_row_bytes(t, n_per_row);
      std::vector<uint8_t> ours(row_bytes * nrows), theirs(row_bytes * nrows, 0xAB);
      for (int64_t r = 0; r < nrows; r++) encode_row(t, x.data() + r * n_per_row, ours.data() + r * row_bytes, n_per_row);
      size_t got = quantize_chunk(int(t), x.data(), theirs.data(), 0, nrows, n_per_row, nullptr);
      CHECK_MSG(got == ours.size(), "%s: ggml wrote %zu bytes, we %zu", ggml_type_name(t), got, ours.size());
      size_t bb = ggml_block_bytes(t);
      int bad = 0;
      for (size_t b = 0; b < ours.size() / bb; b++) {
        compared_blocks++;
        if (std::memcmp(ours.data() + b * bb, theirs.data() + b * bb, bb) != 0) {
          if (bad++ == 0) {
            size_t o = 0;
            while (ours[b * bb + o] == theirs[b * bb + o]) o++;
            CHECK_MSG(false, "%s kind %d: block %zu differs first at byte %zu (ours %02x, ggml %02x)", ggml_type_name(t),
                  kind, b, o, ours[b * bb + o], theirs[b * bb + o]);
          }
        }
      }
      if (bad > 1) CHECK_MSG(false, "%s kind %d: %d blocks differ in all", ggml_type_name(t), kind, bad);

      if (!ggml_is_quantized(t)) continue;
      // dequantize with both: identical floats
      const char* sym = nullptr;
      for (const Deq& d : deqs) if (d.t == t) sym = d.sym;
      auto deq = (void (*)(const void*, float*, int64_t))dlsym(h, sym);
      CHECK_MSG(deq != nullptr, "missing %s", sym);
      std::vector<float> y_ours(x.size()), y_theirs(x.size());
      decode_row(t, ours.data(), y_ours.data(), int64_t(x.size()));
      if (deq) deq(ours.data(), y_theirs.data(), int64_t(x.size()));
      CHECK_MSG(std::memcmp(y_ours.data(), y_theirs.data(), x.size() * 4) == 0, "%s kind %d: dequantized values differ",
            ggml_type_name(t), kind);
      // error bounds
      double se = 0, sx = 0, max_q8_excess = 0;
      for (size_t i = 0; i < x.size(); i++) {
        double e = double(y_ours[i]) - x[i];
        se += e * e;
        sx += double(x[i]) * x[i];
      }
      if (t == GgmlType::Q8_0) {
        // per element: |err| <= d/2 + 127·|d_f16 − d|, and fp16 rounding moves d by at most
        // max(d·2^-11, 2^-25) (half an ulp; 2^-25 in the subnormal range)
        for (size_t b = 0; b < x.size() / 32; b++) {
          float amax = 0;
          for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[b * 32 + j]));
          double d = amax / 127.0;
          double bound = d * 0.5 + 127.0 * std::max(d / 2048.0, std::ldexp(1.0, -25)) + 1e-12;
          for (int j = 0; j < 32; j++) max_q8_excess = std::max(max_q8_excess, std::fabs(double(y_ours[b * 32 + j]) - x[b * 32 + j]) - bound);
        }
        CHECK_MSG(max_q8_excess <= 0, "Q8_0 kind %d: element error exceeds d/2 bound by %g", kind, max_q8_excess);
      }
      if (kind == 0) {
        double rel = std::sqrt(se / sx);
        if (pass == 0) std::printf("%-5s gaussian rows: relative RMS error %.4f (bound %.2f)\n", ggml_type_name(t), rel, rms_bound(t));
        CHECK_MSG(rel < rms_bound(t), "%s: relative RMS error %.4f over bound", ggml_type_name(t), rel);
      }
      if (kind == 5 || kind == 9) {  // exactly representable-ish data must come back close
        double rel = std::sqrt(se / sx);
        CHECK_MSG(rel < rms_bound(t), "%s kind %d: relative RMS error %.4f", ggml_type_name(t), kind, rel);
      }
    }
  }
  }  // pass
  std::printf("compared %d blocks against llama.cpp's libggml-base\n", compared_blocks);
  return test_result("test_quant_parity");
}
