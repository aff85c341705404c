// registry.cpp — storage for self-registered commands (see command.h). A function-local map avoids the
// static-initialisation-order problem between translation units.
#include "commands/command.h"

#include <map>
#include <stdexcept>

namespace nxft {

static std::map<std::string, CommandFn>& registry() {
  static std::map<std::string, CommandFn> r;
  return r;
}

RegisterCommand::RegisterCommand(const char* name, CommandFn fn) {
  auto& r = registry();
  if (r.count(name)) throw std::logic_error(std::string("command registered twice: ") + name);
  r[name] = fn;
}

CommandFn find_command(const std::string& name) {
  auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second;
}

std::vector<std::string> command_names() {
  std::vector<std::string> out;
  for (const auto& kv : registry()) out.push_back(kv.first);
  return out;
}

}  // namespace nxft
