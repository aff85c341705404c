// shards.cpp — see shards.h.
#include "train/shards.h"
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include "util/events.h"

namespace nxft {

namespace {
constexpr size_t kHeader = 24;

uint32_t le32(const unsigned char* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

void read_exact(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t got = ::pread(fd, p, n, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw EngineError(path + ": short read at byte " + std::to_string(offset), path);
    p += got;
    n -= size_t(got);
    offset += uint64_t(got);
  }
}
}  // namespace

ShardSet::ShardSet(const std::vector<std::string>& files, int vocab_size) : vocab_(vocab_size) {
  for (const std::string& path : files) {
    File f;
    f.path = path;
    f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) throw EngineError(path + ": cannot open token shard: " + std::strerror(errno), path);
    files_.push_back(f);   // closed by the destructor from here on
    struct stat st;
    if (::fstat(f.fd, &st) != 0) throw EngineError(path + ": cannot stat token shard", path);
    if (size_t(st.st_size) < kHeader)
      throw EngineError(path + ": not a token shard (" + std::to_string(st.st_size) + " bytes, header needs 24)", path);
    unsigned char h[kHeader];
    read_exact(f.fd, h, kHeader, 0, path);
    if (std::memcmp(h, "NXFTSHD1", 8) != 0) throw EngineError(path + ": bad magic (expected \"NXFTSHD1\")", path);
    const uint32_t version = le32(h + 8), T = le32(h + 12), R = le32(h + 16), flags = le32(h + 20);
    if (version != 1) throw EngineError(path + ": unsupported shard version " + std::to_string(version) + " (expected 1)", path);
    if (flags != 0) throw EngineError(path + ": unsupported shard flags " + std::to_string(flags) + " (expected 0)", path);
    if (T == 0 || T > (1u << 24)) throw EngineError(path + ": bad seq_len " + std::to_string(T), path);
    const uint64_t want = kHeader + uint64_t(R) * 3 * T * 4;
    if (uint64_t(st.st_size) != want)
      throw EngineError(path + ": size " + std::to_string(st.st_size) + " bytes does not match header (" + std::to_string(R) +
                            " rows × seq_len " + std::to_string(T) + " → " + std::to_string(want) + " bytes)",
                        path);
    if (seq_len_ == 0) seq_len_ = int(T);
    if (int(T) != seq_len_)
      throw EngineError(path + ": seq_len " + std::to_string(T) + " differs from " + files_[0].path + " (" +
                            std::to_string(seq_len_) + ")",
                        path);
    files_.back().rows = R;
    files_.back().first_row = total_rows_;
    total_rows_ += R;
  }
}

ShardSet::~ShardSet() {
  for (File& f : files_)
    if (f.fd >= 0) ::close(f.fd);
}

const ShardSet::File& ShardSet::file_of(int64_t index, int64_t* row) const {
  size_t fi = 0;
  while (fi + 1 < files_.size() && index >= files_[fi + 1].first_row) fi++;
  const File& f = files_[fi];
  *row = index - f.first_row;
  if (index < 0 || *row >= f.rows) throw EngineError("internal: shard row " + std::to_string(index) + " out of range");
  return f;
}

void ShardSet::read_row(int64_t index, int32_t* tokens, int32_t* targets, int32_t* positions) const {
  int64_t r = 0;
  const File& f = file_of(index, &r);
  const int T = seq_len_;
  std::vector<unsigned char> buf(size_t(T) * 12);
  read_exact(f.fd, buf.data(), buf.size(), kHeader + uint64_t(r) * uint64_t(T) * 12, f.path);
  auto at = [&](int arr, int t) { return int32_t(le32(buf.data() + (size_t(arr) * T + t) * 4)); };
  for (int t = 0; t < T; t++) {
    const int32_t tok = at(0, t), tg = at(1, t), pos = at(2, t);
    auto bad = [&](const std::string& what) {
      throw EngineError(f.path + ": row " + std::to_string(r) + ", position " + std::to_string(t) + ": " + what, f.path);
    };
    if (tok < 0 || tok >= vocab_) bad("token id " + std::to_string(tok) + " outside the vocabulary [0, " + std::to_string(vocab_) + ")");
    if (tg != -100 && (tg < 0 || tg >= vocab_)) bad("target " + std::to_string(tg) + " is neither -100 nor a vocabulary id");
    if (pos < 0) bad("negative position " + std::to_string(pos));
    if (t > 0 && pos != 0 && pos != positions[t - 1] + 1)
      bad("position " + std::to_string(pos) + " neither starts a document (0) nor follows " + std::to_string(positions[t - 1]));
    tokens[t] = tok;
    targets[t] = tg;
    positions[t] = pos;
  }
}

int64_t ShardSet::count_targets(int64_t index) const {
  const int T = seq_len_;
  std::vector<int32_t> a(static_cast<size_t>(T) * 3);
  read_row(index, a.data(), a.data() + T, a.data() + 2 * T);
  int64_t n = 0;
  for (int t = 0; t < T; t++) n += a[size_t(T + t)] != -100;
  return n;
}

bool ShardSet::starts_document(int64_t index) const {
  int64_t r = 0;
  const File& f = file_of(index, &r);
  const int T = seq_len_;
  unsigned char buf[4];
  read_exact(f.fd, buf, 4, kHeader + uint64_t(r) * uint64_t(T) * 12 + uint64_t(T) * 8, f.path);   // positions[0]
  return int32_t(le32(buf)) == 0;
}

int ShardSet::targets_end(int64_t index, int chunk) const {
  int64_t r = 0;
  const File& f = file_of(index, &r);
  const int T = seq_len_;
  const uint64_t targets_at = kHeader + uint64_t(r) * uint64_t(T) * 12 + uint64_t(T) * 4;   // tokens[T] come first
  std::vector<unsigned char> buf(size_t(std::min(chunk, T)) * 4);
  for (int hi = T; hi > 0; hi -= chunk) {
    const int lo = std::max(0, hi - chunk);
    read_exact(f.fd, buf.data(), size_t(hi - lo) * 4, targets_at + uint64_t(lo) * 4, f.path);
    for (int t = hi - 1; t >= lo; t--)
      if (int32_t(le32(buf.data() + size_t(t - lo) * 4)) != -100) return t + 1;
  }
  return 0;
}

int trim_granule(int T) { return std::max(16, (T / 8 + 15) / 16 * 16); }

int trimmed_length_for(int need, int T) {
  const int granule = trim_granule(T);
  return std::min(T, std::max(granule, (need + granule - 1) / granule * granule));
}

// The index after one row's last target (0 without one).
static int row_targets_end(const int32_t* targets, int T) {
  for (int t = T - 1; t >= 0; t--)
    if (targets[t] != -100) return t + 1;
  return 0;
}

int trimmed_row_length(const int32_t* targets, int B, int T) {
  int need = 0;
  for (int b = 0; b < B; b++) need = std::max(need, row_targets_end(targets + size_t(b) * T, T));
  return trimmed_length_for(need, T);
}

static bool env_switch(const char* name) {   // unset or 1: on; 0: off
  const char* e = std::getenv(name);
  if (!e || !*e) return true;
  if (std::string(e) != "0" && std::string(e) != "1")
    throw EngineError(std::string("environment ") + name + "=\"" + e + "\": must be 0 or 1", "", name);
  return std::string(e) == "1";
}
bool trim_rows_enabled() { return env_switch("NXFT_TRIM_ROWS"); }
bool padding_free_enabled() { return env_switch("NXFT_PADDING_FREE"); }

RowsToRun rows_to_run(const std::vector<int>& ends, bool rows_start_documents, int T) {
  const int B = int(ends.size());
  if (!trim_rows_enabled()) return {B, T, false};
  int64_t need = 0, total = 0;
  for (int e : ends) {
    need = std::max<int64_t>(need, e);
    total += e;
  }
  const RowsToRun cut{B, trimmed_length_for(int(need), T), false};
  if (B < 2 || total == 0 || !rows_start_documents || !padding_free_enabled()) return cut;
  const int64_t granule = trim_granule(T), length = (total + granule - 1) / granule * granule;
  if (length * 8 > int64_t(cut.B) * cut.T * 7 || length > INT32_MAX) return cut;
  return {1, int(length), true};
}

RowsToRun cut_rows_after_last_target(std::vector<int32_t>* tokens, std::vector<int32_t>* targets,
                                     std::vector<int32_t>* positions, int B, int T) {
  std::vector<int> ends(static_cast<size_t>(B), 0);
  bool starts = true;
  for (int b = 0; b < B; b++) {
    ends[size_t(b)] = row_targets_end(targets->data() + size_t(b) * T, T);
    starts = starts && (*positions)[size_t(b) * T] == 0;
  }
  const RowsToRun run = rows_to_run(ends, starts, T);
  if (run.end_to_end) {   // row b's first ends[b] tokens go to offset Σ ends[<b]: never past their source, so in place
    size_t at = 0;
    for (int b = 0; b < B; b++) {
      for (auto* a : {tokens, targets, positions})
        std::copy_n(a->begin() + ptrdiff_t(b) * T, ends[size_t(b)], a->begin() + ptrdiff_t(at));
      at += size_t(ends[size_t(b)]);
    }
    for (size_t t = at; t < size_t(run.T); t++) {   // the padding document: token 0 (any id: no target, nothing reads it)
      (*tokens)[t] = 0;
      (*targets)[t] = -100;
      (*positions)[t] = int32_t(t - at);
    }
  } else if (run.T != T) {
    for (auto* a : {tokens, targets, positions})
      for (int b = 1; b < B; b++) std::copy_n(a->begin() + ptrdiff_t(b) * T, run.T, a->begin() + ptrdiff_t(b) * run.T);
  }
  for (auto* a : {tokens, targets, positions}) a->resize(size_t(run.B) * run.T);
  return run;
}

}  // namespace nxft
