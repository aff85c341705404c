// packed_documents.h — the documents of packed rows, found from doc_start (backend.h, attention), and the
// graph sizes of a ragged batch. Plain C++ so the CPU tests check what the CUDA backend uses to drive cuDNN's
// ragged attention (backend/cuda/packed_docs.h).
#pragma once
#include <cstdint>
#include <vector>

namespace nxft {

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
// largest_so_far (the largest sequence count used before, 0 for none): a batch whose own bucket is half of it
// keeps that larger count (the extra sequences are empty), so a dataset whose batches straddle a power of two
// builds its graphs once, growing, instead of again whenever the count dips (Alpaca 2×2048: one graph of 64 for 51
// batches of 33–52 documents, where the one batch of 26 built a graph of 32 at step 44).
int ragged_batch_size(int documents, int largest_so_far = 0);
int ragged_max_len(int longest, int T, RaggedLen how);

}  // namespace nxft
