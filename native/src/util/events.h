// events.h — the engine's only voice: JSON-lines events on stdout (docs/engine-protocol.md).
// Thread-safe; each event is one line, flushed at once so the executor can render progress live.
#pragma once
#include <stdexcept>
#include <string>
#include "util/json.h"

namespace nxft {

// Emit {"event": name, ...fields}. `fields` must be an object (or null for none).
void emit_event(const std::string& name, const Json& fields = Json());
void emit_warning(const std::string& message);
// {"event":"progress","stage":…,"done":…,"total":…[,"unit":…][,"message":…]} — what executors render as a bar.
void emit_progress(const std::string& stage, double done, double total, const std::string& unit = "",
                   const std::string& message = "");
// An error carries the message and, where known, the file and field at fault.
void emit_error(const std::string& message, const std::string& file = "", const std::string& field = "");

// What every fatal engine error is thrown as; main() turns it into an `error` event and exit code 1.
struct EngineError : std::runtime_error {
  std::string file, field;
  EngineError(const std::string& msg, std::string file_ = "", std::string field_ = "")
      : std::runtime_error(msg), file(std::move(file_)), field(std::move(field_)) {}
};

}  // namespace nxft
