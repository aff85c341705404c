// quant4.cpp — see quant4.h.
#include "model/quant4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/safetensors.h"
#include "util/events.h"
#include "util/fs.h"
#include "util/parallel.h"

namespace nxft {

const float kNF4Code[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                            -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                            0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                            0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
// fp32 divisions, as bitsandbytes' data.div_(data.abs().max()) computes them.
const float kFP4Code[16] = {0.0f,          0.0625f / 12.0f,  8.0f / 12.0f,  12.0f / 12.0f,
                            4.0f / 12.0f,  6.0f / 12.0f,     2.0f / 12.0f,  3.0f / 12.0f,
                            -0.0f,         -0.0625f / 12.0f, -8.0f / 12.0f, -12.0f / 12.0f,
                            -4.0f / 12.0f, -6.0f / 12.0f,    -2.0f / 12.0f, -3.0f / 12.0f};

// ---- quantize_base "nf4" ----------------------------------------------------------------------------------

// One block (n ≤ 64 values) of quantize_4bit: absmax = max |w|, then each code = the nearest NF4 value to
// w·(1/absmax), the first on a tie — torch.argmin over |x − code| in fp32, as bitsandbytes computes it. Written so that
// the compiler vectorizes it (code by code over the block, branch-free) and compiled twice (generic, AVX2).
// bitsandbytes clamps x to [−1, 1] first; x can only leave it by an ulp (|w| ≤ absmax), where ±1 stays the nearest
// code either way, so the clamp is left out.
static inline __attribute__((always_inline)) float nf4_block(const float* w, int n, uint8_t* q) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}, amax = 0.0f;
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      const float v = std::fabs(w[i + k]);
      lane[k] = v > lane[k] ? v : lane[k];
    }
  for (; i < n; i++) amax = std::max(amax, std::fabs(w[i]));
  for (int k = 0; k < 8; k++) amax = std::max(amax, lane[k]);
  if (amax == 0.0f) {   // a zero block is code 7 = 0.0 (bitsandbytes: 0·(1/0) = NaN; any code gives ±0 there)
    std::memset(q, 7, size_t(n));
    return amax;
  }
  const float inv = 1.0f / amax;   // bitsandbytes multiplies by the reciprocal: A·(1/absmax)
  float x[64], best_d[64];
  int32_t best[64];
  for (int j = 0; j < n; j++) {
    x[j] = w[j] * inv;
    best_d[j] = std::fabs(x[j] - kNF4Code[0]);
    best[j] = 0;
  }
  for (int c = 1; c < 16; c++) {
    const float code = kNF4Code[c];
    for (int j = 0; j < n; j++) {   // branch-free: the choice is data-dependent and would mispredict
      const float d = std::fabs(x[j] - code);
      const int32_t closer = -int32_t(d < best_d[j]);   // all ones when strictly closer
      best[j] = (best[j] & ~closer) | (c & closer);
      best_d[j] = std::min(d, best_d[j]);
    }
  }
  for (int j = 0; j < n; j++) q[j] = uint8_t(best[j]);
  return amax;
}
static float nf4_block_generic(const float* w, int n, uint8_t* q) { return nf4_block(w, n, q); }
__attribute__((target("avx2"))) static float nf4_block_avx2(const float* w, int n, uint8_t* q) { return nf4_block(w, n, q); }

void quantize_nf4(const float* w, size_t n, uint8_t* packed, float* absmax, int threads) {
  const size_t nblocks = (n + 63) / 64;
  const auto block = __builtin_cpu_supports("avx2") ? nf4_block_avx2 : nf4_block_generic;
  // Work items of 256 blocks (16K elements): each writes whole bytes of `packed` (64 is even), so no two
  // threads touch the same byte.
  const size_t per_item = 256;
  parallel_for((nblocks + per_item - 1) / per_item, [&](size_t item) {
    const size_t b_end = std::min(nblocks, (item + 1) * per_item);
    uint8_t q[64];
    for (size_t b = item * per_item; b < b_end; b++) {
      const size_t i0 = b * 64;
      const int m = int(std::min<size_t>(64, n - i0));
      absmax[b] = block(w + i0, m, q);
      if (m % 2) q[m] = 7;   // the pad element of an odd tail
      for (int k = 0; k < m; k += 2) packed[(i0 + size_t(k)) >> 1] = uint8_t((q[k] << 4) | q[k + 1]);
    }
  }, threads);
}

const std::vector<float>& dynamic_map_signed() {
  // For exponent i = 0..6: the midpoints of linspace(0.1, 1, 2^i + 1) (torch fp32: start + step·k with one rounding,
  // from the upper end in the upper half) scaled by ±10^(i−6) in fp32; then 0 and 1; 254 + 2 = 256 values, sorted.
  static const std::vector<float> map = [] {
    std::vector<float> v;
    for (int i = 0; i < 7; i++) {
      const int n = (1 << i) + 1;
      const float start = 0.1f, end = 1.0f, step = (end - start) / float(n - 1);
      std::vector<float> b(static_cast<size_t>(n));
      for (int k = 0; k < n; k++) b[size_t(k)] = k < n / 2 ? std::fma(step, float(k), start) : std::fma(-step, float(n - k - 1), end);
      const float scale = float(std::pow(10.0, double(i - 6)));
      for (int k = 0; k + 1 < n; k++) {
        const float mean = (b[size_t(k)] + b[size_t(k + 1)]) / 2.0f;
        v.push_back(scale * mean);
        v.push_back(-scale * mean);
      }
    }
    v.push_back(0.0f);
    v.push_back(1.0f);
    std::sort(v.begin(), v.end());
    return v;
  }();
  return map;
}

NestedAbsmax double_quantize(const float* absmax, size_t n, int threads) {
  NestedAbsmax out;
  double sum = 0;   // per 256-block, then over the blocks: the device's order (nf4.cu absmax_block_sums_kernel)
  for (size_t b0 = 0; b0 < n; b0 += 256) {
    double block = 0;
    for (size_t i = b0; i < std::min(n, b0 + 256); i++) block += absmax[i];
    sum += block;
  }
  out.offset = n ? float(sum / double(n)) : 0.0f;
  const std::vector<float>& map = dynamic_map_signed();
  const size_t nb = (n + 255) / 256;
  out.q.resize(n);
  out.absmax2.resize(nb);
  parallel_for(nb, [&](size_t b) {
    const size_t i0 = b * 256, i1 = std::min(n, i0 + 256);
    float amax = 0.0f;
    for (size_t i = i0; i < i1; i++) amax = std::max(amax, std::fabs(absmax[i] - out.offset));
    out.absmax2[b] = amax;
    const float inv = 1.0f / amax;
    for (size_t i = i0; i < i1; i++) {
      const float x = std::min(1.0f, std::max(-1.0f, (absmax[i] - out.offset) * inv));
      size_t hi = 0;   // upper_bound(map, x), branch-free (256 = 2^8 entries): the data would mispredict branches
      for (size_t step = 128; step >= 1; step /= 2) hi += size_t(map[hi + step - 1] <= x) * step;
      size_t best = hi == 0 ? 0 : hi - 1;
      if (hi > 0 && hi < map.size() && std::fabs(x - map[hi]) < std::fabs(x - map[hi - 1])) best = hi;
      out.q[i] = uint8_t(best);
    }
  }, threads);
  return out;
}

void double_dequantize(const uint8_t* q, const float* absmax2, float offset, size_t n, float* absmax) {
  const std::vector<float>& map = dynamic_map_signed();
  for (size_t i = 0; i < n; i++) absmax[i] = map[q[i]] * absmax2[i / 256] + offset;
}
void double_dequantize(const NestedAbsmax& nq, float* absmax) {
  double_dequantize(nq.q.data(), nq.absmax2.data(), nq.offset, nq.q.size(), absmax);
}

// ---- pre-quantized bitsandbytes checkpoints --------------------------------------------------------------

bool bnb_4bit_config(const Json& raw, const std::string& path) {
  const Json* qc = raw.is_object() ? raw.find("quantization_config") : nullptr;
  if (!qc || qc->is_null()) return false;
  auto fail = [&](const std::string& field, const std::string& what) -> bool {
    throw EngineError(path + ": quantization_config." + field + ": " + what, path, "quantization_config." + field);
  };
  if (!qc->is_object()) fail("", "must be an object");
  const Json* method = qc->find("quant_method");
  if (!method || !method->is_string())
    fail("quant_method", "missing (the engine reads bitsandbytes 4-bit checkpoints)");
  if (method->as_string() != "bitsandbytes")
    fail("quant_method", "\"" + method->as_string() + "\" is not supported (the engine reads bitsandbytes 4-bit checkpoints)");
  const Json* l4 = qc->find("load_in_4bit");
  const Json* l8 = qc->find("load_in_8bit");
  if (l8 && l8->is_bool() && l8->as_bool()) fail("load_in_8bit", "8-bit bitsandbytes checkpoints are not supported (4-bit only)");
  if (!l4 || !l4->is_bool() || !l4->as_bool()) fail("load_in_4bit", "must be true (only 4-bit bitsandbytes checkpoints are supported)");
  const Json* qt = qc->find("bnb_4bit_quant_type");
  if (qt && (!qt->is_string() || (qt->as_string() != "nf4" && qt->as_string() != "fp4")))
    fail("bnb_4bit_quant_type", "must be \"nf4\" or \"fp4\"");
  return true;
}

bool is_bnb_aux_tensor(const std::string& n) {
  auto ends = [&](const char* s) {
    const size_t k = std::strlen(s);
    return n.size() > k && n.compare(n.size() - k, k, s) == 0;
  };
  return ends(".absmax") || ends(".quant_map") || ends(".nested_absmax") || ends(".nested_quant_map") ||
         n.find(".quant_state.bitsandbytes__") != std::string::npos;
}

std::optional<Bnb4bitWeight> bnb_4bit_weight(const SafetensorsModel& st, const std::string& name) {
  const std::string nf4_key = name + ".quant_state.bitsandbytes__nf4", fp4_key = name + ".quant_state.bitsandbytes__fp4";
  const TensorView* qs = st.find(nf4_key);
  const bool fp4 = qs == nullptr && st.find(fp4_key) != nullptr;
  if (fp4) qs = st.find(fp4_key);
  if (!qs) return std::nullopt;
  Bnb4bitWeight w;
  w.name = name;
  w.fp4 = fp4;
  w.file = path_join(st.dir(), st.shard_of(name + (fp4 ? ".quant_state.bitsandbytes__fp4" : ".quant_state.bitsandbytes__nf4")));
  const std::string qs_name = fp4 ? fp4_key : nf4_key;
  auto fail = [&](const std::string& tensor, const std::string& what) -> void {
    throw EngineError(w.file + ": " + tensor + ": " + what, w.file, tensor);
  };
  if (qs->dtype != DType::U8) fail(qs_name, "expected a U8 tensor (packed JSON), got " + std::string(dtype_name(qs->dtype)));
  Json j;
  try {
    j = Json::parse(std::string(reinterpret_cast<const char*>(qs->data), qs->nbytes), w.file + ": " + qs_name);
  } catch (const std::exception& e) {
    fail(qs_name, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(qs_name, "expected a JSON object");
  auto field = [&](const char* key) -> const Json& {
    const Json* v = j.find(key);
    if (!v) fail(qs_name, std::string("missing field \"") + key + "\"");
    return *v;
  };
  try {
    const std::string qt = field("quant_type").as_string();
    if (qt != (fp4 ? "fp4" : "nf4")) fail(qs_name, "quant_type \"" + qt + "\" does not match the tensor name");
    w.blocksize = field("blocksize").as_int();
    if (w.blocksize <= 0 || w.blocksize > (int64_t(1) << 20)) fail(qs_name, "blocksize " + std::to_string(w.blocksize) + " out of range");
    const std::string dt = field("dtype").as_string();
    if (dt == "float32") w.dtype = DType::F32;
    else if (dt == "bfloat16") w.dtype = DType::BF16;
    else if (dt == "float16") w.dtype = DType::F16;
    else fail(qs_name, "dtype \"" + dt + "\" (expected float32, bfloat16 or float16)");
    w.numel = 1;
    for (const Json& d : field("shape").as_array()) {
      const int64_t v = d.as_int();
      if (v < 0 || v > (int64_t(1) << 40)) fail(qs_name, "shape has a bad dimension");
      w.shape.push_back(v);
      w.numel *= v;
    }
    w.nested = j.has("nested_blocksize");
  } catch (const EngineError&) {
    throw;
  } catch (const std::exception& e) {
    fail(qs_name, e.what());
  }

  const TensorView* packed = st.find(name);
  if (!packed) fail(name, "missing (its quant state is present)");
  if (packed->dtype != DType::U8)
    fail(name, "a 4-bit weight must be stored as U8 (bnb_4bit_quant_storage other than uint8 is not supported), got " +
                   std::string(dtype_name(packed->dtype)));
  if (packed->nbytes != size_t((w.numel + 1) / 2))
    fail(name, std::to_string(packed->nbytes) + " bytes, expected " + std::to_string((w.numel + 1) / 2) + " for " +
                   std::to_string(w.numel) + " 4-bit values");
  w.packed = packed->data;

  const int64_t blocks = (w.numel + w.blocksize - 1) / w.blocksize;
  auto need = [&](const std::string& tname, DType dt, int64_t count) -> const TensorView* {
    const TensorView* tv = st.find(tname);
    if (!tv) fail(tname, "missing (part of the 4-bit weight " + name + ")");
    if (tv->dtype != dt) fail(tname, "dtype " + std::string(dtype_name(tv->dtype)) + ", expected " + dtype_name(dt));
    if (tv->numel() != count) fail(tname, std::to_string(tv->numel()) + " values, expected " + std::to_string(count));
    return tv;
  };
  // quant_map: the code table bitsandbytes stored; the dequantize kernels use their built-in table, so the two
  // must agree (a different table would mean a format this reader does not know).
  const TensorView* qm = need(name + ".quant_map", DType::F32, 16);
  for (int c = 0; c < 16; c++) {
    float v;
    std::memcpy(&v, qm->data + 4 * c, 4);
    if (v != w.code()[c]) fail(name + ".quant_map", "entry " + std::to_string(c) + " is " + std::to_string(v) + ", not the " + (fp4 ? "FP4" : "NF4") + " code value");
  }
  w.absmax.resize(size_t(blocks));
  if (!w.nested) {
    const TensorView* am = need(name + ".absmax", DType::F32, blocks);
    std::memcpy(w.absmax.data(), am->data, size_t(blocks) * 4);
  } else {
    int64_t nb = 0;
    float offset = 0;
    try {
      nb = field("nested_blocksize").as_int();
      offset = float(field("nested_offset").as_number());
      const Json* nd = j.find("nested_dtype");
      if (nd && nd->as_string() != "float32") fail(qs_name, "nested_dtype \"" + nd->as_string() + "\" (expected float32)");
    } catch (const EngineError&) {
      throw;
    } catch (const std::exception& e) {
      fail(qs_name, e.what());
    }
    if (nb <= 0) fail(qs_name, "nested_blocksize must be positive");
    const TensorView* aq = need(name + ".absmax", DType::U8, blocks);
    const TensorView* na = need(name + ".nested_absmax", DType::F32, (blocks + nb - 1) / nb);
    const TensorView* nq = need(name + ".nested_quant_map", DType::F32, 256);
    const float* a2 = reinterpret_cast<const float*>(na->data);
    const float* code2 = reinterpret_cast<const float*>(nq->data);
    w.absmax_q = aq->data;
    w.nested_absmax = a2;
    w.nested_offset = offset;
    w.nested_blocksize = nb;
    w.nested_map_is_dynamic = std::memcmp(code2, dynamic_map_signed().data(), 256 * 4) == 0;
    // dequantize_blockwise(absmax_q, state2) + offset, in fp32 like bitsandbytes (two roundings: product, sum).
    for (int64_t b = 0; b < blocks; b++) {
      const float scaled = code2[aq->data[b]] * a2[b / nb];
      w.absmax[size_t(b)] = scaled + offset;
    }
  }
  return w;
}

static inline float round_to(DType dt, float x) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(x));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(x));
  return x;
}

void bnb_dequantize(const Bnb4bitWeight& w, int64_t first, int64_t n, float* out) {
  const float* code = w.code();
  for (int64_t k = 0; k < n; k++) {
    const int64_t i = first + k;
    const uint8_t byte = w.packed[i >> 1];
    const int q = (i & 1) ? (byte & 0xF) : (byte >> 4);
    out[k] = round_to(w.dtype, code[q] * w.absmax[size_t(i / w.blocksize)]);
  }
}

std::vector<float> bnb_absmax_per64(const Bnb4bitWeight& w) {
  if (w.blocksize % 64 != 0)
    throw EngineError(w.file + ": " + w.name + ": blocksize " + std::to_string(w.blocksize) +
                          " is not a multiple of 64 (the engine's 4-bit weights use 64-element blocks)", w.file, w.name);
  const int64_t m = w.blocksize / 64;
  std::vector<float> out(size_t((w.numel + 63) / 64));
  for (size_t b = 0; b < out.size(); b++) out[b] = w.absmax[b / size_t(m)];
  return out;
}

Json without_quantization_config(const Json& raw) {
  Json out = Json::object();
  for (const auto& kv : raw.as_object())
    if (kv.first != "quantization_config") out.set(kv.first, kv.second);
  return out;
}

}  // namespace nxft
