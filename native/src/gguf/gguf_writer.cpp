// gguf_writer.cpp — GGUF v3 serialisation with streamed, multithreaded tensor encoding (see gguf_writer.h).
#include "gguf/gguf_writer.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <thread>
#include "gguf/quants.h"
#include "util/events.h"
#include "util/fs.h"

namespace nxft {

static constexpr uint64_t kAlignment = 32;            // GGUF_DEFAULT_ALIGNMENT; we never write general.alignment
static constexpr size_t kChunkF32Bytes = 16u << 20;   // fp32 input per thread per chunk

void VectorRowSource::fill_rows(int64_t first_row, int64_t n_rows, float* out) const {
  std::memcpy(out, values.data() + first_row * row_len, size_t(n_rows * row_len) * sizeof(float));
}

int64_t GgufWriter::TensorInfo::rows() const {
  int64_t r = 1;
  for (size_t i = 1; i < ne.size(); i++) r *= ne[i];
  return r;
}
uint64_t GgufWriter::TensorInfo::nbytes() const { return uint64_t(ggml_row_bytes(type, ne[0])) * uint64_t(rows()); }

// ---- little-endian serialisation into a byte string ------------------------------------------------------

template <typename T>
static void put(std::string& b, T v) {
  char tmp[sizeof(T)];
  std::memcpy(tmp, &v, sizeof(T));   // x86-64 and aarch64 are little-endian, as GGUF is by default
  b.append(tmp, sizeof(T));
}
static void put_str(std::string& b, const std::string& s) {
  put<uint64_t>(b, s.size());
  b.append(s);
}

void GgufWriter::begin_kv(const std::string& key, GgufValueType type) {
  if (key.empty() || key.size() > 65535) throw EngineError("GGUF metadata key \"" + key + "\" is empty or too long");
  if (has_key(key)) throw EngineError("GGUF metadata key \"" + key + "\" written twice");
  keys_.push_back(key);
  put_str(kv_bytes_, key);
  put<uint32_t>(kv_bytes_, uint32_t(type));
  n_kv_++;
}

bool GgufWriter::has_key(const std::string& key) const {
  return std::find(keys_.begin(), keys_.end(), key) != keys_.end();
}

void GgufWriter::add_u32(const std::string& key, uint32_t v) { begin_kv(key, GgufValueType::U32); put(kv_bytes_, v); }
void GgufWriter::add_i32(const std::string& key, int32_t v) { begin_kv(key, GgufValueType::I32); put(kv_bytes_, v); }
void GgufWriter::add_f32(const std::string& key, float v) { begin_kv(key, GgufValueType::F32); put(kv_bytes_, v); }
void GgufWriter::add_bool(const std::string& key, bool v) {
  begin_kv(key, GgufValueType::BOOL);
  put<uint8_t>(kv_bytes_, v ? 1 : 0);
}
void GgufWriter::add_string(const std::string& key, const std::string& v) {
  begin_kv(key, GgufValueType::STRING);
  put_str(kv_bytes_, v);
}
void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  begin_kv(key, GgufValueType::ARRAY);
  put<uint32_t>(kv_bytes_, uint32_t(GgufValueType::STRING));
  put<uint64_t>(kv_bytes_, v.size());
  for (const std::string& s : v) put_str(kv_bytes_, s);
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
  begin_kv(key, GgufValueType::ARRAY);
  put<uint32_t>(kv_bytes_, uint32_t(GgufValueType::F32));
  put<uint64_t>(kv_bytes_, v.size());
  for (float x : v) put(kv_bytes_, x);
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  begin_kv(key, GgufValueType::ARRAY);
  put<uint32_t>(kv_bytes_, uint32_t(GgufValueType::I32));
  put<uint64_t>(kv_bytes_, v.size());
  for (int32_t x : v) put(kv_bytes_, x);
}
void GgufWriter::add_u32_array(const std::string& key, const std::vector<uint32_t>& v) {
  begin_kv(key, GgufValueType::ARRAY);
  put<uint32_t>(kv_bytes_, uint32_t(GgufValueType::U32));
  put<uint64_t>(kv_bytes_, v.size());
  for (uint32_t x : v) put(kv_bytes_, x);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& ne, GgmlType type,
                            std::shared_ptr<const RowSource> src) {
  // ggml keeps names in char[GGML_MAX_NAME = 64] including the terminating NUL.
  if (name.empty() || name.size() > 63) throw EngineError("GGUF tensor name \"" + name + "\" is empty or longer than 63 bytes");
  for (const TensorInfo& t : tensors_)
    if (t.name == name) throw EngineError("GGUF tensor \"" + name + "\" added twice");
  if (ne.empty() || ne.size() > 4) throw EngineError("GGUF tensor \"" + name + "\" must have 1 to 4 dims");
  for (int64_t d : ne)
    if (d <= 0) throw EngineError("GGUF tensor \"" + name + "\" has a non-positive dimension");
  if (ne[0] % ggml_block_elems(type) != 0)
    throw EngineError("tensor \"" + name + "\": row length " + std::to_string(ne[0]) + " is not a multiple of the " +
                      ggml_type_name(type) + " block size " + std::to_string(ggml_block_elems(type)));
  if (!src) throw EngineError("GGUF tensor \"" + name + "\" has no data source");
  tensors_.push_back(TensorInfo{name, ne, type, std::move(src)});
}

// ---- writing -----------------------------------------------------------------------------------------------

// Encodes rows [r0, r0+n) of `t` into `out` using up to `threads` threads, each taking a contiguous slice.
static void encode_chunk(const GgufWriter::TensorInfo& t, int64_t r0, int64_t n, int threads, uint8_t* out,
                         std::vector<std::vector<float>>& scratch) {
  const int64_t row_len = t.ne[0];
  const size_t row_bytes = ggml_row_bytes(t.type, row_len);
  int nt = int(std::min<int64_t>(threads, n));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nt));
  auto work = [&](int ti) {
    try {
      int64_t a = r0 + n * ti / nt, b = r0 + n * (ti + 1) / nt;
      if (a == b) return;
      std::vector<float>& buf = scratch[size_t(ti)];
      buf.resize(size_t((b - a) * row_len));
      t.src->fill_rows(a, b - a, buf.data());
      for (int64_t r = a; r < b; r++)
        encode_row(t.type, buf.data() + (r - a) * row_len, out + size_t(r - r0) * row_bytes, row_len);
    } catch (...) {
      errors[size_t(ti)] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (int ti = 1; ti < nt; ti++) pool.emplace_back(work, ti);
  work(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

uint64_t GgufWriter::write(const std::string& path, int threads,
                           const std::function<void(size_t, size_t, const std::string&, GgmlType)>& on_tensor) {
  threads = std::max(1, threads);
  // Header + metadata + tensor infos, with each tensor's data offset assigned in order.
  std::string head;
  head.append("GGUF", 4);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head += kv_bytes_;
  uint64_t offset = 0;
  for (const TensorInfo& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, uint32_t(t.type));
    put<uint64_t>(head, offset);
    offset += t.nbytes();
    offset = (offset + kAlignment - 1) / kAlignment * kAlignment;
  }

  AtomicFileWriter out(path);
  out.write(head.data(), head.size());
  out.pad_to(kAlignment);

  std::vector<std::vector<float>> scratch(static_cast<size_t>(threads));
  std::vector<uint8_t> encoded;
  for (size_t i = 0; i < tensors_.size(); i++) {
    const TensorInfo& t = tensors_[i];
    const int64_t row_len = t.ne[0], rows = t.rows();
    const size_t row_bytes = ggml_row_bytes(t.type, row_len);
    int64_t chunk_rows = std::max<int64_t>(1, int64_t(kChunkF32Bytes / (size_t(row_len) * 4))) * threads;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      int64_t n = std::min(chunk_rows, rows - r0);
      encoded.resize(size_t(n) * row_bytes);
      encode_chunk(t, r0, n, threads, encoded.data(), scratch);
      out.write(encoded.data(), encoded.size());
    }
    out.pad_to(kAlignment);
    t.src->release();
    if (on_tensor) on_tensor(i + 1, tensors_.size(), t.name, t.type);
  }
  uint64_t size = out.offset();
  out.commit();
  return size;
}

}  // namespace nxft
