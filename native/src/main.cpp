// main.cpp — `finetune-engine <command> --job <file>` and `finetune-engine version`.
// Commands self-register (commands/command.h). Every failure becomes an `error` event on stdout:
// EngineError → exit 1, any other exception → exit 2; the process never dies with an uncaught exception.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "commands/command.h"
#include "engine_version.h"   // generated at build time: kEngineSourceHash (SHA-256 of the engine sources)
#include "util/backends.h"
#include "util/events.h"
#include "util/json.h"

using namespace nxft;

static const char* kUsage =
    "usage: finetune-engine <command> --job <job.json>\n"
    "       finetune-engine version\n"
    "commands: ";

static void print_usage() {
  std::fprintf(stderr, "%s", kUsage);
  auto names = command_names();
  for (size_t i = 0; i < names.size(); i++) std::fprintf(stderr, "%s%s", i ? ", " : "", names[i].c_str());
  std::fprintf(stderr, "\n");
}

static int cmd_version() {
  Json backends = Json::array();
  backends.push(Json::string("cpu"));
  if (cuda_backend_available()) backends.push(Json::string("cuda"));
  emit_event("version", Json::object()
                            .set("version", Json::string(std::string(kEngineVersion) + "+" + kEngineSourceHash))
                            .set("backends", backends));
  return 0;
}

static int run(int argc, char** argv) {
  if (argc < 2) {
    print_usage();
    throw EngineError("no command given (expected: finetune-engine <command> --job <job.json>)");
  }
  std::string command = argv[1];
  if (command == "version" || command == "--version") {
    if (argc != 2) throw EngineError("version takes no arguments");
    return cmd_version();
  }
  if (command == "--help" || command == "-h" || command == "help") {
    print_usage();
    return 0;
  }
  CommandFn fn = find_command(command);
  if (!fn) {
    print_usage();
    throw EngineError("unknown command \"" + command + "\"");
  }
  std::string job_path;
  for (int i = 2; i < argc; i++) {
    if (std::strcmp(argv[i], "--job") == 0 && i + 1 < argc && job_path.empty()) {
      job_path = argv[++i];
    } else {
      throw EngineError(std::string("unexpected argument \"") + argv[i] + "\" (expected --job <job.json>)");
    }
  }
  if (job_path.empty()) throw EngineError(command + ": missing --job <job.json>");
  Json job;
  try {
    job = Json::parse_file(job_path);
  } catch (const JsonError& e) {
    throw EngineError(std::string("invalid job file: ") + e.what(), job_path);
  }
  if (!job.is_object()) throw EngineError(job_path + ": the job must be a JSON object", job_path);
  if (const Json* c = job.find("command")) {
    if (!c->is_string() || c->as_string() != command)
      throw EngineError(job_path + ": command: job is for \"" + (c->is_string() ? c->as_string() : c->dump()) +
                            "\" but the engine was asked to run \"" + command + "\"",
                        job_path, "command");
  }
  return fn(job, job_path);
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const EngineError& e) {
    emit_error(e.what(), e.file, e.field);
    return 1;
  } catch (const JsonError& e) {  // a JSON error that escaped a command: still bad input
    emit_error(e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    try { emit_error("out of memory"); } catch (...) {}
    return 2;
  } catch (const std::exception& e) {
    try { emit_error(std::string("internal error: ") + e.what()); } catch (...) {}
    return 2;
  } catch (...) {
    try { emit_error("internal error: unknown exception"); } catch (...) {}
    return 2;
  }
}
