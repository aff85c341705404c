// command.h — the command registry. Each command lives in src/commands/<name>.cpp and registers itself:
//
//   static int cmd_train(const Json& job, const std::string& job_path) { ...; return 0; }
//   static RegisterCommand reg("train", &cmd_train);
//
// main() looks the command up by name, parses --job, and turns exceptions into `error` events
// (EngineError → exit 1, anything else → exit 2). A command emits its own `start`/`progress`/`done` events and
// returns the process exit code (0 on success). The engine is built as a CMake OBJECT library, so these
// static registrars are never dropped by the linker.
#pragma once
#include <string>
#include <vector>
#include "util/json.h"

namespace nxft {

using CommandFn = int (*)(const Json& job, const std::string& job_path);

struct RegisterCommand {
  RegisterCommand(const char* name, CommandFn fn);
};

CommandFn find_command(const std::string& name);   // nullptr when unknown
std::vector<std::string> command_names();          // sorted

}  // namespace nxft
