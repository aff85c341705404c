// quant4_test.cpp — the NF4 quantizer and the bitsandbytes 4-bit reader (model/quant4.h) on their own: the
// vectorized quantizer equals a plain argmin over |x − code| (bitsandbytes' definition) on awkward blocks and does
// not depend on the thread count; double quantization restores absmax closely; a checkpoint with a bad quant state
// is an error naming the shard and tensor; the CPU backend's double-quantized uploads and the bitsandbytes fixture's
// nested absmax restore exactly. Bit-exactness against bitsandbytes itself: test/parity/test_bnb4bit.py.
#include <cmath>
#include <memory>
#include <optional>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "io/safetensors.h"
#include "model/quant4.h"
#include "test_util.h"
#include "util/fs.h"

using namespace nxft;

// bitsandbytes' torch kernel, element by element: x = clamp(w·(1/absmax), −1, 1), first index of the minimum distance.
static void reference_nf4(const std::vector<float>& w, std::vector<uint8_t>& packed, std::vector<float>& absmax) {
  const size_t n = w.size();
  packed.assign((n + 1) / 2, 0);
  absmax.assign((n + 63) / 64, 0.0f);
  for (size_t b = 0; b < absmax.size(); b++) {
    float m = 0;
    for (size_t i = b * 64; i < std::min(n, b * 64 + 64); i++) m = std::max(m, std::fabs(w[i]));
    absmax[b] = m;
  }
  for (size_t i = 0; i < n + (n % 2); i++) {
    int q = 7;
    if (i < n && absmax[i / 64] > 0) {
      const float x = std::min(1.0f, std::max(-1.0f, w[i] * (1.0f / absmax[i / 64])));
      float best = std::fabs(x - kNF4Code[0]);
      q = 0;
      for (int c = 1; c < 16; c++)
        if (std::fabs(x - kNF4Code[c]) < best) best = std::fabs(x - kNF4Code[c]), q = c;
    }
    packed[i / 2] |= uint8_t((i % 2) ? q : q << 4);
  }
}

int main() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  const size_t n = 64 * 300 + 37;   // a partial, odd last block
  std::vector<float> w(n);
  for (float& x : w) x = normal(rng);
  std::fill(w.begin(), w.begin() + 64, 0.0f);                                                       // zero block
  for (int i = 0; i < 64; i++) w[64 + i] = 0.3f * kNF4Code[i % 16];                                  // on the codes
  for (int i = 0; i < 64; i++) w[128 + i] = 0.25f * (kNF4Code[i % 15] + kNF4Code[i % 15 + 1]);       // midpoints
  w[128 + 5] = 0.5f;
  w[256 + 3] = -30.0f;                                                                                // outlier
  std::vector<uint8_t> want_packed;
  std::vector<float> want_absmax;
  reference_nf4(w, want_packed, want_absmax);
  for (int threads : {1, 2, 3}) {
    std::vector<uint8_t> packed((n + 1) / 2, 0xAA);
    std::vector<float> absmax((n + 63) / 64, -1.0f);
    quantize_nf4(w.data(), n, packed.data(), absmax.data(), threads);
    CHECK_MSG(packed == want_packed, "threads %d: codes differ from the argmin reference", threads);
    CHECK_MSG(std::memcmp(absmax.data(), want_absmax.data(), absmax.size() * 4) == 0, "threads %d: absmax differ", threads);
  }

  // double quantization: the map is bitsandbytes' (256 sorted values from −1 to 1, 0 included); restored absmax
  // within the 8-bit dynamic code's resolution of the block range
  const std::vector<float>& map = dynamic_map_signed();
  CHECK(map.size() == 256 && map.front() < -0.99f && map.back() == 1.0f && std::is_sorted(map.begin(), map.end()));
  CHECK(std::count(map.begin(), map.end(), 0.0f) == 1);
  NestedAbsmax nested = double_quantize(want_absmax.data(), want_absmax.size(), 2);
  CHECK(nested.q.size() == want_absmax.size() && nested.absmax2.size() == (want_absmax.size() + 255) / 256);
  std::vector<float> restored(want_absmax.size());
  double_dequantize(nested, restored.data());
  for (size_t i = 0; i < restored.size(); i++)
    CHECK_MSG(std::fabs(restored[i] - want_absmax[i]) <= 0.02f * nested.absmax2[i / 256] + 1e-7f, "absmax %zu: %g vs %g", i,
              double(restored[i]), double(want_absmax[i]));

  // the offset is the mean of the absmax: within one fp32 ulp of the exact mean (long double over few values)
  {
    long double exact = 0;
    for (float a : want_absmax) exact += a;
    exact /= (long double)want_absmax.size();
    const float ulp = std::nextafter(nested.offset, INFINITY) - nested.offset;
    CHECK_MSG(std::fabs((long double)nested.offset - exact) <= ulp, "offset %.9g vs exact mean %.12Lg", double(nested.offset), exact);
  }

  // Backends that keep fp32 absmax (the CPU) expand a nested absmax with double_dequantize's arithmetic:
  // upload_nf4(…, double_quant) = quantize_nf4 + double_quantize + double_dequantize, byte for byte.
  {
    std::unique_ptr<Backend> cpu = make_cpu_backend(2);
    const int rows = 40, cols = 64 * 20;   // 800 blocks: a partial last nested block
    std::vector<float> wq(size_t(rows) * cols);
    std::mt19937 g2(11);
    std::normal_distribution<float> nd(0.0f, 0.03f);
    for (float& x : wq) x = nd(g2);
    std::vector<uint8_t> codes(wq.size() / 2);
    std::vector<float> am(wq.size() / 64), restored_am(am.size());
    quantize_nf4(wq.data(), wq.size(), codes.data(), am.data(), 1);
    double_dequantize(double_quantize(am.data(), am.size(), 1), restored_am.data());
    Tensor t = cpu->upload_nf4(wq.data(), rows, cols, true);
    CHECK(t.quant == Quant::NF4 && t.scales2 == nullptr);
    CHECK(std::memcmp(t.ptr, codes.data(), codes.size()) == 0);
    CHECK(std::memcmp(t.scales, restored_am.data(), restored_am.size() * 4) == 0);
    cpu->free(t);
  }

  // The bitsandbytes fixture (nf4, double quantization, saved by bitsandbytes): its nested_quant_map is bit for bit
  // dynamic_map_signed() (so the CUDA backend keeps its weights nested, using its own map), and upload_4bit_nested
  // restores exactly the absmax the reader computes with bitsandbytes' arithmetic.
  {
    auto fx = SafetensorsModel::open_dir("test/fixtures/bnb-nf4-tiny");
    std::unique_ptr<Backend> cpu = make_cpu_backend(1);
    int nested_weights = 0;
    for (const std::string& name : fx->names()) {
      std::optional<Bnb4bitWeight> q = bnb_4bit_weight(*fx, name);
      if (!q) continue;
      CHECK(q->nested && q->blocksize == 64 && q->nested_blocksize == 256);
      CHECK_MSG(q->nested_map_is_dynamic, "%s: nested_quant_map differs from dynamic_map_signed()", name.c_str());
      const int rows = int(q->shape[0]), cols = int(q->shape[1]);
      Tensor t = cpu->upload_4bit_nested(q->packed, q->absmax_q, q->nested_absmax, q->nested_offset, Quant::NF4, rows, cols);
      const std::vector<float> want = bnb_absmax_per64(*q);
      CHECK_MSG(std::memcmp(t.scales, want.data(), want.size() * 4) == 0, "%s: restored absmax differ", name.c_str());
      cpu->free(t);
      nested_weights++;
    }
    CHECK_MSG(nested_weights == 14, "%d quantized weights in the fixture (2 layers × 7)", nested_weights);
  }

  // a checkpoint whose quant state does not match its packed weight: an error naming the shard and the tensor
  const std::string dir = test_tmp_dir("quant4_test");
  const std::string json = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [8, 64]}";
  std::vector<uint8_t> packed(100, 0x77), state(json.begin(), json.end());
  std::vector<float> absmax(8, 1.0f);
  std::vector<TensorToWrite> t(4);
  t[0] = {"w.weight", DType::U8, {100, 1}, packed.data(), nullptr};   // 8·64 values need 256 bytes
  t[1] = {"w.weight.absmax", DType::F32, {8}, absmax.data(), nullptr};
  t[2] = {"w.weight.quant_map", DType::F32, {16}, kNF4Code, nullptr};
  t[3] = {"w.weight.quant_state.bitsandbytes__nf4", DType::U8, {int64_t(state.size())}, state.data(), nullptr};
  write_safetensors(path_join(dir, "model.safetensors"), t);
  auto st = SafetensorsModel::open_dir(dir);
  CHECK(!bnb_4bit_weight(*st, "w.weight.absmax"));   // not a quantized weight of its own
  EXPECT_THROW(EngineError, [&] { bnb_4bit_weight(*st, "w.weight"); }, "model.safetensors: w.weight: 100 bytes, expected 256");
  CHECK(is_bnb_aux_tensor("w.weight.quant_state.bitsandbytes__fp4") && is_bnb_aux_tensor("w.weight.nested_absmax") &&
        !is_bnb_aux_tensor("w.weight"));
  return test_result("quant4_test");
}
