// safetensors.cpp — zero-copy mmap reader with full validation, and streaming atomic writer.
//
// Layout: u64 LE header length N | N bytes of JSON header (starts with '{', may be right-padded with spaces)
// | byte buffer. Each tensor: {"dtype", "shape", "data_offsets": [begin, end)} relative to the buffer.
// Validation (all before any tensor is handed out): file shorter than 8 bytes, N > 100,000,000, N past the end
// of the file, header not starting with '{', invalid JSON or UTF-8, duplicate names (the JSON parser rejects
// duplicate keys), malformed entries, unknown dtype, shape × element size ≠ end − begin (with overflow
// checks), offsets out of range, overlapping, or leaving holes, buffer not fully covered. Every error is an
// EngineError naming the file and, where one is at fault, the tensor.
#include "io/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/events.h"
#include "util/fs.h"

namespace nxft {

static constexpr uint64_t kMaxHeaderSize = 100000000;  // safetensors' MAX_HEADER_SIZE

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

[[noreturn]] void bad(const std::string& source, const std::string& what, const std::string& tensor = "") {
  std::string msg = source + ": ";
  if (!tensor.empty()) msg += "tensor \"" + tensor + "\": ";
  throw EngineError(msg + what, source, tensor);
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

// A non-negative integer that fits in uint64 exactly (JSON numbers are doubles; offsets above 2^53 cannot be
// represented and are rejected).
bool as_u64(const Json& j, uint64_t* out) {
  if (!j.is_number()) return false;
  double d = j.as_number();
  if (!(d >= 0) || d > 9007199254740992.0 || d != (double)(uint64_t)d) return false;
  *out = (uint64_t)d;
  return true;
}

}  // namespace

// Parse and validate the header and offsets; fills tensors_/metadata_/index_ with pointers into `data`.
static void parse_into(const uint8_t* data, size_t size, const std::string& source, std::vector<TensorView>* tensors,
                       std::map<std::string, std::string>* metadata, std::map<std::string, size_t>* index) {
  if (size < 8) bad(source, "truncated file: " + std::to_string(size) + " bytes, need at least 8 for the header length");
  uint64_t n = read_u64_le(data);
  if (n > kMaxHeaderSize) bad(source, "header length " + std::to_string(n) + " exceeds the 100,000,000-byte limit");
  if (n > size - 8)
    bad(source, "header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
                    " bytes): truncated or not a safetensors file");
  if (n == 0 || data[8] != '{') bad(source, "header does not start with '{': not a safetensors file");
  std::string header((const char*)data + 8, size_t(n));
  Json j;
  try {
    j = Json::parse(header, source + " (header)");
  } catch (const JsonError& e) {
    bad(source, std::string("invalid JSON header: ") + e.what());
  }
  if (!j.is_object()) bad(source, "header is not a JSON object");
  const uint8_t* buffer = data + 8 + n;
  uint64_t buffer_size = size - 8 - n;

  struct Span { uint64_t begin, end; size_t idx; };
  std::vector<Span> spans;
  for (const auto& kv : j.as_object()) {
    const std::string& name = kv.first;
    const Json& info = kv.second;
    if (name == "__metadata__") {
      if (!info.is_object()) bad(source, "__metadata__ must be an object of strings");
      for (const auto& m : info.as_object()) {
        if (!m.second.is_string()) bad(source, "__metadata__ value for \"" + m.first + "\" is not a string");
        (*metadata)[m.first] = m.second.as_string();
      }
      continue;
    }
    if (!info.is_object()) bad(source, "entry is not an object", name);
    const Json* dt = info.find("dtype");
    const Json* shape = info.find("shape");
    const Json* offs = info.find("data_offsets");
    if (!dt || !dt->is_string()) bad(source, "missing or non-string \"dtype\"", name);
    if (!shape || !shape->is_array()) bad(source, "missing or non-array \"shape\"", name);
    if (!offs || !offs->is_array() || offs->size() != 2) bad(source, "\"data_offsets\" must be [begin, end]", name);
    TensorView tv;
    tv.name = name;
    if (!dtype_from_name(dt->as_string(), &tv.dtype))
      bad(source, "unknown or unsupported dtype \"" + dt->as_string() + "\"", name);
    uint64_t numel = 1;
    bool overflow = false;
    for (const Json& d : shape->as_array()) {
      uint64_t v;
      if (!as_u64(d, &v)) bad(source, "shape entries must be non-negative integers, got " + d.dump(), name);
      if (v != 0 && numel > UINT64_MAX / v) overflow = true;
      numel *= v;
      tv.shape.push_back(int64_t(v));
    }
    uint64_t esize = dtype_size(tv.dtype);
    if (!overflow && numel > UINT64_MAX / esize) overflow = true;
    uint64_t begin, end;
    if (!as_u64(offs->as_array()[0], &begin) || !as_u64(offs->as_array()[1], &end))
      bad(source, "data_offsets must be non-negative integers", name);
    if (end < begin) bad(source, "data_offsets end " + std::to_string(end) + " < begin " + std::to_string(begin), name);
    if (end > buffer_size)
      bad(source, "data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + ") out of range: the byte buffer has " +
                      std::to_string(buffer_size) + " bytes (truncated file?)", name);
    if (overflow || numel * esize != end - begin)
      bad(source, "shape " + shape->dump() + " of " + dt->as_string() + " needs " +
                      (overflow ? std::string("more than 2^64") : std::to_string(numel * esize)) + " bytes but data_offsets span " +
                      std::to_string(end - begin), name);
    tv.data = buffer + begin;
    tv.nbytes = size_t(end - begin);
    spans.push_back({begin, end, tensors->size()});
    tensors->push_back(std::move(tv));
  }
  // Offsets must tile the buffer exactly: sorted by begin, each starts where the previous ended.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  for (size_t k = 0; k < spans.size(); k++) {
    const Span& s = spans[k];
    const std::string& name = (*tensors)[s.idx].name;
    if (s.begin < expect) {
      const std::string& prev = (*tensors)[spans[k - 1].idx].name;
      bad(source, "data overlaps tensor \"" + prev + "\" (begins at " + std::to_string(s.begin) + ", previous ends at " +
                      std::to_string(expect) + ")", name);
    }
    if (s.begin > expect)
      bad(source, "hole in the byte buffer: bytes [" + std::to_string(expect) + ", " + std::to_string(s.begin) +
                      ") belong to no tensor", name);
    expect = s.end;
  }
  if (expect != buffer_size)
    bad(source, "byte buffer has " + std::to_string(buffer_size) + " bytes but tensors cover only " + std::to_string(expect) +
                    " (trailing bytes belong to no tensor)");
  for (size_t i = 0; i < tensors->size(); i++) (*index)[(*tensors)[i].name] = i;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::from_buffer(const uint8_t* data, size_t size, const std::string& source) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = source;
  parse_into(data, size, source, &f->tensors_, &f->metadata_, &f->index_);
  return f;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError(path + ": cannot open: " + std::strerror(errno), path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw EngineError(path + ": cannot stat: " + std::strerror(e), path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw EngineError(path + ": not a regular file", path);
  }
  size_t size = size_t(st.st_size);
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  if (size == 0) {
    ::close(fd);
    bad(path, "truncated file: 0 bytes, need at least 8 for the header length");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);  // the mapping stays valid after close
  if (map == MAP_FAILED) throw EngineError(path + ": mmap failed: " + std::strerror(e), path);
  f->map_ = map;
  f->map_size_ = size;
  parse_into((const uint8_t*)map, size, path, &f->tensors_, &f->metadata_, &f->index_);  // on throw, ~ unmaps
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

void SafetensorsFile::release(const TensorView& t) const {
  if (!map_ || t.nbytes == 0) return;
  const uint8_t* base = (const uint8_t*)map_;
  if (t.data < base || t.data + t.nbytes > base + map_size_) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  uintptr_t lo = uintptr_t(t.data) & ~(page - 1);
  uintptr_t hi = (uintptr_t(t.data) + t.nbytes + page - 1) & ~(page - 1);
  hi = std::min<uintptr_t>(hi, (uintptr_t(base) + map_size_ + page - 1) & ~(page - 1));
  ::madvise((void*)lo, size_t(hi - lo), MADV_DONTNEED);  // read-only file mapping: pages refault from the cache
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- SafetensorsModel -------------------------------------------------------------------------------------

std::unique_ptr<SafetensorsModel> SafetensorsModel::open_dir(const std::string& dir) {
  std::unique_ptr<SafetensorsModel> m(new SafetensorsModel());
  m->dir_ = dir;
  std::string index_path = path_join(dir, "model.safetensors.index.json");
  std::string single = path_join(dir, "model.safetensors");
  if (path_exists(index_path)) {
    Json idx;
    try {
      idx = Json::parse(read_file(index_path), index_path);
    } catch (const JsonError& e) {
      throw EngineError(e.what(), index_path);
    }
    const Json* wm = idx.is_object() ? idx.find("weight_map") : nullptr;
    if (!wm || !wm->is_object() || wm->size() == 0)
      throw EngineError(index_path + ": \"weight_map\" must be a non-empty object", index_path, "weight_map");
    std::map<std::string, size_t> file_index;
    for (const auto& kv : wm->as_object()) {
      if (!kv.second.is_string())
        throw EngineError(index_path + ": weight_map.\"" + kv.first + "\" must be a file name", index_path, "weight_map." + kv.first);
      const std::string& fname = kv.second.as_string();
      if (fname.empty() || fname.find('/') != std::string::npos || fname == "." || fname == "..")
        throw EngineError(index_path + ": weight_map.\"" + kv.first + "\": bad shard file name \"" + fname + "\"", index_path,
                          "weight_map." + kv.first);
      if (!file_index.count(fname)) {
        file_index[fname] = m->shard_files_.size();
        m->shard_files_.push_back(fname);
      }
    }
    for (const auto& fname : m->shard_files_) m->files_.push_back(SafetensorsFile::open(path_join(dir, fname)));
    for (const auto& kv : wm->as_object()) {
      size_t fi = file_index[kv.second.as_string()];
      const TensorView* tv = m->files_[fi]->find(kv.first);
      if (!tv)
        throw EngineError(index_path + ": tensor \"" + kv.first + "\" is mapped to " + kv.second.as_string() + " but that file does not contain it",
                          index_path, kv.first);
      m->by_name_[kv.first] = {fi, tv};
    }
    // Tensors present in a shard but absent from weight_map: accept them (transformers would ignore them), but
    // never the same name twice.
    for (size_t fi = 0; fi < m->files_.size(); fi++)
      for (const auto& tv : m->files_[fi]->tensors()) {
        auto it = m->by_name_.find(tv.name);
        if (it == m->by_name_.end()) {
          m->by_name_[tv.name] = {fi, &tv};
          emit_warning(index_path + ": tensor \"" + tv.name + "\" is in " + m->shard_files_[fi] + " but not in weight_map");
        } else if (it->second.second != &tv) {
          throw EngineError(dir + ": tensor \"" + tv.name + "\" appears in both " + m->shard_files_[it->second.first] + " and " +
                                m->shard_files_[fi], index_path, tv.name);
        }
      }
  } else if (path_exists(single)) {
    m->shard_files_.push_back("model.safetensors");
    m->files_.push_back(SafetensorsFile::open(single));
    for (const auto& tv : m->files_[0]->tensors()) m->by_name_[tv.name] = {0, &tv};
  } else {
    throw EngineError(dir + ": no model.safetensors or model.safetensors.index.json in this folder", dir);
  }
  return m;
}

const TensorView* SafetensorsModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second.second;
}

const TensorView& SafetensorsModel::get(const std::string& name) const {
  const TensorView* tv = find(name);
  if (!tv) throw EngineError("missing tensor " + name + " in " + dir_, dir_, name);
  return *tv;
}

void SafetensorsModel::release(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it != by_name_.end()) files_[it->second.first]->release(*it->second.second);
}

void SafetensorsModel::release(const std::string& name, size_t byte_offset, size_t nbytes) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return;
  const TensorView& t = *it->second.second;
  if (byte_offset >= t.nbytes) return;
  TensorView part;
  part.data = t.data + byte_offset;
  part.nbytes = std::min(nbytes, t.nbytes - byte_offset);
  files_[it->second.first]->release(part);
}

std::vector<std::string> SafetensorsModel::names() const {
  std::vector<std::string> out;
  for (const auto& kv : by_name_) out.push_back(kv.first);
  return out;  // std::map keeps them sorted
}

const std::string& SafetensorsModel::shard_of(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw EngineError("missing tensor " + name + " in " + dir_, dir_, name);
  return shard_files_[it->second.first];
}

// ---- writer -----------------------------------------------------------------------------------------------

std::string safetensors_header(const std::vector<TensorDecl>& tensors, const std::map<std::string, std::string>& metadata,
                               uint64_t* data_bytes) {
  Json h = Json::object();
  if (!metadata.empty()) {
    Json m = Json::object();
    for (const auto& kv : metadata) m.set(kv.first, Json::string(kv.second));
    h.set("__metadata__", m);
  }
  uint64_t off = 0;
  std::map<std::string, int> seen;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || seen[t.name]++)
      throw EngineError("safetensors writer: duplicate or reserved tensor name \"" + t.name + "\"", "", t.name);
    uint64_t numel = 1;
    Json shape = Json::array();
    for (int64_t d : t.shape) {
      if (d < 0) throw EngineError("safetensors writer: negative dimension in tensor \"" + t.name + "\"", "", t.name);
      numel *= uint64_t(d);
      shape.push(Json::number(double(d)));
    }
    uint64_t nb = numel * dtype_size(t.dtype);
    Json info = Json::object();
    info.set("dtype", Json::string(dtype_name(t.dtype)));
    info.set("shape", shape);
    info.set("data_offsets", Json::array().push(Json::number(double(off))).push(Json::number(double(off + nb))));
    h.set(t.name, info);
    off += nb;
  }
  std::string text = h.dump();
  while (text.size() % 8) text += ' ';
  if (data_bytes) *data_bytes = off;
  return text;
}

struct SafetensorsWriter::Impl {
  std::string path;
  AtomicFileWriter out;
  std::vector<TensorDecl> decls;
  std::vector<uint64_t> sizes;
  size_t cur = 0;          // index of the tensor being written
  uint64_t written = 0;    // bytes of the current tensor written so far
  std::vector<uint8_t> conv;
  Impl(const std::string& p) : path(p), out(p) {}
  void advance() {
    while (cur < decls.size() && written == sizes[cur]) { cur++; written = 0; }
  }
};

SafetensorsWriter::SafetensorsWriter(const std::string& path, const std::vector<TensorDecl>& tensors,
                                     const std::map<std::string, std::string>& metadata)
    : impl_(new Impl(path)) {
  std::string header = safetensors_header(tensors, metadata, &total_);
  uint8_t len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; i++) len[i] = uint8_t(n >> (8 * i));
  impl_->out.write(len, 8);
  impl_->out.write(header.data(), header.size());
  impl_->decls = tensors;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    impl_->sizes.push_back(numel * dtype_size(t.dtype));
  }
  impl_->advance();  // skip leading empty tensors
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write(const void* data, size_t nbytes) {
  Impl& s = *impl_;
  const uint8_t* p = (const uint8_t*)data;
  while (nbytes > 0) {
    if (s.cur >= s.decls.size()) throw EngineError(s.path + ": more tensor data written than declared", s.path);
    uint64_t room = s.sizes[s.cur] - s.written;
    size_t take = size_t(std::min<uint64_t>(room, nbytes));
    s.out.write(p, take);
    p += take;
    nbytes -= take;
    s.written += take;
    s.advance();
  }
}

void SafetensorsWriter::write_f32(const float* values, size_t n) {
  Impl& s = *impl_;
  if (s.cur >= s.decls.size()) {
    if (n == 0) return;
    throw EngineError(s.path + ": more tensor data written than declared", s.path);
  }
  constexpr size_t kChunk = 1 << 16;
  DType dt;
  for (size_t i = 0; i < n;) {
    if (s.cur >= s.decls.size()) throw EngineError(s.path + ": more tensor data written than declared", s.path);
    dt = s.decls[s.cur].dtype;
    // Never let one chunk span two tensors: they may have different dtypes.
    uint64_t left_in_tensor = (s.sizes[s.cur] - s.written) / dtype_size(dt);
    size_t m = std::min<size_t>(dt == DType::F32 ? n - i : std::min(kChunk, n - i), size_t(left_in_tensor));
    if (m == 0) throw EngineError(s.path + ": misaligned fp32 write into tensor \"" + s.decls[s.cur].name + "\"", s.path);
    if (dt == DType::F32) { write(values + i, m * 4); i += m; continue; }
    s.conv.resize(m * dtype_size(dt));
    convert_from_f32(values + i, s.conv.data(), dt, m);
    write(s.conv.data(), s.conv.size());
    i += m;
  }
}

void SafetensorsWriter::commit() {
  Impl& s = *impl_;
  if (s.cur != s.decls.size())
    throw EngineError(s.path + ": tensor \"" + s.decls[s.cur].name + "\" was not fully written", s.path, s.decls[s.cur].name);
  s.out.commit();
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<TensorDecl> decls;
  for (const auto& t : tensors) decls.push_back({t.name, t.dtype, t.shape});
  SafetensorsWriter w(path, decls, metadata);
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    if (numel == 0) continue;
    if (t.f32) {
      if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
        throw EngineError(path + ": cannot write fp32 values as " + dtype_name(t.dtype), path, t.name);
      w.write_f32(t.f32, size_t(numel));
    } else if (t.data) {
      w.write(t.data, size_t(numel * dtype_size(t.dtype)));
    } else {
      throw EngineError(path + ": tensor \"" + t.name + "\" has no data", path, t.name);
    }
  }
  w.commit();
}

}  // namespace nxft
