// events.cpp — JSON-lines events on stdout. One mutex guards the whole line so events from worker threads never
// interleave; each line is flushed at once so the executor renders progress live.
#include "util/events.h"

#include <cstdio>
#include <mutex>

namespace nxft {

static std::mutex g_event_mutex;

void emit_event(const std::string& name, const Json& fields) {
  Json line = Json::object();
  line.set("event", Json::string(name));
  if (fields.is_object()) {
    for (const auto& kv : fields.as_object())
      if (kv.first != "event") line.set(kv.first, kv.second);
  } else if (!fields.is_null()) {
    throw std::logic_error("emit_event: fields must be an object or null");
  }
  std::string text = line.dump();
  text += '\n';
  std::lock_guard<std::mutex> lock(g_event_mutex);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

void emit_warning(const std::string& message) {
  emit_event("warning", Json::object().set("message", Json::string(message)));
}

void emit_progress(const std::string& stage, double done, double total, const std::string& unit,
                   const std::string& message) {
  Json f = Json::object();
  f.set("stage", Json::string(stage)).set("done", Json::number(done)).set("total", Json::number(total));
  if (!unit.empty()) f.set("unit", Json::string(unit));
  if (!message.empty()) f.set("message", Json::string(message));
  emit_event("progress", f);
}

void emit_error(const std::string& message, const std::string& file, const std::string& field) {
  Json f = Json::object();
  f.set("message", Json::string(message));
  if (!file.empty()) f.set("file", Json::string(file));
  if (!field.empty()) f.set("field", Json::string(field));
  emit_event("error", f);
}

}  // namespace nxft
