// packed_documents.h — the documents of packed rows, found from doc_start (backend.h, attention), and the
// graph sizes of a ragged batch. Plain C++ so the CPU tests check what the CUDA backend uses to drive cuDNN's
// ragged attention (backend/cuda/packed_docs.h).
#pragma once
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

namespace nxft {

// doc_start (B rows of T) from the rows' positions: the key index where each token's document begins. Position 0
// starts a document; so does each row.
std::vector<int32_t> doc_start_of_positions(const int32_t* positions, int B, int T);

// Documents of a (B, T) doc_start (doc_start[b,t] = the key index in row b where token t's document begins):
// the flat index of each document's first token, in order, then B·T; and the longest document. False when
// doc_start does not describe contiguous documents (a token whose document start is not the start of the run it
// sits in): callers then keep kernels that take any doc_start.
bool find_documents(const int32_t* doc_start, int B, int T, std::vector<int32_t>* starts, int* longest);

// Graph sizes, so a handful of cuDNN graphs serve every batch of a dataset (each new graph is built and its plans
// timed mid-run, about 0.2 s): the sequence count rounded up to a power of two (at least 8), and the sequence
// length either the row length T (RaggedLen::Row, the default: one length for every batch, so a dataset needs
// only as many graphs as it has sequence-count buckets) or the longest document rounded up to a power of two
// (RaggedLen::Pow2: at least 64, at most T; NXFT_RAGGED_MAX_LEN=pow2, a diagnostic that keeps the older sizes).
enum class RaggedLen { Row, Pow2 };

// The tensor-core tile kernels' share of a whole causal row's work for this doc_start (B rows of T, contiguous
// documents): for each 64-query tile, the key tiles from its first query's document start to itself, over the
// same count for one document per row. Alpaca packed to 2048: about 0.14; documents of 5–1,024 tokens: about 0.4.
double tile_work_fraction(const int32_t* doc_start, int B, int T);
// Packed rows up to this fraction take the tile kernels (attention_tiles.cu); rows of longer documents take cuDNN's
// ragged attention, whose time does not shrink with the documents. Session 10 (H200, 8B, 32 layers): on rows of
// 5–1,024-token documents (≈ 0.4) the tile kernels' backward took 34.1 ms a step where cuDNN's takes about 17.7
// (about 87 ms per unit of fraction for the tiles' backward, 103 with the forward, against about 21 for cuDNN's
// forward and backward), so they break even near 0.2; on Alpaca's real path (≈ 0.14) they were 4.3% faster a step.
constexpr double kTilesMaxWorkFraction = 0.2;
// largest_so_far (the largest sequence count used before, 0 for none): a batch whose own bucket is half of it
// keeps that larger count (the extra sequences are empty), so a dataset whose batches straddle a power of two
// builds its graphs once, growing, instead of again whenever the count dips (Alpaca 2×2048: one graph of 64 for 51
// batches of 33–52 documents, where the one batch of 26 built a graph of 32 at step 44).
int ragged_batch_size(int documents, int largest_so_far = 0);
int ragged_max_len(int longest, int T, RaggedLen how);

// Which kernels a packed batch past kTilesMaxWorkFraction takes, by ski rental. cuDNN's first batch of a shape builds
// and times its graphs (about 0.3 s): worth it for a dataset of long documents, whose every batch is past the
// threshold, not for one whose long batches are rare (Alpaca packed to 2048: one in 51) or small (padding-free rows
// of a few short examples, a new length nearly every step). So such a batch starts on the tile kernels, and what
// each of its attention calls is estimated to lose against cuDNN (tiles_excess_ms) is added up for its shape
// (B, T); once a shape's sum reaches cuDNN's first-use cost, its batches take cuDNN. A run then spends at most
// about twice what the better choice in hindsight would have.
class TilesRent {
 public:
  // A new batch of B rows of T past the threshold: true = the tile kernels, false = cuDNN (the rent is paid).
  bool tiles(int B, int T);
  // One attention call of such a batch ran on the tile kernels: its estimated loss against cuDNN (ms).
  void charge(int B, int T, double ms) { rent_ms_[{B, T}] += ms; }
  double rent_ms(int B, int T) const {
    auto it = rent_ms_.find({B, T});
    return it == rent_ms_.end() ? 0.0 : it->second;
  }

 private:
  std::map<std::pair<int, int>, double> rent_ms_;   // per shape: lost on the tile kernels so far (ms)
};
// cuDNN's first use of a packed shape: its forward and backward graphs built and their plans timed (sessions 10–11:
// about 0.3 s on an H200).
constexpr double kCudnnFirstUseMs = 300.0;
// What one layer's attention (forward and backward) on the tile kernels is estimated to lose against cuDNN, for B
// rows of T with this work fraction and NH·HD query columns; `share` is the call's part of it (forward 1/3.5,
// backward 2.5/3.5, as their FLOPs). Session 10's H200 figures: the tiles take about 103 ms per unit of fraction a
// step at 8B 2×2048 (32 layers of 32 heads of 128), and cuDNN the same as the tiles at kTilesMaxWorkFraction.
double tiles_excess_ms(int B, int T, int NH, int HD, double fraction, double share);

}  // namespace nxft
