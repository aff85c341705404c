// fs_test.cpp — atomic outputs: write_file_atomic/AtomicFileWriter leave either nothing or the complete file (no
// temp file behind after commit or after an abandoned writer), a 160 MB streamed write (past the 64 MB
// writeback blocks) reads back byte for byte, pad_to, make_dirs, and the path helpers.
#include <unistd.h>
#include <cstring>
#include "test_util.h"
#include "util/fs.h"
#include "util/rng.h"

using namespace nxft;

int main() {
  std::string dir = test_tmp_dir("fs");
  const std::string tmp_suffix = ".tmp-" + std::to_string(::getpid());

  write_file_atomic(dir + "/a.txt", "hello");
  CHECK(read_file(dir + "/a.txt") == "hello" && !path_exists(dir + "/a.txt" + tmp_suffix));
  write_file_atomic(dir + "/a.txt", "replaced");
  CHECK(read_file(dir + "/a.txt") == "replaced");
  {
    AtomicFileWriter w(dir + "/b.bin");
    w.write("xyz", 3);
    CHECK(path_exists(dir + "/b.bin" + tmp_suffix) && !path_exists(dir + "/b.bin"));
  }  // abandoned: no output, no temp
  CHECK(!path_exists(dir + "/b.bin") && !path_exists(dir + "/b.bin" + tmp_suffix));
  {
    AtomicFileWriter w(dir + "/c.bin");
    w.write("abc", 3);
    w.pad_to(8, 0x20);
    CHECK(w.offset() == 8);
    w.pad_to(8);
    CHECK(w.offset() == 8);
    w.commit();
    EXPECT_THROW(EngineError, [&] { w.write("x", 1); }, "write after commit");
  }
  CHECK(read_file(dir + "/c.bin") == "abc     ");

  // 160 MB in mixed write sizes (small buffered ones and big direct ones).
  {
    Rng rng(3);
    std::vector<uint8_t> block(size_t(7) << 20);
    for (auto& b : block) b = uint8_t(rng.next_u64());
    AtomicFileWriter w(dir + "/big.bin");
    uint64_t total = 0, sum_written = 0;
    size_t k = 0;
    while (total < (uint64_t(160) << 20)) {
      size_t n = (k % 3 == 0) ? block.size() : size_t(1 + (k * 7919) % 100000);
      size_t start = k % 1000;
      w.write(block.data() + start, n - (n == block.size() ? start : 0));
      for (size_t i = 0; i < n - (n == block.size() ? start : 0); i++) sum_written = sum_written * 31 + block[start + i];
      total += n - (n == block.size() ? start : 0);
      k++;
    }
    w.commit();
    std::string back = read_file(dir + "/big.bin");
    CHECK(back.size() == total);
    uint64_t sum_read = 0;
    for (unsigned char c : back) sum_read = sum_read * 31 + c;
    CHECK(sum_read == sum_written);
  }

  make_dirs(dir + "/x/y/z");
  CHECK(path_exists(dir + "/x/y/z"));
  make_dirs(dir + "/x/y/z");  // again: fine
  EXPECT_THROW(EngineError, [&] { make_dirs(dir + "/a.txt/sub"); }, "a.txt");
  EXPECT_THROW(EngineError, [&] { read_file(dir + "/nope"); }, "/nope", "cannot open");
  EXPECT_THROW(EngineError, [&] { read_file(dir); }, "is a directory");
  EXPECT_THROW(EngineError, [&] { write_file_atomic(dir + "/missing-dir/f", "x"); }, "missing-dir/f");
  copy_file_atomic(dir + "/c.bin", dir + "/x/c2.bin");
  CHECK(read_file(dir + "/x/c2.bin") == "abc     ");
  CHECK(path_join("/a", "b") == "/a/b" && path_join("/a/", "b") == "/a/b" && path_join("/a", "/b") == "/b");
  CHECK(dirname_of("/a/b/c.json") == "/a/b" && dirname_of("c.json") == "." && dirname_of("/c") == "/");
  CHECK(basename_of("/a/b/c.json") == "c.json" && basename_of("c") == "c");
  std::system(("rm -rf '" + dir + "'").c_str());
  return test_result("fs_test");
}
