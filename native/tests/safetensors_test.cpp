// safetensors_test.cpp — every malformed-file case gives an EngineError naming the file (and tensor) and never
// crashes; the writer's output (header padded to 8, {"format":"pt"}) reads back exactly; sharded folders with an
// index json; and the stories260K-hf fixture reads with the values of the llama2.c original.
#include <cmath>
#include <cstring>
#include <fstream>
#include "io/safetensors.h"
#include "test_util.h"
#include "util/fs.h"

using namespace nxft;

static std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; i++) s[size_t(i)] = char((n >> (8 * i)) & 0xff);
  return s;
}
// A file image: 8-byte length, header, buffer.
static std::string image(const std::string& header, const std::string& buffer) { return u64le(header.size()) + header + buffer; }

static void expect_bad(const std::string& bytes, std::initializer_list<const char*> needles, int line) {
  try {
    SafetensorsFile::from_buffer((const uint8_t*)bytes.data(), bytes.size(), "bad.safetensors");
    std::fprintf(stderr, "line %d: accepted a malformed file\n", line);
    g_failures++;
  } catch (const EngineError& e) {
    std::string m = e.what();
    for (const char* n : needles)
      if (m.find(n) == std::string::npos) {
        std::fprintf(stderr, "line %d: message lacks \"%s\": %s\n", line, n, m.c_str());
        g_failures++;
      }
    if (m.find("bad.safetensors") == std::string::npos) {
      std::fprintf(stderr, "line %d: message does not name the file: %s\n", line, m.c_str());
      g_failures++;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "line %d: wrong exception type: %s\n", line, e.what());
    g_failures++;
  }
}
#define BAD(bytes, ...) expect_bad(bytes, {__VA_ARGS__}, __LINE__)

static void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

int main() {
  const std::string buf8(8, '\x01');
  const std::string t_ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  // --- valid minimal images ---
  {
    std::string img = image(t_ok, buf8);
    auto f = SafetensorsFile::from_buffer((const uint8_t*)img.data(), img.size(), "ok");
    CHECK(f->tensors().size() == 1 && f->find("t") && f->find("t")->numel() == 2 && f->find("t")->nbytes == 8);
    CHECK(f->find("t")->data == (const uint8_t*)img.data() + 8 + t_ok.size());  // zero-copy
    std::string padded = image(t_ok + "      ", buf8);  // header right-padded with spaces
    CHECK(SafetensorsFile::from_buffer((const uint8_t*)padded.data(), padded.size(), "ok")->tensors().size() == 1);
    std::string empty = image("{}", "");
    CHECK(SafetensorsFile::from_buffer((const uint8_t*)empty.data(), empty.size(), "ok")->tensors().empty());
    std::string zero_and_scalar = image(
        R"({"__metadata__":{"format":"pt"},"z":{"dtype":"BF16","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}})",
        buf8);
    auto z = SafetensorsFile::from_buffer((const uint8_t*)zero_and_scalar.data(), zero_and_scalar.size(), "ok");
    CHECK(z->find("z")->numel() == 0 && z->find("s")->numel() == 1 && z->metadata().at("format") == "pt");
  }
  // --- malformed images ---
  BAD("", "truncated file");
  BAD(std::string("\x10\0\0", 3), "truncated file");
  BAD(u64le(100) + "{}", "runs past the end of the file");
  BAD(u64le(UINT64_MAX) + "{}", "exceeds the 100,000,000-byte limit");
  BAD(u64le(100000001) + "{}", "exceeds the 100,000,000-byte limit");
  BAD(image("[1,2]", ""), "does not start with '{'");
  BAD(image(" {}", ""), "does not start with '{'");
  BAD(image("{", ""), "invalid JSON header");
  BAD(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", buf8 + buf8),
      "duplicate key \"t\"");
  BAD(image(R"({"t":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "unknown or unsupported dtype \"F8_E4M3\"");
  BAD(image(R"({"t":{"dtype":"Q4","shape":[8],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "dtype \"Q4\"");
  BAD(image(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "needs 12 bytes but data_offsets span 8");
  BAD(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", buf8), "tensor \"t\"", "out of range");
  BAD(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", buf8), "tensor \"t\"", "end 0 < begin 8");
  BAD(image(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "non-negative integers");
  BAD(image(R"({"t":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "non-negative integers");
  BAD(image(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "more than 2^64");
  BAD(image(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", buf8), "tensor \"t\"", "data_offsets");
  BAD(image(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", buf8), "tensor \"t\"", "shape");
  BAD(image(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", buf8), "tensor \"t\"", "dtype");
  BAD(image(R"({"t":[1]})", buf8), "tensor \"t\"", "not an object");
  BAD(image(R"({"__metadata__":{"format":1}})", ""), "__metadata__");
  BAD(image(R"({"__metadata__":[]})", ""), "__metadata__");
  // overlap, hole, trailing bytes
  BAD(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", buf8 + "1234"),
      "tensor \"b\"", "overlaps tensor \"a\"");
  BAD(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", buf8 + "1234"),
      "tensor \"b\"", "hole in the byte buffer");
  BAD(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", buf8), "tensor \"a\"", "hole");
  BAD(image(t_ok, buf8 + "xx"), "trailing bytes belong to no tensor");
  BAD(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", buf8),
      "overlaps");
  // Every truncation of a valid file is rejected cleanly.
  {
    std::string img = image(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}})", buf8);
    int accepted = 0;
    for (size_t n = 0; n < img.size(); n++) {
      try {
        SafetensorsFile::from_buffer((const uint8_t*)img.data(), n, "trunc");
        accepted++;
      } catch (const EngineError&) {
      }
    }
    CHECK_MSG(accepted == 0, "%d truncations accepted", accepted);
  }

  std::string dir = test_tmp_dir("safetensors");
  // --- files on disk: open() errors name the path ---
  EXPECT_THROW(EngineError, [&] { SafetensorsFile::open(dir + "/missing.safetensors"); }, "missing.safetensors", "cannot open");
  write_bytes(dir + "/empty.safetensors", "");
  EXPECT_THROW(EngineError, [&] { SafetensorsFile::open(dir + "/empty.safetensors"); }, "empty.safetensors", "truncated");
  EXPECT_THROW(EngineError, [&] { SafetensorsFile::open(dir); }, "not a regular file");

  // --- writer round trip ---
  {
    std::vector<float> a = {1.0f, -2.0f, 3.5f, 1e-3f, 65504.0f, -0.0f};
    std::vector<uint8_t> raw = {1, 2, 3};
    std::vector<TensorToWrite> ts(4);
    ts[0].name = "w.f32"; ts[0].dtype = DType::F32; ts[0].shape = {2, 3}; ts[0].f32 = a.data();
    ts[1].name = "w.bf16"; ts[1].dtype = DType::BF16; ts[1].shape = {6}; ts[1].f32 = a.data();
    ts[2].name = "w.f16"; ts[2].dtype = DType::F16; ts[2].shape = {3, 2}; ts[2].f32 = a.data();
    ts[3].name = "u8"; ts[3].dtype = DType::U8; ts[3].shape = {3}; ts[3].data = raw.data();
    write_safetensors(dir + "/w.safetensors", ts);
    std::string bytes = read_file(dir + "/w.safetensors");
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | uint8_t(bytes[size_t(i)]);
    CHECK(n % 8 == 0 && bytes[8] == '{');
    CHECK(bytes.find("\"__metadata__\":{\"format\":\"pt\"}") != std::string::npos);
    auto f = SafetensorsFile::open(dir + "/w.safetensors");
    CHECK(f->tensors().size() == 4 && f->tensors()[0].name == "w.f32" && f->metadata().at("format") == "pt");
    std::vector<float> back(6);
    convert_to_f32(f->find("w.f32")->data, DType::F32, back.data(), 6);
    CHECK(std::memcmp(back.data(), a.data(), 24) == 0);
    convert_to_f32(f->find("w.bf16")->data, DType::BF16, back.data(), 6);
    for (int i = 0; i < 6; i++) CHECK(back[size_t(i)] == bf16_to_f32(f32_to_bf16(a[size_t(i)])));
    convert_to_f32(f->find("w.f16")->data, DType::F16, back.data(), 6);
    for (int i = 0; i < 6; i++) CHECK(back[size_t(i)] == f16_to_f32(f32_to_f16(a[size_t(i)])));
    CHECK(f->find("w.f16")->shape == std::vector<int64_t>({3, 2}) && std::memcmp(f->find("u8")->data, raw.data(), 3) == 0);
    CHECK(!path_exists(dir + "/w.safetensors.tmp-" + std::to_string(::getpid())));
    // A streaming writer that is not committed leaves nothing behind; writing too much is an error.
    {
      SafetensorsWriter w(dir + "/partial.safetensors", {{"x", DType::F32, {2}}});
      w.write_f32(a.data(), 1);
      EXPECT_THROW(EngineError, [&] { w.commit(); }, "tensor \"x\" was not fully written");
    }
    CHECK(!path_exists(dir + "/partial.safetensors"));
    {
      SafetensorsWriter w(dir + "/over.safetensors", {{"x", DType::F32, {1}}});
      EXPECT_THROW(EngineError, [&] { w.write_f32(a.data(), 2); }, "more tensor data written than declared");
    }
    EXPECT_THROW(EngineError, [&] { write_safetensors(dir + "/dup.safetensors", {ts[0], ts[0]}); }, "duplicate");
  }

  // --- sharded folder with an index json ---
  {
    std::string sd = dir + "/sharded";
    make_dirs(sd);
    std::vector<float> v = {1, 2, 3, 4};
    TensorToWrite a{"a", DType::F32, {2}, nullptr, v.data()}, b{"b", DType::F32, {2}, nullptr, v.data() + 2};
    write_safetensors(sd + "/model-00001-of-00002.safetensors", {a});
    write_safetensors(sd + "/model-00002-of-00002.safetensors", {b});
    write_file_atomic(sd + "/model.safetensors.index.json",
                      R"({"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
    auto m = SafetensorsModel::open_dir(sd);
    CHECK(m->names() == std::vector<std::string>({"a", "b"}) && m->shard_files().size() == 2);
    CHECK(m->shard_of("b") == "model-00002-of-00002.safetensors" && m->get("b").numel() == 2);
    CHECK(m->find("c") == nullptr);
    EXPECT_THROW(EngineError, [&] { m->get("c"); }, "missing tensor c in");
    write_file_atomic(sd + "/model.safetensors.index.json",
                      R"({"metadata":{"total_size":16},"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(sd); }, "model.safetensors.index.json", "tensor \"a\" is mapped to");
    write_file_atomic(sd + "/model.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(sd); }, "bad shard file name");
    write_file_atomic(sd + "/model.safetensors.index.json", R"({"weight_map":{"a":"model-00003-of-00002.safetensors"}})");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(sd); }, "model-00003-of-00002.safetensors", "cannot open");
    write_file_atomic(sd + "/model.safetensors.index.json", R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(sd); }, "model.safetensors.index.json:1:");
    // duplicate tensor across shards
    write_safetensors(sd + "/model-00002-of-00002.safetensors", {a, b});
    write_file_atomic(sd + "/model.safetensors.index.json",
                      R"({"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(sd); }, "appears in both");
    EXPECT_THROW(EngineError, [&] { SafetensorsModel::open_dir(dir + "/nothing-here"); }, "no model.safetensors");
  }

  // --- the stories260K-hf fixture: F32, 47 tensors (tied, no lm_head), values equal the llama2.c .bin ---
  {
    std::string hf = std::string(kFixtures) + "/models/stories260K-hf";
    auto m = SafetensorsModel::open_dir(hf);
    CHECK(m->names().size() == 47 && m->find("lm_head.weight") == nullptr);
    const TensorView& emb = m->get("model.embed_tokens.weight");
    CHECK(emb.dtype == DType::F32 && emb.shape == std::vector<int64_t>({512, 64}));
    CHECK(m->get("model.layers.4.mlp.down_proj.weight").shape == std::vector<int64_t>({64, 172}));
    CHECK(m->get("model.layers.0.self_attn.k_proj.weight").shape == std::vector<int64_t>({32, 64}));
    int64_t total = 0;
    for (const auto& n : m->names()) total += m->get(n).numel();
    CHECK_MSG(total == 260032, "total params %lld", (long long)total);
    // llama2.c layout: 7 int32 header, then token_embedding_table (vocab × dim) fp32 — the same bytes.
    std::string bin = read_file(std::string(kFixtures) + "/models/stories260K/stories260K.bin");
    CHECK(bin.size() > 28 + emb.nbytes && std::memcmp(bin.data() + 28, emb.data, emb.nbytes) == 0);
    // then rms_att_weight (layer × dim): input_layernorm of layer 0
    const TensorView& n0 = m->get("model.layers.0.input_layernorm.weight");
    CHECK(std::memcmp(bin.data() + 28 + emb.nbytes, n0.data, n0.nbytes) == 0);
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  return test_result("safetensors_test");
}
