// cli_test.cpp — the finetune-engine executable as the executor sees it: `version` prints one version event;
// every failure (no command, unknown command, missing/invalid job file, wrong command in the job, unknown or
// mistyped field) prints exactly one `error` event on stdout naming the file/field and exits 1; stdout carries
// only JSON lines. argv[1] is the executable (ctest passes it).
#include <sys/wait.h>
#include <cstdio>
#include <string>
#include <vector>
#include "test_util.h"
#include "util/fs.h"
#include "util/json.h"

using namespace nxft;

struct RunResult { int code; std::vector<Json> events; };

static RunResult run(const std::string& cmdline) {
  RunResult r{-1, {}};
  FILE* p = ::popen((cmdline + " 2>/dev/null").c_str(), "r");
  if (!p) return r;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = ::pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  size_t pos = 0;
  while (pos < out.size()) {
    size_t e = out.find('\n', pos);
    if (e == std::string::npos) { std::fprintf(stderr, "stdout does not end with a newline: %s\n", out.c_str()); g_failures++; break; }
    try {
      Json j = Json::parse(out.substr(pos, e - pos), "stdout");
      if (!j.is_object() || !j.has("event")) throw JsonError("line without \"event\"");
      r.events.push_back(j);
    } catch (const JsonError& err) {
      std::fprintf(stderr, "stdout line is not a JSON event (%s): %s\n", err.what(), out.substr(pos, e - pos).c_str());
      g_failures++;
    }
    pos = e + 1;
  }
  return r;
}

static void expect_error(const RunResult& r, const std::string& needle, const std::string& field, int line) {
  bool ok = r.code == 1 && r.events.size() == 1 && r.events[0].at("event").as_string() == "error";
  std::string msg = ok ? r.events[0].at("message").as_string() : "";
  if (!ok || msg.find(needle) == std::string::npos ||
      (!field.empty() && (!r.events[0].has("field") || r.events[0].at("field").as_string() != field))) {
    std::fprintf(stderr, "line %d: expected exit 1 with one error event containing \"%s\" (field %s); got exit %d, %zu events%s%s\n", line,
                 needle.c_str(), field.c_str(), r.code, r.events.size(), r.events.empty() ? "" : ": ",
                 r.events.empty() ? "" : r.events[0].dump().c_str());
    g_failures++;
  }
}
#define EXPECT_ERROR(r, needle, field) expect_error(r, needle, field, __LINE__)

int main(int argc, char** argv) {
  if (argc < 2) { std::fprintf(stderr, "usage: cli_test <path to finetune-engine>\n"); return 2; }
  const std::string exe = std::string("'") + argv[1] + "'";
  std::string dir = test_tmp_dir("cli");

  RunResult v = run(exe + " version");
  CHECK(v.code == 0 && v.events.size() == 1);
  if (!v.events.empty()) {
    const Json& e = v.events[0];
    CHECK(e.at("event").as_string() == "version");
    std::string ver = e.at("version").as_string();
    CHECK_MSG(ver.size() == 6 + 16 && ver.compare(0, 6, "0.1.0+") == 0 && ver.find_first_not_of("0123456789abcdef", 6) == std::string::npos,
              "version %s", ver.c_str());
    CHECK(e.at("backends").size() >= 1 && e.at("backends").as_array()[0].as_string() == "cpu");
  }
  EXPECT_ERROR(run(exe), "no command given", "");
  EXPECT_ERROR(run(exe + " frobnicate --job /x.json"), "unknown command \"frobnicate\"", "");
  EXPECT_ERROR(run(exe + " merge"), "missing --job", "");
  EXPECT_ERROR(run(exe + " merge --job " + dir + "/missing.json"), "missing.json", "");
  write_file_atomic(dir + "/bad.json", "{\n  \"command\": \"merge\",\n  \"base\": \"/a\"\n  \"x\": 1\n}");
  EXPECT_ERROR(run(exe + " merge --job " + dir + "/bad.json"), "bad.json:4:3: expected ',' or '}'", "");
  write_file_atomic(dir + "/wrong.json", R"({"command":"init","config":"/c.json","out":"/o"})");
  EXPECT_ERROR(run(exe + " merge --job " + dir + "/wrong.json"), "job is for \"init\"", "command");
  write_file_atomic(dir + "/unknown.json", R"({"command":"merge","base":"/b","adapter":"/a","dtype":"bf16","out":"/o","sheds":1})");
  EXPECT_ERROR(run(exe + " merge --job " + dir + "/unknown.json"), "unknown.json: sheds: unknown field", "sheds");
  write_file_atomic(dir + "/type.json", R"({"command":"init","config":"/c.json","seed":"zero","out":"/o"})");
  EXPECT_ERROR(run(exe + " init --job " + dir + "/type.json"), "seed: expected an integer, got a string", "seed");
  write_file_atomic(dir + "/rel.json", R"({"command":"init","config":"c.json","out":"/o"})");
  EXPECT_ERROR(run(exe + " init --job " + dir + "/rel.json"), "config: expected an absolute path", "config");
  write_file_atomic(dir + "/nocfg.json", R"({"command":"init","config":")" + dir + R"(/none/config.json","out":")" + dir + R"(/o"})");
  EXPECT_ERROR(run(exe + " init --job " + dir + "/nocfg.json"), "none/config.json: cannot open", "");
  EXPECT_ERROR(run(exe + " merge --job " + dir + "/bad.json extra"), "unexpected argument \"extra\"", "");

  // A good init run: start, progress, done (with the files), exit 0.
  write_file_atomic(dir + "/cfg.json", R"({"model_type":"llama","hidden_size":16,"intermediate_size":32,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":40})");
  write_file_atomic(dir + "/ok.json", R"({"command":"init","config":")" + dir + R"(/cfg.json","out":")" + dir + R"(/model"})");
  RunResult ok = run(exe + " init --job " + dir + "/ok.json");
  CHECK(ok.code == 0 && ok.events.size() >= 3);
  if (ok.events.size() >= 3) {
    CHECK(ok.events.front().at("event").as_string() == "start" && ok.events.front().at("command").as_string() == "init");
    CHECK(ok.events.back().at("event").as_string() == "done" && ok.events.back().at("summary").at("files").size() == 2);
  }
  CHECK(path_exists(dir + "/model/model.safetensors") && path_exists(dir + "/model/config.json"));
  std::system(("rm -rf '" + dir + "'").c_str());
  return test_result("cli_test");
}
