// fs.h — file helpers. Every output is written atomically: to "<path>.tmp-<pid>" in the same folder,
// fsync'd, then renamed over <path>, so a killed run never leaves something that looks like output.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace nxft {

std::string read_file(const std::string& path);                  // throws EngineError naming the path
void write_file_atomic(const std::string& path, const std::string& bytes);
void make_dirs(const std::string& path);                          // mkdir -p
bool path_exists(const std::string& path);
std::string path_join(const std::string& a, const std::string& b);
std::string dirname_of(const std::string& path);
std::string basename_of(const std::string& path);
void copy_file_atomic(const std::string& from, const std::string& to);
// Files of an HF folder that are not weights or config (tokenizer files, generation_config.json, README, …), sorted:
// what a derived model folder (merged, quantized) copies from its base.
std::vector<std::string> hf_companion_files(const std::string& dir);

// Streaming atomic writer for big files (safetensors, GGUF): write() appends, commit() fsyncs and renames,
// the destructor removes the temp file unless committed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::string& path);
  ~AtomicFileWriter();
  void write(const void* data, size_t n);
  void pad_to(uint64_t alignment, uint8_t byte = 0);   // pad with `byte` until offset() % alignment == 0
  uint64_t offset() const { return offset_; }
  void commit();
 private:
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  uint64_t flushed_ = 0;       // bytes handed to the kernel (write()) so far
  uint64_t writeback_ = 0;     // bytes whose writeback has been started
  bool committed_ = false;
  std::vector<uint8_t> buf_;
  void flush_buf();
  void raw_write(const uint8_t* p, size_t n);
  void stream_writeback();
};

}  // namespace nxft
