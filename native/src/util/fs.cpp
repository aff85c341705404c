// fs.cpp — file helpers with atomic outputs: write "<path>.tmp-<pid>" in the same folder, fsync, rename over
// <path>, fsync the folder, so a crash or kill leaves either the old file or the complete new one.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1  // sync_file_range
#endif
#include "util/fs.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/events.h"

namespace nxft {

static std::string errno_text() { return std::strerror(errno); }

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError(path + ": cannot open: " + errno_text(), path);
  struct stat st;
  if (::fstat(fd, &st) != 0) { ::close(fd); throw EngineError(path + ": cannot stat: " + errno_text(), path); }
  if (S_ISDIR(st.st_mode)) { ::close(fd); throw EngineError(path + ": is a directory, expected a file", path); }
  std::string out;
  out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  while (true) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      throw EngineError(path + ": read error: " + errno_text(), path);
    }
    if (r == 0) break;
    out.append(buf, size_t(r));
  }
  ::close(fd);
  return out;
}

static void fsync_dir_of(const std::string& path) {
  int dfd = ::open(dirname_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) { ::fsync(dfd); ::close(dfd); }  // best effort: some filesystems refuse fsync on folders
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFileWriter w(path);
  w.write(bytes.data(), bytes.size());
  w.commit();
}

void make_dirs(const std::string& path) {
  if (path.empty()) return;
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    cur = path.substr(0, j);
    if (!cur.empty()) {
      if (::mkdir(cur.c_str(), 0777) != 0 && errno != EEXIST)
        throw EngineError(cur + ": cannot create folder: " + errno_text(), path);
      struct stat st;
      if (::stat(cur.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw EngineError(cur + ": exists and is not a folder", path);
    }
    i = j + 1;
  }
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a.empty() || (!b.empty() && b[0] == '/')) return b;
  if (a.back() == '/') return a + b;
  return a + "/" + b;
}

std::string dirname_of(const std::string& path) {
  size_t p = path.find_last_of('/');
  if (p == std::string::npos) return ".";
  if (p == 0) return "/";
  return path.substr(0, p);
}

std::string basename_of(const std::string& path) {
  size_t p = path.find_last_of('/');
  return p == std::string::npos ? path : path.substr(p + 1);
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw EngineError(from + ": cannot open: " + errno_text(), from);
  AtomicFileWriter w(to);
  std::vector<char> buf(1 << 20);
  while (true) {
    ssize_t r = ::read(fd, buf.data(), buf.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      throw EngineError(from + ": read error: " + errno_text(), from);
    }
    if (r == 0) break;
    w.write(buf.data(), size_t(r));
  }
  ::close(fd);
  w.commit();
}

// ---- AtomicFileWriter ------------------------------------------------------------------------------------

static constexpr size_t kWriteBuffer = 4u << 20;

AtomicFileWriter::AtomicFileWriter(const std::string& path) : path_(path) {
  tmp_ = path + ".tmp-" + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw EngineError(tmp_ + ": cannot create: " + errno_text(), path);
  buf_.reserve(kWriteBuffer);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

// Big outputs (a 16 GB merged model) should not pile up as dirty page cache until the final fsync: every
// kWritebackBlock bytes we start writeback of the new block, wait for the block before it, and drop that one
// from the page cache (Linux sync_file_range + posix_fadvise). The data is still fsync'd at commit().
static constexpr uint64_t kWritebackBlock = 64u << 20;

void AtomicFileWriter::raw_write(const uint8_t* p, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd_, p + done, n - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw EngineError(tmp_ + ": write error: " + errno_text(), path_);
    }
    done += size_t(w);
  }
  flushed_ += n;
  stream_writeback();
}

void AtomicFileWriter::stream_writeback() {
#ifdef __linux__
  while (flushed_ - writeback_ >= kWritebackBlock) {
    ::sync_file_range(fd_, off_t(writeback_), off_t(kWritebackBlock), SYNC_FILE_RANGE_WRITE);
    if (writeback_ >= kWritebackBlock) {
      off_t prev = off_t(writeback_ - kWritebackBlock);
      ::sync_file_range(fd_, prev, off_t(kWritebackBlock),
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
      ::posix_fadvise(fd_, prev, off_t(kWritebackBlock), POSIX_FADV_DONTNEED);
    }
    writeback_ += kWritebackBlock;
  }
#endif
}

void AtomicFileWriter::flush_buf() {
  if (!buf_.empty()) raw_write(buf_.data(), buf_.size());
  buf_.clear();
}

void AtomicFileWriter::write(const void* data, size_t n) {
  if (committed_ || fd_ < 0) throw EngineError(path_ + ": write after commit", path_);
  const uint8_t* p = (const uint8_t*)data;
  offset_ += n;
  if (buf_.size() + n <= kWriteBuffer) {
    buf_.insert(buf_.end(), p, p + n);
    return;
  }
  flush_buf();
  if (n >= kWriteBuffer) {
    raw_write(p, n);  // big block: write straight through
  } else {
    buf_.insert(buf_.end(), p, p + n);
  }
}

void AtomicFileWriter::pad_to(uint64_t alignment, uint8_t byte) {
  if (alignment == 0) return;
  uint64_t rem = offset_ % alignment;
  if (rem == 0) return;
  std::vector<uint8_t> pad(size_t(alignment - rem), byte);
  write(pad.data(), pad.size());
}

void AtomicFileWriter::commit() {
  if (committed_) return;
  flush_buf();
  if (::fsync(fd_) != 0) throw EngineError(tmp_ + ": fsync failed: " + errno_text(), path_);
  if (::close(fd_) != 0) { fd_ = -1; throw EngineError(tmp_ + ": close failed: " + errno_text(), path_); }
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw EngineError(path_ + ": cannot rename temp file into place: " + errno_text(), path_);
  committed_ = true;
  fsync_dir_of(path_);
}

std::vector<std::string> hf_companion_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) throw EngineError(dir + ": cannot list folder", dir);
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.empty() || n[0] == '.') continue;
    auto ends = [&](const char* suf) {
      size_t m = std::strlen(suf);
      return n.size() >= m && n.compare(n.size() - m, m, suf) == 0;
    };
    if (n == "config.json" || ends(".safetensors") || ends(".safetensors.index.json") || ends(".bin") || ends(".pt") ||
        ends(".pth") || ends(".gguf") || ends(".bin.index.json") || n.find(".tmp-") != std::string::npos)
      continue;
    std::string full = path_join(dir, n);
    struct stat st;
    if (::stat(full.c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace nxft
