// packed_docs.cpp — documents of a packed batch as cuDNN's ragged batch (packed_docs.h).
#include "backend/cuda/packed_docs.h"
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

PackedDocs::~PackedDocs() {
  if (host_) cudaFreeHost(host_);
  if (dev_) cudaFree(dev_);
}

void PackedDocs::reserve(int n_seq) {
  if (n_seq + 1 <= capacity_) return;
  if (host_) cudaFreeHost(host_);
  if (dev_) cudaFree(dev_);
  host_ = nullptr;
  dev_ = nullptr;
  capacity_ = n_seq + 1;
  CUDA_CHECK(cudaMallocHost(&host_, sizeof(int32_t) * kSlots * capacity_));
  CUDA_CHECK(cudaMalloc(&dev_, sizeof(int32_t) * kSlots * capacity_));
}

bool PackedDocs::prepare(uint64_t upload_id, const std::vector<int32_t>& ds, int B, int T, cudaStream_t s) {
  if (upload_id == upload_id_ && B == B_ && T == T_) return n_seq_ > 0;
  // The page-locked arrays may still be the source of copies queued for the last batch: wait for them before
  // rewriting (once per upload; the upload itself already waited).
  CUDA_CHECK(cudaStreamSynchronize(s));
  upload_id_ = upload_id;
  B_ = B;
  T_ = T;
  n_seq_ = 0;
  slot_of_pitch_.clear();
  int longest = 0;
  if (ds.size() < size_t(B) * T || !find_documents(ds.data(), B, T, &starts_, &longest)) return false;
  const int docs = int(starts_.size()) - 1;
  n_seq_ = ragged_batch_size(docs, n_seq_largest_);
  n_seq_largest_ = std::max(n_seq_largest_, n_seq_);
  static const RaggedLen how = [] {
    const char* e = std::getenv("NXFT_RAGGED_MAX_LEN");
    return e && std::string(e) == "pow2" ? RaggedLen::Pow2 : RaggedLen::Row;
  }();
  max_len_ = ragged_max_len(longest, T, how);
  reserve(n_seq_);
  int32_t* len = host_;  // slot 0: lengths; the sequences past the last document are empty
  for (int i = 0; i < n_seq_; i++) len[i] = i < docs ? starts_[i + 1] - starts_[i] : 0;
  CUDA_CHECK(cudaMemcpyAsync(dev_, len, sizeof(int32_t) * n_seq_, cudaMemcpyHostToDevice, s));
  return true;
}

const int32_t* PackedDocs::offsets(int pitch, cudaStream_t s) {
  auto it = slot_of_pitch_.find(pitch);
  if (it != slot_of_pitch_.end()) return dev_ + size_t(it->second) * capacity_;
  const int slot = 1 + int(slot_of_pitch_.size());
  if (slot >= kSlots) throw EngineError("internal: more than 8 attention pitches in one batch");
  const int docs = int(starts_.size()) - 1;
  int32_t* h = host_ + size_t(slot) * capacity_;
  for (int i = 0; i <= n_seq_; i++) {
    const int64_t off = int64_t(starts_[std::min(i, docs)]) * pitch;
    if (off > INT32_MAX) throw EngineError("packed attention: element offset past int32 (" + std::to_string(off) + ")");
    h[i] = int32_t(off);
  }
  CUDA_CHECK(cudaMemcpyAsync(dev_ + size_t(slot) * capacity_, h, sizeof(int32_t) * (n_seq_ + 1),
                             cudaMemcpyHostToDevice, s));
  slot_of_pitch_[pitch] = slot;
  return dev_ + size_t(slot) * capacity_;
}

RaggedDocs PackedDocs::ragged(const AttnLd& ld, int NH, bool backward, cudaStream_t s) {
  RaggedDocs r;
  r.n_seq = n_seq_;
  r.max_len = max_len_;
  r.tokens = B_ * T_;
  r.seq_len = dev_;
  r.q = offsets(ld.q, s);
  r.kv = offsets(ld.kv, s);
  r.out = offsets(ld.out, s);
  r.lse = offsets(NH, s);
  if (backward) {
    r.dout = offsets(ld.dout, s);
    r.dq = offsets(ld.dq, s);
    r.dkv = offsets(ld.dkv, s);
  }
  return r;
}

}  // namespace cuda
}  // namespace nxft
