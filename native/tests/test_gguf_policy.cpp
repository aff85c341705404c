// test_gguf_policy — per-tensor type choices of the export presets (llama-quantize's rules, notes §2.8) and the
// llama Q/K row permutation (notes §2.6), on hand-computed cases.
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "gguf/export.h"
#include "gguf/gguf_types_policy.h"
#include "util/events.h"
#include "test_support.h"

using namespace nxft;


static std::string type_of(const std::string& preset, const std::string& name, std::vector<int64_t> ne, int layer,
                           int n_layers, bool tied) {
  return ggml_type_name(choose_tensor_type(gguf_preset(preset), name, ne, layer, n_layers, tied).type);
}

int main() {
  // use_more_bits for 32 layers: {0-3, 6, 9, …, 27, 28-31} = 16 layers (notes §2.8).
  std::set<int> more;
  for (int i = 0; i < 32; i++)
    if (use_more_bits(i, 32)) more.insert(i);
  std::set<int> want = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  CHECK_MSG(more == want, "use_more_bits(·, 32) gives %zu layers", more.size());
  // 16 layers (Llama-3.2-1B): i < 2 || i >= 14 || (i − 2) % 3 == 2 → {0, 1, 4, 7, 10, 13, 14, 15}
  more.clear();
  for (int i = 0; i < 16; i++)
    if (use_more_bits(i, 16)) more.insert(i);
  CHECK_MSG(more == (std::set<int>{0, 1, 4, 7, 10, 13, 14, 15}), "use_more_bits(·, 16)");

  // Llama-3.2-1B-like shapes (C 2048, F 8192), q4_k_m.
  CHECK_MSG(type_of("q4_k_m", "token_embd.weight", {2048, 128256}, -1, 16, true) == "Q6_K", "tied embedding → Q6_K");
  CHECK_MSG(type_of("q4_k_m", "token_embd.weight", {2048, 128256}, -1, 16, false) == "Q4_K", "untied embedding → Q4_K");
  CHECK_MSG(type_of("q4_k_m", "output.weight", {2048, 128256}, -1, 16, false) == "Q6_K", "output → Q6_K");
  CHECK_MSG(type_of("q4_k_m", "blk.4.attn_v.weight", {2048, 512}, 4, 16, true) == "Q6_K", "attn_v more bits");
  CHECK_MSG(type_of("q4_k_m", "blk.5.attn_v.weight", {2048, 512}, 5, 16, true) == "Q4_K", "attn_v plain");
  CHECK_MSG(type_of("q4_k_m", "blk.15.ffn_down.weight", {8192, 2048}, 15, 16, true) == "Q6_K", "ffn_down more bits");
  CHECK_MSG(type_of("q4_k_m", "blk.3.ffn_down.weight", {8192, 2048}, 3, 16, true) == "Q4_K", "ffn_down plain");
  CHECK_MSG(type_of("q4_k_m", "blk.3.attn_q.weight", {2048, 2048}, 3, 16, true) == "Q4_K", "attn_q");
  CHECK_MSG(type_of("q4_k_m", "blk.3.attn_norm.weight", {2048}, 3, 16, true) == "F32", "norm");
  CHECK_MSG(type_of("q4_k_m", "blk.3.attn_q.bias", {2048}, 3, 16, true) == "F32", "bias");
  CHECK_MSG(type_of("q4_k_m", "rope_freqs.weight", {32}, -1, 16, true) == "F32", "rope_freqs");
  CHECK_MSG(type_of("q5_k_m", "blk.3.attn_q.weight", {2048, 2048}, 3, 16, true) == "Q5_K", "q5_k_m default");
  CHECK_MSG(type_of("q5_k_m", "blk.0.attn_v.weight", {2048, 512}, 0, 16, true) == "Q6_K", "q5_k_m attn_v");
  CHECK_MSG(type_of("q6_k", "blk.3.attn_q.weight", {2048, 2048}, 3, 16, true) == "Q6_K", "q6_k");
  CHECK_MSG(type_of("q8_0", "output.weight", {2048, 128256}, -1, 16, false) == "Q8_0", "q8_0 output stays Q8_0");
  CHECK_MSG(type_of("q4_0", "output.weight", {2048, 128256}, -1, 16, false) == "Q6_K", "q4_0 output → Q6_K");
  CHECK_MSG(type_of("q4_0", "blk.0.ffn_down.weight", {8192, 2048}, 0, 16, false) == "Q4_0", "q4_0 ffn_down");
  CHECK_MSG(type_of("f16", "blk.0.ffn_down.weight", {8192, 2048}, 0, 16, false) == "F16", "f16");
  CHECK_MSG(type_of("bf16", "token_embd.weight", {2048, 128256}, -1, 16, true) == "BF16", "bf16");
  CHECK_MSG(type_of("f32", "token_embd.weight", {2048, 128256}, -1, 16, true) == "F32", "f32");

  // Shape fallbacks (rows of 64 / 96 / 172).
  CHECK_MSG(type_of("q4_k_m", "blk.1.attn_q.weight", {64, 64}, 1, 5, true) == "Q5_0", "Q4_K → Q5_0");
  CHECK_MSG(type_of("q5_k_m", "blk.1.attn_q.weight", {64, 64}, 1, 5, true) == "Q5_1", "Q5_K → Q5_1");
  CHECK_MSG(type_of("q6_k", "blk.1.attn_q.weight", {64, 64}, 1, 5, true) == "Q8_0", "Q6_K → Q8_0");
  CHECK_MSG(type_of("q4_k_m", "token_embd.weight", {64, 512}, -1, 5, true) == "Q8_0", "output with short rows → Q8_0");
  CHECK_MSG(type_of("q4_k_m", "blk.1.ffn_down.weight", {172, 64}, 1, 5, true) == "F16", "172 wide → F16");
  CHECK_MSG(type_of("q8_0", "blk.1.ffn_down.weight", {172, 64}, 1, 5, true) == "F16", "q8_0 172 wide → F16");
  CHECK_MSG(!choose_tensor_type(gguf_preset("q4_k_m"), "blk.1.ffn_down.weight", {172, 64}, 1, 5, true).fallback_note.empty(),
        "fallback without a note");

  bool threw = false;
  try { gguf_preset("q3_k_s"); } catch (const EngineError& e) { threw = std::string(e.what()).find("q4_k_m") != std::string::npos; }
  CHECK_MSG(threw, "unknown preset not refused with the list");

  // Q/K permutation: head_dim 8 → new rows [0, 4, 1, 5, 2, 6, 3, 7] per head (interleave the two halves).
  std::vector<int64_t> p = llama_qk_row_permutation(16, 2);
  std::vector<int64_t> expect = {0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15};
  CHECK_MSG(p == expect, "permutation for 2 heads of 8");

  return test_result("test_gguf_policy");
}
