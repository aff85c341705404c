// json.cpp — strict RFC 8259 parser and a writer for the Json value type.
//
// Strictness: exactly one value per document (surrounding whitespace allowed), no comments, no trailing
// commas, no NaN/Infinity, no leading zeros, no control characters inside strings, valid UTF-8 only,
// \u escapes with properly paired surrogates, and no duplicate keys inside one object (safetensors and
// job files rely on that). Nesting is limited to kMaxDepth so a hostile document cannot blow the stack.
// Errors read "<source>:<line>:<column>: <what was expected>"; line and column are 1-based, the column counts
// bytes.
//
// Numbers: parsed with std::from_chars (locale-independent, correctly rounded). Written as the shortest
// decimal that parses back to the exact same double (std::to_chars), which is never longer than %.17g and
// round-trips bit-exactly like it, laid out as Python's repr() does (0.0002, 1e-05, 1.5e+20); integral values
// below 2^53 print without a fraction ("8", not "8.0").
// Non-finite numbers cannot be represented in JSON and are written as null.
#include "util/json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_set>

namespace nxft {

namespace {
constexpr int kMaxDepth = 512;
}  // namespace

// ---- construction and access ---------------------------------------------------------------------------

Json Json::boolean(bool b) { Json j; j.type_ = Type::Bool; j.bool_ = b; return j; }
Json Json::number(double d) { Json j; j.type_ = Type::Number; j.num_ = d; return j; }
Json Json::string(std::string s) { Json j; j.type_ = Type::String; j.str_ = std::move(s); return j; }
Json Json::array() { Json j; j.type_ = Type::Array; return j; }
Json Json::object() { Json j; j.type_ = Type::Object; return j; }

static void expect_type(const Json& j, Json::Type want) {
  if (j.type() != want)
    throw JsonError(std::string("expected ") + json_type_name(want) + ", got " + json_type_name(j.type()));
}

bool Json::as_bool() const { expect_type(*this, Type::Bool); return bool_; }
double Json::as_number() const { expect_type(*this, Type::Number); return num_; }
int64_t Json::as_int() const {
  expect_type(*this, Type::Number);
  // 2^63 is exactly representable; anything >= it (or < -2^63) does not fit int64.
  if (!(num_ == std::floor(num_)) || num_ >= 9223372036854775808.0 || num_ < -9223372036854775808.0)
    throw JsonError("expected an integer, got " + Json::number(num_).dump());
  return int64_t(num_);
}
const std::string& Json::as_string() const { expect_type(*this, Type::String); return str_; }
const std::vector<Json>& Json::as_array() const { expect_type(*this, Type::Array); return arr_; }
std::vector<Json>& Json::as_array() { expect_type(*this, Type::Array); return arr_; }
const std::vector<std::pair<std::string, Json>>& Json::as_object() const {
  expect_type(*this, Type::Object);
  return obj_;
}

bool Json::has(const std::string& key) const { return find(key) != nullptr; }
const Json* Json::find(const std::string& key) const {
  expect_type(*this, Type::Object);
  for (const auto& kv : obj_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}
const Json& Json::at(const std::string& key) const {
  const Json* j = find(key);
  if (!j) throw JsonError("missing key \"" + key + "\"");
  return *j;
}
Json& Json::set(const std::string& key, Json value) {
  expect_type(*this, Type::Object);
  for (auto& kv : obj_)
    if (kv.first == key) { kv.second = std::move(value); return *this; }
  obj_.emplace_back(key, std::move(value));
  return *this;
}
Json& Json::push(Json value) {
  expect_type(*this, Type::Array);
  arr_.push_back(std::move(value));
  return *this;
}
size_t Json::size() const {
  if (type_ == Type::Array) return arr_.size();
  if (type_ == Type::Object) return obj_.size();
  throw JsonError(std::string("expected an array or an object, got ") + json_type_name(type_));
}

// ---- parser ---------------------------------------------------------------------------------------------

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& source)
      : s_(text.data()), n_(text.size()), source_(source.empty() ? "<string>" : source) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (i_ != n_) fail("expected end of document after the value");
    return v;
  }

 private:
  const char* s_;
  size_t n_;
  size_t i_ = 0;
  std::string source_;

  [[noreturn]] void fail(const std::string& what) const { fail_at(i_, what); }
  [[noreturn]] void fail_at(size_t pos, const std::string& what) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < pos && k < n_; k++) {
      if (s_[k] == '\n') { line++; col = 1; } else { col++; }
    }
    throw JsonError(source_ + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + what);
  }
  std::string describe_here() const {
    if (i_ >= n_) return "end of input";
    unsigned char c = (unsigned char)s_[i_];
    if (c >= 0x20 && c < 0x7f) return std::string("'") + char(c) + "'";
    char buf[16];
    std::snprintf(buf, sizeof buf, "byte 0x%02x", c);
    return buf;
  }

  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) i_++;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
    if (i_ >= n_) fail("expected a value, got end of input");
    char c = s_[i_];
    switch (c) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Json::string(parse_string());
      case 't': expect_word("true"); return Json::boolean(true);
      case 'f': expect_word("false"); return Json::boolean(false);
      case 'n': expect_word("null"); return Json();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail("expected a value, got " + describe_here());
    }
  }

  void expect_word(const char* w) {
    size_t len = std::strlen(w);
    if (n_ - i_ < len || std::memcmp(s_ + i_, w, len) != 0) fail(std::string("expected '") + w + "'");
    i_ += len;
  }

  Json parse_object(int depth) {
    i_++;  // '{'
    Json obj = Json::object();
    std::unordered_set<std::string> seen;
    skip_ws();
    if (i_ < n_ && s_[i_] == '}') { i_++; return obj; }
    while (true) {
      skip_ws();
      if (i_ >= n_ || s_[i_] != '"') fail("expected a string key, got " + describe_here());
      size_t key_pos = i_;
      std::string key = parse_string();
      if (!seen.insert(key).second) fail_at(key_pos, "duplicate key \"" + key + "\"");
      skip_ws();
      if (i_ >= n_ || s_[i_] != ':') fail("expected ':' after key, got " + describe_here());
      i_++;
      skip_ws();
      Json v = parse_value(depth + 1);
      obj.obj_.emplace_back(std::move(key), std::move(v));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { i_++; continue; }
      if (i_ < n_ && s_[i_] == '}') { i_++; return obj; }
      fail("expected ',' or '}' in object, got " + describe_here());
    }
  }

  Json parse_array(int depth) {
    i_++;  // '['
    Json arr = Json::array();
    skip_ws();
    if (i_ < n_ && s_[i_] == ']') { i_++; return arr; }
    while (true) {
      skip_ws();
      arr.arr_.push_back(parse_value(depth + 1));
      skip_ws();
      if (i_ < n_ && s_[i_] == ',') { i_++; continue; }
      if (i_ < n_ && s_[i_] == ']') { i_++; return arr; }
      fail("expected ',' or ']' in array, got " + describe_here());
    }
  }

  Json parse_number() {
    size_t start = i_;
    if (s_[i_] == '-') i_++;
    if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit in number");
    if (s_[i_] == '0') {
      i_++;
      if (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') fail_at(i_ - 1, "leading zeros are not allowed in numbers");
    } else {
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    if (i_ < n_ && s_[i_] == '.') {
      i_++;
      if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit after '.'");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    if (i_ < n_ && (s_[i_] == 'e' || s_[i_] == 'E')) {
      i_++;
      if (i_ < n_ && (s_[i_] == '+' || s_[i_] == '-')) i_++;
      if (i_ >= n_ || !(s_[i_] >= '0' && s_[i_] <= '9')) fail("expected a digit in exponent");
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') i_++;
    }
    double d = 0;
    auto res = std::from_chars(s_ + start, s_ + i_, d);
    if (res.ec == std::errc::result_out_of_range) {
      // from_chars reports overflow and underflow alike; decide by the magnitude of the exponent.
      // Underflow → ±0 (as every JSON parser does); overflow is an error (no Infinity in JSON).
      std::string t(s_ + start, s_ + i_);
      double approx = std::strtod(t.c_str(), nullptr);  // only to tell the two apart
      if (std::isinf(approx)) fail_at(start, "number out of range: " + t);
      d = (t[0] == '-') ? -0.0 : 0.0;
      if (approx != 0) d = approx;  // denormal results
    } else if (res.ec != std::errc() || res.ptr != s_ + i_) {
      fail_at(start, "malformed number");
    }
    return Json::number(d);
  }

  unsigned parse_hex4() {
    if (n_ - i_ < 4) fail("expected 4 hex digits after \\u");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
      char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= unsigned(c - '0');
      else if (c >= 'a' && c <= 'f') v |= unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= unsigned(c - 'A' + 10);
      else { i_--; fail("expected a hex digit in \\u escape"); }
    }
    return v;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) out += char(cp);
    else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
    }
  }

  // Length of the valid UTF-8 sequence starting at i_ (0 if invalid): no overlongs, no surrogates, ≤ U+10FFFF.
  size_t utf8_len() const {
    const unsigned char* p = (const unsigned char*)s_ + i_;
    size_t left = n_ - i_;
    unsigned char c = p[0];
    auto cont = [&](size_t k) { return k < left && (p[k] & 0xC0) == 0x80; };
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
      if (!cont(1) || !cont(2)) return 0;
      if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
      if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogate
      return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
      if (!cont(1) || !cont(2) || !cont(3)) return 0;
      if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
      if (c == 0xF4 && p[1] >= 0x90) return 0;  // > U+10FFFF
      return 4;
    }
    return 0;
  }

  std::string parse_string() {
    size_t start = i_;
    i_++;  // opening quote
    std::string out;
    while (true) {
      if (i_ >= n_) fail_at(start, "unterminated string");
      unsigned char c = (unsigned char)s_[i_];
      if (c == '"') { i_++; return out; }
      if (c < 0x20) fail("control character in string (must be escaped)");
      if (c == '\\') {
        i_++;
        if (i_ >= n_) fail_at(start, "unterminated string");
        char e = s_[i_++];
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            size_t esc_pos = i_ - 2;
            uint32_t cp = parse_hex4();
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (n_ - i_ < 2 || s_[i_] != '\\' || s_[i_ + 1] != 'u')
                fail_at(esc_pos, "high surrogate not followed by a low surrogate");
              i_ += 2;
              uint32_t lo = parse_hex4();
              if (lo < 0xDC00 || lo > 0xDFFF) fail_at(esc_pos, "high surrogate not followed by a low surrogate");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
              fail_at(esc_pos, "lone low surrogate");
            }
            append_utf8(out, cp);
            break;
          }
          default: i_--; fail("invalid escape '\\" + std::string(1, e) + "'");
        }
        continue;
      }
      size_t len = utf8_len();
      if (len == 0) fail("invalid UTF-8 in string");
      out.append(s_ + i_, len);
      i_ += len;
    }
  }
};

Json Json::parse(const std::string& text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

Json Json::parse_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw JsonError(path + ": cannot open file");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw JsonError(path + ": read error");
  return parse(ss.str(), path);
}

// ---- writer ---------------------------------------------------------------------------------------------

static void write_number(std::string& out, double d) {
  if (!std::isfinite(d)) { out += "null"; return; }
  if (d == std::floor(d) && std::fabs(d) < 9007199254740992.0) {  // integral, exactly representable
    char buf[32];
    if (d == 0 && std::signbit(d)) { out += "-0"; return; }
    auto r = std::to_chars(buf, buf + sizeof buf, int64_t(d));
    out.append(buf, r.ptr);
    return;
  }
  // Shortest digits that round-trip (to_chars), laid out like Python's repr(): fixed notation for decimal
  // exponents in [-4, 16), otherwise d.ddde±XX with at least two exponent digits.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);                       // e.g. "-1.2345e-05"
  size_t epos = sci.find('e');
  int exp10 = std::atoi(sci.c_str() + epos + 1);
  std::string mant = sci.substr(0, epos);
  bool neg = !mant.empty() && mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  if (neg) out += '-';
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 < 0) {
      out += "0.";
      out.append(size_t(-exp10 - 1), '0');
      out += digits;
    } else if (size_t(exp10) + 1 >= digits.size()) {
      out += digits;
      out.append(size_t(exp10) + 1 - digits.size(), '0');
      out += ".0";
    } else {
      out += digits.substr(0, size_t(exp10) + 1);
      out += '.';
      out += digits.substr(size_t(exp10) + 1);
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) { out += '.'; out += digits.substr(1); }
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    out += eb;
  }
}

static void write_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  out += '"';
}

// Indented output matches Python's json.dumps(indent=N): "key": value, one element per line, [] and {} when empty.
static void write_value(std::string& out, const Json& j, int indent, int level) {
  auto newline = [&](int lvl) {
    if (indent > 0) { out += '\n'; out.append(size_t(indent * lvl), ' '); }
  };
  switch (j.type()) {
    case Json::Type::Null: out += "null"; break;
    case Json::Type::Bool: out += j.as_bool() ? "true" : "false"; break;
    case Json::Type::Number: write_number(out, j.as_number()); break;
    case Json::Type::String: write_string(out, j.as_string()); break;
    case Json::Type::Array: {
      const auto& a = j.as_array();
      if (a.empty()) { out += "[]"; break; }
      out += '[';
      for (size_t k = 0; k < a.size(); k++) {
        if (k) out += (indent > 0) ? "," : ",";
        newline(level + 1);
        write_value(out, a[k], indent, level + 1);
      }
      newline(level);
      out += ']';
      break;
    }
    case Json::Type::Object: {
      const auto& o = j.as_object();
      if (o.empty()) { out += "{}"; break; }
      out += '{';
      for (size_t k = 0; k < o.size(); k++) {
        if (k) out += ',';
        newline(level + 1);
        write_string(out, o[k].first);
        out += (indent > 0) ? ": " : ":";
        write_value(out, o[k].second, indent, level + 1);
      }
      newline(level);
      out += '}';
      break;
    }
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  write_value(out, *this, indent, 0);
  return out;
}

const char* json_type_name(Json::Type t) {
  switch (t) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return "a boolean";
    case Json::Type::Number: return "a number";
    case Json::Type::String: return "a string";
    case Json::Type::Array: return "an array";
    case Json::Type::Object: return "an object";
  }
  return "?";
}

}  // namespace nxft
