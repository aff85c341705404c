// gguf_writer.h — writes a GGUF v3 file (../shared/notes/native.md §2.1):
//
//   "GGUF" u32 version=3 u64 n_tensors u64 n_kv
//   kv[]:      gguf_string key, u32 value_type, value        (gguf_string = u64 length + UTF-8 bytes)
//   tensor[]:  gguf_string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset (from data start)
//   padding to 32, then each tensor's bytes at its offset, each padded to 32 (general.alignment default).
//
// Metadata and tensor infos are collected first and validated as they are added (duplicate keys or names,
// name length, dims, row length vs block size), so bad input fails before the output file is created.
// Tensor data is pulled from a RowSource row chunk by row chunk while writing: the whole model is never in
// memory, only `threads` × (a chunk of rows in fp32 + their encoded bytes). Encoding of a chunk is split over
// the threads; the file is written through AtomicFileWriter (temp file + rename).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>
#include "gguf/ggml_types.h"

namespace nxft {

// Supplies a tensor's values as fp32 rows of ne[0] elements (rows = ne[1]·ne[2]·ne[3]).
// fill_rows must be safe to call from several threads at once for disjoint row ranges.
struct RowSource {
  virtual ~RowSource() = default;
  virtual void fill_rows(int64_t first_row, int64_t n_rows, float* out) const = 0;
  // Called once the tensor is in the file: a source backed by an mmap drops its pages here, so the process
  // never holds more than about one tensor of the input resident.
  virtual void release() const {}
};

// A RowSource over fp32 values owned by the source itself (small generated tensors, tests).
struct VectorRowSource : RowSource {
  std::vector<float> values;
  int64_t row_len;
  VectorRowSource(std::vector<float> v, int64_t row_len_) : values(std::move(v)), row_len(row_len_) {}
  void fill_rows(int64_t first_row, int64_t n_rows, float* out) const override;
};

enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};

class GgufWriter {
 public:
  // Metadata. Keys must be unique (an EngineError otherwise); they are written in the order added.
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_u32_array(const std::string& key, const std::vector<uint32_t>& v);
  bool has_key(const std::string& key) const;

  // A tensor: `ne` in ggml order (ne[0] = contiguous row length; an HF [out, in] weight is {in, out}),
  // stored as `type`; values come from `src`. Throws EngineError if ne[0] is not a multiple of the type's
  // block size, the name is empty, longer than 63 bytes or repeated, or there are more than 4 dims.
  void add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                  std::shared_ptr<const RowSource> src);
  size_t tensor_count() const { return tensors_.size(); }

  // Writes the file atomically. `threads` ≥ 1 encode in parallel. `on_tensor(i, n, name, type)` is called
  // after each tensor is written (progress events). Returns the file size in bytes.
  uint64_t write(const std::string& path, int threads,
                 const std::function<void(size_t, size_t, const std::string&, GgmlType)>& on_tensor = nullptr);

  struct TensorInfo {
    std::string name;
    std::vector<int64_t> ne;
    GgmlType type;
    std::shared_ptr<const RowSource> src;
    int64_t rows() const;
    uint64_t nbytes() const;
  };
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

 private:
  std::string kv_bytes_;
  uint64_t n_kv_ = 0;
  std::vector<std::string> keys_;
  std::vector<TensorInfo> tensors_;
  void begin_kv(const std::string& key, GgufValueType type);
};

}  // namespace nxft
