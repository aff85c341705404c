// job.h — typed, strict access to a job file (docs/engine-protocol.md "Job files").
//
//   Json job = Json::parse_file(job_path);
//   JobReader r(job, job_path);
//   std::string base = r.path("base");                // required absolute path
//   double lr = r.num("lr", 2e-4);                    // optional; absent or null → default
//   JobReader t = r.sub("train");                     // nested object; errors say "train.lr"
//   int64_t steps = t.integer("steps", 0);
//   t.finish();  r.finish();                          // unknown keys → EngineError naming them
//
// Every error is an EngineError whose message names the job file and the dotted field, and whose
// `file`/`field` members carry the same (the `error` event reports both).
// The top-level "command" key is always accepted (main() checks it matches the command being run).
#pragma once
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>
#include "util/events.h"
#include "util/json.h"

namespace nxft {

class JobReader {
 public:
  // `obj` must outlive the reader. `prefix` is the dotted path of `obj` inside the job ("" at top level).
  JobReader(const Json& obj, std::string job_path, std::string prefix = "");
  JobReader(Json&&, std::string, std::string = "") = delete;   // would dangle: keep the Json alive yourself

  bool has(const std::string& key) const;          // present and not null
  bool present(const std::string& key) const;      // present, possibly null

  // Required values (absent or null → error).
  std::string str(const std::string& key);
  double num(const std::string& key);
  int64_t integer(const std::string& key);
  bool boolean(const std::string& key);
  std::string path(const std::string& key);        // string, must be an absolute path
  // Optional values (absent or null → default).
  std::string str(const std::string& key, const std::string& def);
  double num(const std::string& key, double def);
  int64_t integer(const std::string& key, int64_t def);
  bool boolean(const std::string& key, bool def);
  std::string opt_path(const std::string& key);    // "" when absent or null; else absolute path
  // str() restricted to a set of allowed values (error lists them).
  std::string choice(const std::string& key, const std::vector<std::string>& allowed, const std::string& def);
  std::string choice(const std::string& key, const std::vector<std::string>& allowed);

  // Integer in [lo, hi] (inclusive).
  int64_t integer_in(const std::string& key, int64_t lo, int64_t hi, int64_t def);
  double num_in(const std::string& key, double lo, double hi, double def);

  std::vector<std::string> str_list(const std::string& key);                // required array of strings
  std::vector<std::string> str_list(const std::string& key, const std::vector<std::string>& def);
  std::vector<std::string> path_list(const std::string& key);               // required array of absolute paths
  std::vector<std::string> path_list(const std::string& key, const std::vector<std::string>& def);
  std::vector<int64_t> int_list(const std::string& key);
  std::vector<int64_t> int_list(const std::string& key, const std::vector<int64_t>& def);

  const Json& obj(const std::string& key);         // required object (raw access; marks key as used)
  const Json& any(const std::string& key);         // any value, required present (null allowed)
  JobReader sub(const std::string& key);           // required nested object
  // Optional nested object: returns false (and leaves *out untouched) when absent or null.
  bool opt_sub(const std::string& key, std::unique_ptr<JobReader>* out);

  // Throws EngineError naming the first key that was never read (unknown key).
  void finish() const;

  // Error helper: throw EngineError naming the job file and `key` (dotted), with `what` as the message.
  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  std::string field_name(const std::string& key) const;   // "train.lr"
  const std::string& job_path() const { return job_path_; }

 private:
  const Json* obj_;
  std::string job_path_, prefix_;
  std::set<std::string> used_;
  const Json* get(const std::string& key, bool required);  // marks used; nullptr when absent/null and !required
  const Json& typed(const std::string& key, Json::Type type, const char* what);
};

}  // namespace nxft
