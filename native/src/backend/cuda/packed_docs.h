// packed_docs.h — the documents of a packed batch as cuDNN's ragged batch (RaggedDocs, cudnn_attention.h).
// The shards stage packs several documents into each row; the model marks them with doc_start (backend.h,
// attention). The backend keeps a host copy of each uploaded doc_start, finds the documents once per upload
// here, and uploads their lengths and element offsets (one array per operand pitch) without a host wait.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <map>
#include <vector>
#include "backend/cuda/cudnn_attention.h"
#include "backend/packed_documents.h"

namespace nxft {
namespace cuda {

class PackedDocs {
 public:
  PackedDocs() = default;
  PackedDocs(const PackedDocs&) = delete;
  PackedDocs& operator=(const PackedDocs&) = delete;
  ~PackedDocs();
  // Documents of the doc_start upload `upload_id` (host copy host_ds, B rows of T). Cheap when unchanged;
  // false when the rows are not contiguous documents.
  bool prepare(uint64_t upload_id, const std::vector<int32_t>& host_ds, int B, int T, cudaStream_t s);
  // The ragged batch for these pitches (forward: q, kv, out; backward adds dout, dq, dkv) and NH (the lse).
  RaggedDocs ragged(const AttnLd& ld, int NH, bool backward, cudaStream_t s);
  int documents() const { return int(starts_.size()) - 1; }

 private:
  const int32_t* offsets(int pitch, cudaStream_t s);   // (n_seq + 1) element offsets start·pitch, device
  void reserve(int n_seq);

  static constexpr int kSlots = 9;   // slot 0: lengths; slots 1..8: offsets for up to 8 distinct pitches
  uint64_t upload_id_ = ~0ull;
  int B_ = 0, T_ = 0, n_seq_ = 0, max_len_ = 0;
  int n_seq_largest_ = 0;              // the largest graph batch so far (ragged_batch_size)
  std::vector<int32_t> starts_;        // (documents + 1) flat token starts, then B·T
  int capacity_ = 0;                   // entries per slot
  int32_t* host_ = nullptr;            // page-locked (kSlots, capacity_): written once per upload, copied async
  int32_t* dev_ = nullptr;             // device (kSlots, capacity_)
  std::map<int, int> slot_of_pitch_;   // pitch → slot with its offsets, for this upload
};

}  // namespace cuda
}  // namespace nxft
