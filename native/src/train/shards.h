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
// B rows of T in three (B·T) arrays, cut to trimmed_row_length and packed again as (B, T2); returns T2. With
// NXFT_TRIM_ROWS=0 in the environment (an A/B switch) the rows stay whole and T comes back.
int cut_rows_after_last_target(std::vector<int32_t>* tokens, std::vector<int32_t>* targets,
                               std::vector<int32_t>* positions, int B, int T);

}  // namespace nxft
