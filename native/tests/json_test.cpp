// json_test.cpp — the strict JSON parser (valid and invalid documents, error positions), the writer (exact
// double round trip, Python-style indentation), and JobReader's typed access and error naming.
#include <cmath>
#include <cstring>
#include "test_util.h"
#include "util/job.h"
#include "util/json.h"
#include "util/rng.h"

using namespace nxft;

static void expect_error(const std::string& doc, const std::string& where_and_what) {
  try {
    Json::parse(doc, "doc.json");
    std::fprintf(stderr, "accepted invalid JSON: %s\n", doc.c_str());
    g_failures++;
  } catch (const JsonError& e) {
    if (std::string(e.what()).find(where_and_what) == std::string::npos) {
      std::fprintf(stderr, "for %s expected \"%s\", got \"%s\"\n", doc.c_str(), where_and_what.c_str(), e.what());
      g_failures++;
    }
  }
}

int main() {
  // --- valid documents ---
  {
    Json j = Json::parse(R"( {"a": [1, -2.5, 0, -0, 1e3, 1E-2, 0.5e+1], "b": {"c": null, "d": true, "e": false},
                             "s": "x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00", "empty": {}, "ea": []} )");
    CHECK(j.is_object() && j.size() == 5);
    const auto& a = j.at("a").as_array();
    CHECK(a.size() == 7 && a[0].as_int() == 1 && a[1].as_number() == -2.5 && a[4].as_number() == 1000);
    CHECK(a[5].as_number() == 0.01 && a[6].as_number() == 5.0 && std::signbit(a[3].as_number()));
    CHECK(j.at("b").at("c").is_null() && j.at("b").at("d").as_bool() && !j.at("b").at("e").as_bool());
    CHECK(j.at("s").as_string() == "x\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(j.at("empty").size() == 0 && j.at("ea").size() == 0);
    // Insertion order is kept.
    CHECK(j.as_object()[0].first == "a" && j.as_object()[4].first == "ea");
    // Raw UTF-8 passes through.
    CHECK(Json::parse("\"\xe2\x96\x81x\"").as_string() == "\xe2\x96\x81x");
    CHECK(Json::parse("1e-400").as_number() == 0);             // underflow → 0, as other parsers do
    CHECK(Json::parse("4.9406564584124654e-324").as_number() > 0);  // smallest subnormal
  }
  // --- invalid documents, with positions (line:column, 1-based) ---
  expect_error("", "doc.json:1:1: expected a value");
  expect_error("[1,]", "doc.json:1:4: expected a value, got ']'");
  expect_error("{\"a\":1,}", "doc.json:1:8: expected a string key");
  expect_error("{\"a\" 1}", "doc.json:1:6: expected ':'");
  expect_error("[1 2]", "doc.json:1:4: expected ',' or ']'");
  expect_error("{\"a\":1 \"b\":2}", "doc.json:1:8: expected ',' or '}'");
  expect_error("01", "doc.json:1:1: leading zeros");
  expect_error("-", "doc.json:1:2: expected a digit");
  expect_error("1.", "doc.json:1:3: expected a digit after '.'");
  expect_error("1e", "doc.json:1:3: expected a digit in exponent");
  expect_error(".5", "doc.json:1:1: expected a value");
  expect_error("+1", "doc.json:1:1: expected a value");
  expect_error("NaN", "doc.json:1:1: expected a value");
  expect_error("Infinity", "doc.json:1:1: expected a value");
  expect_error("1e999", "doc.json:1:1: number out of range");
  expect_error("tru", "doc.json:1:1: expected 'true'");
  expect_error("nul", "doc.json:1:1: expected 'null'");
  expect_error("\"abc", "doc.json:1:1: unterminated string");
  expect_error("\"a\nb\"", "doc.json:1:3: control character");
  expect_error("\"\\x\"", "doc.json:1:3: invalid escape");
  expect_error("\"\\u12g4\"", "doc.json:1:6: expected a hex digit");
  expect_error("\"\\ud800\"", "doc.json:1:2: high surrogate");
  expect_error("\"\\ud800\\u0041\"", "doc.json:1:2: high surrogate");
  expect_error("\"\\udc00\"", "doc.json:1:2: lone low surrogate");
  expect_error("\"\xff\"", "doc.json:1:2: invalid UTF-8");
  expect_error("\"\xc0\xaf\"", "doc.json:1:2: invalid UTF-8");        // overlong '/'
  expect_error("\"\xed\xa0\x80\"", "doc.json:1:2: invalid UTF-8");    // UTF-8 encoded surrogate
  expect_error("\"\xf4\x90\x80\x80\"", "doc.json:1:2: invalid UTF-8");  // > U+10FFFF
  expect_error("{\"a\":1,\"a\":2}", "doc.json:1:8: duplicate key \"a\"");
  expect_error("[1] [2]", "doc.json:1:5: expected end of document");
  expect_error("// c\n1", "doc.json:1:1: expected a value");
  expect_error("{\n  \"x\": [\n    1,\n    2,\n  ]\n}", "doc.json:5:3: expected a value, got ']'");
  expect_error(std::string(600, '[') + std::string(600, ']'), "nesting deeper than 512");
  {
    std::string deep = std::string(512, '[') + std::string(512, ']');  // exactly at the limit: accepted
    CHECK(Json::parse(deep).is_array());
  }

  // --- writer: doubles round-trip bit-exactly; integers print without a fraction ---
  {
    Rng rng(42);
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
      uint64_t bits = rng.next_u64();
      double d;
      std::memcpy(&d, &bits, 8);
      if (!std::isfinite(d)) continue;
      if (i % 2) d = rng.normal() * std::pow(10.0, double(int(rng.below(40)) - 20));
      double back = Json::parse(Json::number(d).dump()).as_number();
      if (std::memcmp(&back, &d, 8) != 0) bad++;
    }
    CHECK_MSG(bad == 0, "%d doubles did not round-trip", bad);
    CHECK(Json::number(8).dump() == "8" && Json::number(-3).dump() == "-3" && Json::number(0.1).dump() == "0.1");
    CHECK(Json::number(2e-4).dump() == "0.0002" && Json::number(1e-5).dump() == "1e-05");
    CHECK(Json::number(9007199254740991.0).dump() == "9007199254740991" && Json::number(9007199254740992.0).dump() == "9007199254740992.0");
    // Python repr() layout: 1.5e+20, 1.2345678901234568e+17, 0.0001, 123.456, -2.5e-07
    CHECK(Json::number(1.5e20).dump() == "1.5e+20" && Json::number(123456789012345678.0).dump() == "1.2345678901234568e+17");
    CHECK(Json::number(0.0001).dump() == "0.0001" && Json::number(123.456).dump() == "123.456");
    CHECK(Json::number(-2.5e-7).dump() == "-2.5e-07" && Json::number(1e300).dump() == "1e+300");
    CHECK(Json::number(5e-324).dump() == "5e-324" && Json::number(12345.5).dump() == "12345.5");
    CHECK(Json::number(NAN).dump() == "null" && Json::number(INFINITY).dump() == "null");
    CHECK(Json::string("a\"b\\c\n\x01").dump() == "\"a\\\"b\\\\c\\n\\u0001\"");
    Json o = Json::object().set("b", Json::number(1)).set("a", Json::array().push(Json::number(1)).push(Json::string("x")));
    o.set("e", Json::array()).set("f", Json::object());
    CHECK(o.dump() == R"({"b":1,"a":[1,"x"],"e":[],"f":{}})");
    CHECK(o.dump(2) == "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"x\"\n  ],\n  \"e\": [],\n  \"f\": {}\n}");
    o.set("b", Json::number(2));  // replace keeps position
    CHECK(o.as_object()[0].first == "b" && o.at("b").as_int() == 2);
    // parse(dump(x)) == x structurally
    Json back = Json::parse(o.dump(2));
    CHECK(back.dump() == o.dump());
  }
  // --- typed accessors ---
  EXPECT_THROW(JsonError, [] { Json::parse("1.5").as_int(); }, "expected an integer");
  EXPECT_THROW(JsonError, [] { Json::parse("\"x\"").as_number(); }, "expected a number, got a string");
  EXPECT_THROW(JsonError, [] { Json::parse("{}").at("k"); }, "missing key \"k\"");
  EXPECT_THROW(JsonError, [] { Json::parse_file("/nonexistent/file.json"); }, "/nonexistent/file.json");

  // --- JobReader ---
  {
    Json job = Json::parse(R"({"command":"train","base":"/m","rel":"m","lr":"x","steps":2.5,"n":3,
      "train":{"lr":0.001,"extra":1,"opt":null,"sched":"cosine"},"ids":[1,2,"3"],"paths":["/a","b"],"flag":true})");
    const std::string jp = "/jobs/j.json";
    {
      JobReader r(job, jp);
      CHECK(r.path("base") == "/m");
      CHECK(r.integer("n") == 3 && r.boolean("flag") && r.num("missing", 7.0) == 7.0);
      CHECK(!r.has("missing") && r.present("n"));
      JobReader t = r.sub("train");
      CHECK(t.num("lr") == 0.001 && t.num("opt", 5.0) == 5.0 && t.field_name("lr") == "train.lr");
      std::string msg;
      try { t.finish(); } catch (const EngineError& e) { msg = e.what(); CHECK(e.field == "train.extra" && e.file == jp); }
      CHECK(msg.find("/jobs/j.json: train.extra: unknown field") != std::string::npos);
      try { t.choice("sched", {"linear", "constant"}); g_failures++; } catch (const EngineError& e) {
        CHECK(std::string(e.what()).find("train.sched: \"cosine\" is not one of \"linear\", \"constant\"") != std::string::npos);
      }
    }
    JobReader r(job, jp);
    EXPECT_THROW(EngineError, [&] { r.num("lr"); }, "/jobs/j.json: lr: expected a number, got a string");
    EXPECT_THROW(EngineError, [&] { r.integer("steps"); }, "steps: expected an integer, got 2.5");
    EXPECT_THROW(EngineError, [&] { r.path("rel"); }, "rel: expected an absolute path");
    EXPECT_THROW(EngineError, [&] { r.str("nope"); }, "nope: missing required field");
    EXPECT_THROW(EngineError, [&] { r.int_list("ids"); }, "ids[2]: expected an integer");
    EXPECT_THROW(EngineError, [&] { r.path_list("paths"); }, "paths[1]: expected an absolute path");
    EXPECT_THROW(EngineError, [&] { r.integer_in("n", 5, 10, 5); }, "n: must be between 5 and 10, got 3");
    EXPECT_THROW(EngineError, [&] { r.sub("flag"); }, "flag: expected an object, got a boolean");
    // unread keys are reported by finish(); "command" is always accepted
    EXPECT_THROW(EngineError, [&] { JobReader r2(job, jp); r2.finish(); }, "unknown field");
    Json j3 = Json::parse(R"({"command":"x","a":1})");
    JobReader r3(j3, jp);
    r3.integer("a");
    r3.finish();
    Json j4 = Json::parse("[1]");
    EXPECT_THROW(EngineError, [&] { JobReader r4(j4, jp); }, "the job must be a JSON object");
  }
  return test_result("json_test");
}
