// shards.h — reader for token shards (*.tokens.bin, docs/engine-protocol.md "Token shards"):
//   "NXFTSHD1" | u32 version=1 | u32 seq_len T | u32 n_rows R | u32 flags=0 | R rows of (tokens[T], targets[T],
//   positions[T]) as little-endian i32.
// Every shard is validated when opened (magic, version, flags, size); row contents are validated when read
// (ids inside the vocabulary, targets -100 or inside it, positions ≥ 0 and restarting at 0 or counting up),
// with errors naming the file and row.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nxft {

class ShardSet {
 public:
  // Opens every file; all must share one seq_len. vocab_size bounds the ids checked in read_row.
  ShardSet(const std::vector<std::string>& files, int vocab_size);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  int64_t rows() const { return total_rows_; }
  int seq_len() const { return seq_len_; }
  // Row `index` in [0, rows()) over the concatenation of the files in order, into three arrays of T values.
  void read_row(int64_t index, int32_t* tokens, int32_t* targets, int32_t* positions) const;
  // Number of targets != -100 in a row (reads it).
  int64_t count_targets(int64_t index) const;
  // The index after a row's last target (0 for a row without one), reading its targets from the end in chunks of
  // `chunk` tokens: a packed row answers from its last chunk.
  int targets_end(int64_t index, int chunk) const;
  // Whether a row starts a document (its first position is 0), reading that one value.
  bool starts_document(int64_t index) const;

 private:
  struct File {
    std::string path;
    int fd = -1;
    int64_t rows = 0, first_row = 0;
  };
  const File& file_of(int64_t index, int64_t* row) const;   // the file holding row `index`, and its row there
  std::vector<File> files_;
  int seq_len_ = 0;
  int vocab_ = 0;
  int64_t total_rows_ = 0;
};

// The row length a training micro-batch of B rows of T needs: its last target's index + 1 over all rows, rounded up
// to a granule of max(16, T/8) tokens (16-aligned), at least one granule, at most T. What comes after the last
// target (an unpacked row's padding document, the final token of the last document) is attended by no earlier
// token (causal attention) and carries no loss, so a step on the rows cut there has the loss and gradients of the
// whole rows. The granule bounds the shapes a dataset brings (at most 8, so cuDNN graphs and GEMM heuristics are
// built a handful of times) and keeps packed rows, whose padding is short, at T.
int trimmed_row_length(const int32_t* targets, int B, int T);
// The same length from the rows' largest targets_end `need`; and the granule it rounds to.
int trimmed_length_for(int need, int T);
int trim_granule(int T);
// False under NXFT_TRIM_ROWS=0 (an A/B switch: rows stay whole); throws on other values than 0 and 1.
bool trim_rows_enabled();
// How a micro-batch of B rows of T runs, from each row's end (its last target's index + 1, 0 without one):
//   - whole rows, under NXFT_TRIM_ROWS=0 (an A/B switch);
//   - cut: every row cut at trimmed_length_for(the largest end);
//   - padding-free: every row cut at its OWN end and the rows laid end to end in one row of their total length,
//     rounded up to the granule (the rest one padding document: no targets, its own positions). Taken when it
//     saves at least an eighth of the cut rows' tokens, which unpacked rows (one example each, mostly padding) do
//     and packed rows (full to their end) do not, and only when every row starts a document (position 0), so no
//     document runs on into the next row's tokens. NXFT_PADDING_FREE=0 keeps the cut rows (an A/B switch).
// Each document still attends to itself alone, RoPE reads the same positions, the same targets carry the loss: the
// loss and gradients of whole rows, up to the order of sums. TRL's padding_free collator does the same; Unsloth
// turns it on by itself.
struct RowsToRun {
  int B = 0, T = 0;
  bool end_to_end = false;   // padding-free: one row (B = 1)
};
RowsToRun rows_to_run(const std::vector<int>& ends, bool rows_start_documents, int T);
// False under NXFT_PADDING_FREE=0; throws on other values than 0 and 1.
bool padding_free_enabled();
// B rows of T in three (B·T) arrays, rearranged as rows_to_run says; returns the rows' new shape.
RowsToRun cut_rows_after_last_target(std::vector<int32_t>* tokens, std::vector<int32_t>* targets,
                                     std::vector<int32_t>* positions, int B, int T);

}  // namespace nxft
