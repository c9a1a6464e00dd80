// loftq/io/calibration.hpp and loftq/io/llama_names.hpp: the format told by
// content, the names between llama.cpp and Hugging Face, and the imatrix
// readers on hostile files (each defect a loftq::Error naming the file).
#include <doctest/doctest.h>

#include <loftq/io/calibration.hpp>
#include <loftq/io/llama_names.hpp>

#include "calib_support.hpp"
#include "common/gguf_layout.hpp"

#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_calibration {

namespace lio = loftq::io;
namespace gl = gguf_layout;
using namespace calib_test;

namespace {

std::string path_of(const std::string& name) { return calib_test::scratch_dir("calibration") + "/" + name; }

// A legacy .dat by hand: (name, ncall, values) entries, then the optional trailer.
struct DatEntry {
  std::string name;
  std::int32_t ncall;
  std::vector<float> values;
};
std::vector<unsigned char> dat_bytes(const std::vector<DatEntry>& es, bool trailer = true) {
  std::vector<unsigned char> o;
  auto i32 = [&](std::uint32_t v) { gl::Builder::put(o, v, 4); };
  i32(static_cast<std::uint32_t>(es.size()));
  for (const DatEntry& e : es) {
    i32(static_cast<std::uint32_t>(e.name.size()));
    o.insert(o.end(), e.name.begin(), e.name.end());
    i32(static_cast<std::uint32_t>(e.ncall));
    i32(static_cast<std::uint32_t>(e.values.size()));
    for (float v : e.values) {
      std::uint32_t u;
      std::memcpy(&u, &v, 4);
      i32(u);
    }
  }
  if (trailer) {
    i32(7);
    i32(4);
    o.insert(o.end(), {'d', 'a', 't', 'a'});
  }
  return o;
}

gl::Builder imatrix_builder() {
  gl::Builder b;
  b.add_string("general.type", "imatrix");
  b.add_string_array("imatrix.datasets", {"d"});
  b.add_u32("imatrix.chunk_count", 1);
  b.add_u32("imatrix.chunk_size", 512);
  return b;
}
void add_entry(gl::Builder& b, const std::string& name, const std::vector<float>& sums, float count) {
  b.add_tensor(name + ".in_sum2", {sums.size()}, gl::F32, gl::Builder::encode_floats(sums, gl::F32));
  b.add_tensor(name + ".counts", {1}, gl::F32, gl::Builder::encode_floats({count}, gl::F32));
}

}  // namespace

TEST_CASE("llama_names: every row of the table, both ways") {
  const std::map<std::string, std::string> table = {
      {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj"},
      {"blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj"},
      {"blk.12.attn_v.weight", "model.layers.12.self_attn.v_proj"},
      {"blk.3.attn_qkv.weight", "model.layers.3.self_attn.qkv_proj"},
      {"blk.40.attn_output.weight", "model.layers.40.self_attn.o_proj"},
      {"blk.5.ffn_gate.weight", "model.layers.5.mlp.gate_proj"},
      {"blk.6.ffn_up.weight", "model.layers.6.mlp.up_proj"},
      {"blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj"},
      {"output.weight", "lm_head"},
  };
  for (const auto& t : table) {
    CHECK(lio::llama_to_hf(t.first) == t.second);
    CHECK(lio::hf_to_llama(t.second) == t.first);
    CHECK(lio::hf_to_llama(t.second + ".weight") == t.first);
  }
  for (const char* bad : {"blk.0.attn_q", "blk.01.attn_q.weight", "blk..attn_q.weight", "blk.0.attn_norm.weight",
                          "token_embd.weight", "blk.x.attn_q.weight", "blk.1234567890.attn_q.weight", ""})
    CHECK(lio::llama_to_hf(bad).empty());
  for (const char* bad : {"model.layers.0.self_attn.rotary_emb", "model.layers.00.mlp.up_proj", "model.embed_tokens",
                          "layers.0.mlp.up_proj", ""})
    CHECK(lio::hf_to_llama(bad).empty());
  CHECK(lio::input_siblings("model.layers.2.self_attn.k_proj") ==
        std::vector<std::string>{"model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj",
                                 "model.layers.2.self_attn.qkv_proj"});
  CHECK(lio::input_siblings("model.layers.2.mlp.up_proj.weight") ==
        std::vector<std::string>{"model.layers.2.mlp.gate_proj"});
  CHECK(lio::input_siblings("model.layers.2.mlp.down_proj").empty());
  CHECK(lio::input_siblings("model.layers.2.self_attn.o_proj").empty());
}

TEST_CASE("read_calibration: the format comes from the content, not the name") {
  std::map<std::string, InputStatistics> stats;
  stats.emplace("model.layers.0.self_attn.q_proj", calib_test::sample_stats(4, 20, StatsMode::full, 3));
  const std::string own = path_of("stats.gguf");  // misleading extensions throughout
  const std::string gguf = path_of("imatrix.dat");
  const std::string dat = path_of("imatrix.safetensors");
  lio::write_statistics(own, stats);
  lio::write_imatrix_gguf(gguf, stats, {"d"}, 1, 20);
  calib_test::put_bytes(dat, dat_bytes({{"blk.0.attn_q.weight", 1, {1, 2, 3, 4}}}));
  CHECK(lio::detect_calibration_format(own) == lio::CalibrationFormat::loftq);
  CHECK(lio::detect_calibration_format(gguf) == lio::CalibrationFormat::imatrix_gguf);
  CHECK(lio::detect_calibration_format(dat) == lio::CalibrationFormat::imatrix_dat);
  for (const std::string& p : {own, gguf, dat}) {
    CAPTURE(p);
    const lio::StatisticsFile f = lio::read_calibration(p);
    CHECK(f.path() == p);
    CHECK(f.format() == lio::detect_calibration_format(p));
    // Either naming, and the q/k/v fallback.
    CHECK(f.check("blk.0.attn_q.weight", 4).name == "model.layers.0.self_attn.q_proj");
    CHECK(f.check("model.layers.0.self_attn.q_proj", 4).features == 4);
    if (f.format() != lio::CalibrationFormat::loftq) CHECK(f.lookup("model.layers.0.self_attn.v_proj").shared);
  }
  CHECK(lio::read_calibration(dat).statistics("model.layers.0.self_attn.q_proj").diagonal() ==
        Eigen::Vector4d(1, 2, 3, 4));
  expect_error([&] { lio::read_calibration(path_of("missing")); }, Errc::io_error, {path_of("missing")});
  calib_test::put_bytes(path_of("empty"), {});
  expect_error([&] { lio::read_calibration(path_of("empty")); }, Errc::parse_error, {path_of("empty")});
}

TEST_CASE("imatrix .dat: hostile files") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<DatEntry> good = {{"blk.0.attn_q.weight", 2, {1, 2}}, {"blk.0.ffn_up.weight", 2, {3, 4, 5}}};
  const std::vector<unsigned char> whole = dat_bytes(good), bare = dat_bytes(good, false);
  const std::string p = path_of("hostile.dat");
  // Every cut is an error, except the one that drops exactly the optional trailer.
  for (std::size_t len = 0; len < whole.size(); ++len) {
    CAPTURE(len);
    const std::vector<unsigned char> cut(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(len));
    calib_test::put_bytes(p, cut);
    if (cut == bare)
      CHECK(lio::read_calibration(p).entries().size() == 2);
    else
      expect_error([&] { lio::read_calibration(p); }, Errc::parse_error, {p});
  }
  auto patched = [&](std::size_t at, std::uint32_t v) {
    std::vector<unsigned char> b = whole;
    for (int i = 0; i < 4; ++i) b[at + static_cast<std::size_t>(i)] = static_cast<unsigned char>(v >> (8 * i));
    return b;
  };
  struct Case {
    const char* what;
    std::vector<unsigned char> bytes;
    Errc code;
    std::string says;
  };
  std::vector<unsigned char> trailing = whole;
  trailing.push_back(0);
  std::vector<unsigned char> nul = whole;
  nul[8 + 3] = 0;
  const std::vector<Case> cases = {
      {"no entries", patched(0, 0), Errc::parse_error, "no imatrix entries"},
      {"negative count", patched(0, 0x80000000u), Errc::parse_error, "no imatrix entries"},
      {"huge count", patched(0, 0x7fffffffu), Errc::parse_error, "entries cannot fit"},
      {"negative name length", patched(4, 0xffffffffu), Errc::parse_error, "entry 0"},
      {"huge name length", patched(4, 0x7fffffffu), Errc::parse_error, "truncated"},
      {"zero values", patched(4 + 4 + 19 + 4, 0), Errc::parse_error, "0 values"},
      {"huge nval", patched(4 + 4 + 19 + 4, 0x7fffffffu), Errc::parse_error, "truncated"},
      {"trailing byte", trailing, Errc::parse_error, "does not end the file"},
      {"NUL in a name", nul, Errc::parse_error, "NUL"},
      {"duplicate", dat_bytes({good[0], good[0]}), Errc::parse_error, "two entries"},
      {"NaN", dat_bytes({{"blk.0.attn_q.weight", 2, {1, nan}}}), Errc::non_finite, "blk.0.attn_q.weight"},
      {"negative", dat_bytes({{"blk.0.attn_q.weight", 2, {1, -1}}}), Errc::invalid_argument, "blk.0.attn_q.weight"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    calib_test::put_bytes(p, c.bytes);
    expect_error([&] { lio::read_calibration(p); }, c.code, {p, c.says});
  }
}

TEST_CASE("imatrix GGUF: hostile files") {
  const std::string p = path_of("hostile.gguf");
  struct Case {
    const char* what;
    gl::Builder b;
    Errc code;
    std::string says;
  };
  std::vector<Case> cases;
  {
    gl::Builder b;  // a model, not an imatrix
    b.add_string("general.architecture", "llama");
    add_entry(b, "blk.0.attn_q.weight", {1, 2}, 3);
    cases.push_back({"no metadata", b, Errc::parse_error, "missing imatrix metadata"});
  }
  {
    gl::Builder b = imatrix_builder();
    b.add_string("general.type", "model");
    add_entry(b, "blk.0.attn_q.weight", {1, 2}, 3);
    cases.push_back({"general.type", b, Errc::parse_error, "general.type"});
  }
  {
    gl::Builder b = imatrix_builder();
    cases.push_back({"no entries", b, Errc::parse_error, "no imatrix entries"});
  }
  {
    gl::Builder b = imatrix_builder();
    b.add_tensor("blk.0.attn_q.weight.in_sum2", {2}, gl::F32, gl::Builder::encode_floats({1, 2}, gl::F32));
    cases.push_back({"unpaired", b, Errc::parse_error, "blk.0.attn_q.weight"});
  }
  {
    gl::Builder b = imatrix_builder();
    b.add_tensor("blk.0.attn_q.weight.in_sum2", {2}, gl::F16, gl::Builder::encode_floats({1, 2}, gl::F16));
    b.add_tensor("blk.0.attn_q.weight.counts", {1}, gl::F32, gl::Builder::encode_floats({3}, gl::F32));
    cases.push_back({"F16", b, Errc::parse_error, "F32"});
  }
  {
    gl::Builder b = imatrix_builder();
    b.add_tensor("blk.0.attn_q.weight.in_sum2", {2, 3}, gl::F32,
                 gl::Builder::encode_floats({1, 2, 3, 4, 5, 6}, gl::F32));
    b.add_tensor("blk.0.attn_q.weight.counts", {1}, gl::F32, gl::Builder::encode_floats({3}, gl::F32));
    cases.push_back({"sizes disagree", b, Errc::parse_error, "blk.0.attn_q.weight"});
  }
  {
    gl::Builder b = imatrix_builder();
    add_entry(b, "blk.0.attn_q.weight", {1, std::numeric_limits<float>::infinity()}, 3);
    cases.push_back({"Inf", b, Errc::non_finite, "blk.0.attn_q.weight.in_sum2"});
  }
  {
    gl::Builder b = imatrix_builder();
    add_entry(b, "blk.0.attn_q.weight", {1, 2}, -1);
    cases.push_back({"negative count", b, Errc::parse_error, "token count"});
  }
  {
    gl::Builder b = imatrix_builder();
    add_entry(b, "blk.0.attn_q.weight", {1, 2}, 3);
    add_entry(b, "model.layers.0.self_attn.q_proj", {1, 2}, 3);  // the same module twice
    cases.push_back({"duplicate", b, Errc::parse_error, "two entries"});
  }
  for (const Case& c : cases) {
    CAPTURE(c.what);
    c.b.write(p);
    expect_error([&] { lio::read_calibration(p); }, c.code, {p, c.says});
  }
  // Truncation anywhere before the end of the last tensor (the padding after
  // it is optional).
  gl::Builder b = imatrix_builder();
  add_entry(b, "blk.0.attn_q.weight", {1, 2}, 3);
  b.write(p);
  const gl::File parsed(p);
  const std::size_t end = parsed.data + parsed.tensors.back().offset + parsed.tensors.back().nbytes;
  const std::vector<unsigned char> whole = b.bytes();
  for (std::size_t len = 0; len < whole.size(); ++len) {
    CAPTURE(len);
    calib_test::put_bytes(p,
                          std::vector<unsigned char>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(len)));
    if (len >= end) {
      CHECK(lio::read_calibration(p).statistics("blk.0.attn_q.weight").diagonal() == Eigen::Vector2d(1, 2) / 3);
      continue;
    }
    try {
      lio::read_calibration(p);
      FAIL("a truncated file was read");
    } catch (const loftq::Error& e) {
      CHECK(std::string(e.what()).find(p) != std::string::npos);
    }
  }
}

}  // namespace test_calibration
