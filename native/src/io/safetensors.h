// safetensors.h — memory-mapped reader and atomic writer for the safetensors format
// (8-byte LE header length, JSON header, byte buffer; see ../shared/notes/native.md §5).
// The reader validates everything before any tensor is touched: header length past the end, offsets out of
// range, overlapping or leaving holes, unknown dtype, shape/byte-count mismatch, duplicate names. Every
// problem is an EngineError naming the file and the tensor.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
#include "util/dtype.h"
#include "util/json.h"

namespace nxft {

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;   // PyTorch order, row-major: [out, in] for a Linear weight
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);  // mmap, validate
  ~SafetensorsFile();
  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }       // in file order
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Drop this process's mapping of the tensor's pages (madvise MADV_DONTNEED; the data stays in the page cache
  // and is re-read on the next access). For streaming over models bigger than RAM; no-op for from_buffer files.
  void release(const TensorView& t) const;
  // Parse and validate an in-memory buffer (the fuzz target uses this; `source` names it in errors).
  static std::unique_ptr<SafetensorsFile> from_buffer(const uint8_t* data, size_t size, const std::string& source);
 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, size_t> index_;
};

// A whole Hugging Face checkpoint folder: model.safetensors, or model.safetensors.index.json + shards.
class SafetensorsModel {
 public:
  static std::unique_ptr<SafetensorsModel> open_dir(const std::string& dir);
  const TensorView* find(const std::string& name) const;      // nullptr if absent
  const TensorView& get(const std::string& name) const;       // EngineError "missing tensor NAME in DIR"
  std::vector<std::string> names() const;                     // sorted
  // Shard file names and which tensors each held (to shard a merged model like its base).
  const std::vector<std::string>& shard_files() const { return shard_files_; }
  const std::string& shard_of(const std::string& name) const;
  void release(const std::string& name) const;                // see SafetensorsFile::release
  void release(const std::string& name, size_t byte_offset, size_t nbytes) const;   // part of a tensor
  const std::string& dir() const { return dir_; }
 private:
  std::string dir_;
  std::vector<std::string> shard_files_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorView*>> by_name_;
};

// One tensor to write: either borrowed bytes already in `dtype`, or fp32 values converted on the fly.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;      // bytes in `dtype`, row-major
  const float* f32 = nullptr;      // alternatively: fp32 source converted to `dtype` while writing
};

// Writes {"__metadata__": metadata, ...} with the header padded to a multiple of 8 (as the reference
// writer does), tensors in the given order, atomically.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Streaming writer for files too big to hold in memory (merge of an 8B model): declare every tensor up front
// (the header needs all offsets), then append each tensor's bytes in the declared order; commit() checks that
// every tensor was written in full, fsyncs and renames. Destroying it without commit() leaves no file behind.
struct TensorDecl {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};
class SafetensorsWriter {
 public:
  SafetensorsWriter(const std::string& path, const std::vector<TensorDecl>& tensors,
                    const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  // Append raw bytes (already in the declared dtype) of the current tensor; may be called in pieces.
  void write(const void* data, size_t nbytes);
  // Append fp32 values converted to the current tensor's dtype.
  void write_f32(const float* values, size_t n);
  void commit();
  uint64_t data_bytes() const { return total_; }   // size of the byte buffer (for index.json total_size)
 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  uint64_t total_ = 0;
};

// The JSON header bytes (padded with spaces to a multiple of 8) for the given tensors; data_bytes gets the
// size of the byte buffer that follows. Exposed for tests and the GGUF helper's checks.
std::string safetensors_header(const std::vector<TensorDecl>& tensors,
                               const std::map<std::string, std::string>& metadata, uint64_t* data_bytes);

}  // namespace nxft
