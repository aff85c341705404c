// job.cpp — JobReader: strict typed access to job files with errors that name the file and dotted field.
#include "util/job.h"

#include <cmath>

namespace nxft {

static const char* kind_of(const Json& j) { return json_type_name(j.type()); }

JobReader::JobReader(const Json& obj, std::string job_path, std::string prefix)
    : obj_(&obj), job_path_(std::move(job_path)), prefix_(std::move(prefix)) {
  if (!obj.is_object()) {
    std::string where = prefix_.empty() ? "the job" : prefix_;
    throw EngineError(job_path_ + ": " + where + " must be a JSON object, got " + kind_of(obj), job_path_, prefix_);
  }
  if (prefix_.empty()) used_.insert("command");
}

std::string JobReader::field_name(const std::string& key) const {
  return prefix_.empty() ? key : prefix_ + "." + key;
}

void JobReader::fail(const std::string& key, const std::string& what) const {
  std::string f = field_name(key);
  throw EngineError(job_path_ + ": " + f + ": " + what, job_path_, f);
}

bool JobReader::present(const std::string& key) const { return obj_->find(key) != nullptr; }
bool JobReader::has(const std::string& key) const {
  const Json* j = obj_->find(key);
  return j && !j->is_null();
}

const Json* JobReader::get(const std::string& key, bool required) {
  used_.insert(key);
  const Json* j = obj_->find(key);
  if (!j || j->is_null()) {
    if (required) fail(key, j ? "must not be null" : "missing required field");
    return nullptr;
  }
  return j;
}

const Json& JobReader::typed(const std::string& key, Json::Type type, const char* what) {
  const Json* j = get(key, true);
  if (j->type() != type) fail(key, std::string("expected ") + what + ", got " + kind_of(*j));
  return *j;
}

std::string JobReader::str(const std::string& key) { return typed(key, Json::Type::String, "a string").as_string(); }
double JobReader::num(const std::string& key) { return typed(key, Json::Type::Number, "a number").as_number(); }
bool JobReader::boolean(const std::string& key) { return typed(key, Json::Type::Bool, "a boolean").as_bool(); }
int64_t JobReader::integer(const std::string& key) {
  const Json& j = typed(key, Json::Type::Number, "an integer");
  double d = j.as_number();
  if (d != std::floor(d) || std::fabs(d) > 9007199254740992.0) fail(key, "expected an integer, got " + j.dump());
  return int64_t(d);
}

static bool is_absolute(const std::string& p) { return !p.empty() && p[0] == '/'; }

std::string JobReader::path(const std::string& key) {
  std::string p = str(key);
  if (!is_absolute(p)) fail(key, "expected an absolute path, got \"" + p + "\"");
  return p;
}

std::string JobReader::str(const std::string& key, const std::string& def) { return has(key) ? str(key) : (used_.insert(key), def); }
double JobReader::num(const std::string& key, double def) { return has(key) ? num(key) : (used_.insert(key), def); }
int64_t JobReader::integer(const std::string& key, int64_t def) { return has(key) ? integer(key) : (used_.insert(key), def); }
bool JobReader::boolean(const std::string& key, bool def) { return has(key) ? boolean(key) : (used_.insert(key), def); }
std::string JobReader::opt_path(const std::string& key) { return has(key) ? path(key) : (used_.insert(key), std::string()); }

static std::string join_quoted(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); i++) s += (i ? ", \"" : "\"") + v[i] + "\"";
  return s;
}

std::string JobReader::choice(const std::string& key, const std::vector<std::string>& allowed) {
  std::string v = str(key);
  for (const auto& a : allowed)
    if (a == v) return v;
  fail(key, "\"" + v + "\" is not one of " + join_quoted(allowed));
}
std::string JobReader::choice(const std::string& key, const std::vector<std::string>& allowed, const std::string& def) {
  if (!has(key)) { used_.insert(key); return def; }
  return choice(key, allowed);
}

int64_t JobReader::integer_in(const std::string& key, int64_t lo, int64_t hi, int64_t def) {
  int64_t v = integer(key, def);
  if (v < lo || v > hi)
    fail(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + std::to_string(v));
  return v;
}
double JobReader::num_in(const std::string& key, double lo, double hi, double def) {
  double v = num(key, def);
  if (!(v >= lo && v <= hi))
    fail(key, "must be between " + Json::number(lo).dump() + " and " + Json::number(hi).dump() + ", got " +
                  Json::number(v).dump());
  return v;
}

std::vector<std::string> JobReader::str_list(const std::string& key) {
  const Json& a = typed(key, Json::Type::Array, "an array of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < a.as_array().size(); i++) {
    const Json& e = a.as_array()[i];
    if (!e.is_string()) fail(key + "[" + std::to_string(i) + "]", std::string("expected a string, got ") + kind_of(e));
    out.push_back(e.as_string());
  }
  return out;
}
std::vector<std::string> JobReader::str_list(const std::string& key, const std::vector<std::string>& def) {
  if (!has(key)) { used_.insert(key); return def; }
  return str_list(key);
}
std::vector<std::string> JobReader::path_list(const std::string& key) {
  std::vector<std::string> v = str_list(key);
  for (size_t i = 0; i < v.size(); i++)
    if (!is_absolute(v[i])) fail(key + "[" + std::to_string(i) + "]", "expected an absolute path, got \"" + v[i] + "\"");
  return v;
}
std::vector<std::string> JobReader::path_list(const std::string& key, const std::vector<std::string>& def) {
  if (!has(key)) { used_.insert(key); return def; }
  return path_list(key);
}
std::vector<int64_t> JobReader::int_list(const std::string& key) {
  const Json& a = typed(key, Json::Type::Array, "an array of integers");
  std::vector<int64_t> out;
  for (size_t i = 0; i < a.as_array().size(); i++) {
    const Json& e = a.as_array()[i];
    double d = e.is_number() ? e.as_number() : 0.5;
    if (!e.is_number() || d != std::floor(d) || std::fabs(d) > 9007199254740992.0)
      fail(key + "[" + std::to_string(i) + "]", std::string("expected an integer, got ") + (e.is_number() ? e.dump() : kind_of(e)));
    out.push_back(int64_t(d));
  }
  return out;
}
std::vector<int64_t> JobReader::int_list(const std::string& key, const std::vector<int64_t>& def) {
  if (!has(key)) { used_.insert(key); return def; }
  return int_list(key);
}

const Json& JobReader::obj(const std::string& key) { return typed(key, Json::Type::Object, "an object"); }
const Json& JobReader::any(const std::string& key) {
  used_.insert(key);
  const Json* j = obj_->find(key);
  if (!j) fail(key, "missing required field");
  return *j;
}
JobReader JobReader::sub(const std::string& key) { return JobReader(obj(key), job_path_, field_name(key)); }
bool JobReader::opt_sub(const std::string& key, std::unique_ptr<JobReader>* out) {
  if (!has(key)) { used_.insert(key); return false; }
  out->reset(new JobReader(obj(key), job_path_, field_name(key)));
  return true;
}

void JobReader::finish() const {
  for (const auto& kv : obj_->as_object())
    if (!used_.count(kv.first)) fail(kv.first, "unknown field");
}

}  // namespace nxft
