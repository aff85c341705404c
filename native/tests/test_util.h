// test_util.h — tiny helpers shared by the native test programs (each test is a standalone executable; exit
// code 0 = pass). CHECK records a failure and keeps going so one run reports every broken case.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include "util/events.h"

static int g_failures = 0;

#define CHECK(cond)                                                                              \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);              \
      g_failures++;                                                                              \
    }                                                                                            \
  } while (0)

#define CHECK_MSG(cond, ...)                                                                     \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);              \
      std::fprintf(stderr, __VA_ARGS__);                                                         \
      std::fprintf(stderr, "\n");                                                                \
      g_failures++;                                                                              \
    }                                                                                            \
  } while (0)

// Runs fn and expects it to throw an exception of type E whose message contains every `needle`.
template <typename E>
static bool expect_throw(const std::function<void()>& fn, std::initializer_list<const char*> needles,
                         const char* where, int line, std::string* msg_out = nullptr) {
  try {
    fn();
  } catch (const E& e) {
    std::string m = e.what();
    if (msg_out) *msg_out = m;
    for (const char* n : needles)
      if (m.find(n) == std::string::npos) {
        std::fprintf(stderr, "%s:%d: error message lacks \"%s\": %s\n", where, line, n, m.c_str());
        g_failures++;
        return false;
      }
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s:%d: wrong exception type: %s\n", where, line, e.what());
    g_failures++;
    return false;
  }
  std::fprintf(stderr, "%s:%d: expected an exception, none thrown\n", where, line);
  g_failures++;
  return false;
}
#define EXPECT_THROW(E, fn, ...) expect_throw<E>(fn, {__VA_ARGS__}, __FILE__, __LINE__)

// Repo root is the working directory under ctest; fixtures live beside the repo.
static const char* kFixtures = "../shared/fixtures";

// A fresh scratch folder under /tmp for this test program.
std::string test_tmp_dir(const char* name);

static int test_result(const char* name) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d check(s) FAILED\n", name, g_failures);
    return 1;
  }
  std::fprintf(stderr, "%s: all checks passed\n", name);
  return 0;
}

#include <unistd.h>
inline std::string test_tmp_dir(const char* name) {
  std::string d = std::string("/tmp/nxft-test-") + name + "-" + std::to_string(::getpid());
  std::string cmd = "rm -rf '" + d + "' && mkdir -p '" + d + "'";
  if (std::system(cmd.c_str()) != 0) { std::fprintf(stderr, "cannot create %s\n", d.c_str()); std::exit(2); }
  return d;
}
