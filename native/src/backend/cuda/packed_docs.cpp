// packed_docs.cpp — documents of a packed batch as cuDNN's ragged batch (packed_docs.h).
#include "backend/cuda/packed_docs.h"
#include <algorithm>
#include <cstdint>
#include <string>
#include "backend/cuda/cuda_common.cuh"

namespace nxft {
namespace cuda {

bool find_documents(const int32_t* ds, int B, int T, std::vector<int32_t>* starts, int* longest) {
  starts->clear();
  *longest = 0;
  for (int b = 0; b < B; b++) {
    int begin = 0;  // the current document's first key index in this row
    for (int t = 0; t < T; t++) {
      const int32_t d = ds[size_t(b) * T + t];
      if (t == 0 || d == t) {  // a document starts here (position 0 or the row's start)
        if (d != t) return false;
        if (t > 0) *longest = std::max(*longest, t - begin);
        begin = t;
        starts->push_back(int32_t(b * T + t));
      } else if (d != begin) {
        return false;  // not the run's own start: not contiguous documents
      }
    }
    *longest = std::max(*longest, T - begin);
  }
  starts->push_back(int32_t(B * T));
  return true;
}

static int pow2_at_least(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}
int ragged_batch_size(int documents) { return std::max(8, pow2_at_least(documents)); }
int ragged_max_len(int longest, int T) { return std::min(T, std::max(64, pow2_at_least(longest))); }

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
  n_seq_ = ragged_batch_size(docs);
  max_len_ = ragged_max_len(longest, T);
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
