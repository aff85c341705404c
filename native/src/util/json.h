// json.h — a small JSON value type with a strict parser (RFC 8259) and a writer.
// Why our own: the engine must build on a bare machine with g++ and cmake, with no third-party code copied in.
// Parse errors name the file (when known), line, column and what was expected.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace nxft {

struct JsonError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };

  Json() = default;                       // null
  static Json boolean(bool b);
  static Json number(double d);
  static Json string(std::string s);
  static Json array();
  static Json object();

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed accessors throw JsonError("expected <type> …") on mismatch.
  bool as_bool() const;
  double as_number() const;
  int64_t as_int() const;                 // throws unless the number is integral
  const std::string& as_string() const;
  const std::vector<Json>& as_array() const;
  std::vector<Json>& as_array();
  // Objects keep insertion order (so written JSON is stable and readable).
  const std::vector<std::pair<std::string, Json>>& as_object() const;

  bool has(const std::string& key) const;             // object only
  const Json* find(const std::string& key) const;     // nullptr when absent (object only)
  const Json& at(const std::string& key) const;       // throws JsonError naming the key
  Json& set(const std::string& key, Json value);      // object: insert or replace; returns *this
  Json& push(Json value);                             // array: append; returns *this
  size_t size() const;                                // array or object length

  // Parse a whole document. `source` names the file in error messages ("<string>" if empty).
  static Json parse(const std::string& text, const std::string& source = "");
  static Json parse_file(const std::string& path);
  // Compact single-line output (used for events) or indented (indent > 0).
  std::string dump(int indent = 0) const;

 private:
  Type type_ = Type::Null;
  bool bool_ = false;
  double num_ = 0;
  std::string str_;
  std::vector<Json> arr_;
  std::vector<std::pair<std::string, Json>> obj_;
  friend class JsonParser;
};

// "null", "a boolean", "a number", "a string", "an array", "an object" — for error messages.
const char* json_type_name(Json::Type t);

}  // namespace nxft
