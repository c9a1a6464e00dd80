// loftq/io/imatrix.hpp against an independent reading of llama.cpp's two
// imatrix layouts, written here from llama.cpp's sources (tools/imatrix/
// imatrix.cpp: save_imatrix, save_imatrix_legacy; common/imatrix-loader.cpp;
// tools/quantize/quantize.cpp: load_imatrix), and on hostile files.
#include <doctest/doctest.h>

#include <loftq/io/calibration.hpp>
#include <loftq/io/imatrix.hpp>

#include "calib_support.hpp"
#include "common/gguf_layout.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_imatrix {

namespace lio = loftq::io;
namespace gl = gguf_layout;
using namespace calib_test;

namespace {

std::string path_of(const std::string& name) { return calib_test::scratch_dir("imatrix") + "/" + name; }

// llama-imatrix's collector state for one tensor (struct Stats).
struct Stats {
  std::vector<float> values;         // per expert, per column: sum of x^2
  std::vector<std::int64_t> counts;  // per expert: tokens
};
using Collected = std::map<std::string, Stats>;

// save_imatrix: GGUF, F32 in_sum2 of ne (nval / nmat, nmat) and counts of ne
// (1, nmat); ggml_n_dims drops trailing 1s when gguf writes the shape.
void write_gguf(const std::string& path, const Collected& c, const std::vector<std::string>& datasets,
                std::uint32_t chunk_count, std::uint32_t chunk_size) {
  gl::Builder b;
  b.add_string("general.type", "imatrix");
  b.add_string_array("imatrix.datasets", datasets);
  b.add_u32("imatrix.chunk_count", chunk_count);
  b.add_u32("imatrix.chunk_size", chunk_size);
  for (const auto& e : c) {  // std::map: sorted as std::sort sorts the names
    const std::uint64_t nmat = e.second.counts.size(), nval = e.second.values.size();
    std::vector<float> counts(e.second.counts.begin(), e.second.counts.end());
    b.add_tensor(e.first + ".in_sum2",
                 nmat == 1 ? std::vector<std::uint64_t>{nval} : std::vector<std::uint64_t>{nval / nmat, nmat}, gl::F32,
                 gl::Builder::encode_floats(e.second.values, gl::F32));
    b.add_tensor(e.first + ".counts", nmat == 1 ? std::vector<std::uint64_t>{1} : std::vector<std::uint64_t>{1, nmat},
                 gl::F32, gl::Builder::encode_floats(counts, gl::F32));
  }
  b.write(path);
}

// save_imatrix_legacy: entries with some data, sorted; values stored as
// (value / count) * ncall in float, ncall = ceil(max count / chunk_size).
void write_dat(const std::string& path, const Collected& c, std::int32_t last_chunk, const std::string& dataset,
               std::int32_t chunk_size) {
  std::vector<unsigned char> o;
  auto i32 = [&](std::int32_t v) { gl::Builder::put(o, static_cast<std::uint32_t>(v), 4); };
  std::int32_t n_entries = 0;
  for (const auto& e : c)
    if (*std::max_element(e.second.counts.begin(), e.second.counts.end()) > 0) ++n_entries;
  i32(n_entries);
  for (const auto& e : c) {
    const Stats& s = e.second;
    if (*std::max_element(s.counts.begin(), s.counts.end()) == 0) continue;
    i32(static_cast<std::int32_t>(e.first.size()));
    o.insert(o.end(), e.first.begin(), e.first.end());
    const std::int32_t ncall = static_cast<std::int32_t>(
        (*std::max_element(s.counts.begin(), s.counts.end()) + (chunk_size - 1)) / chunk_size);
    i32(ncall);
    const std::int32_t nval = static_cast<std::int32_t>(s.values.size()),
                       nmat = static_cast<std::int32_t>(s.counts.size());
    i32(nval);
    for (std::int32_t i = 0; i < nval; ++i) {
      float count = static_cast<float>(s.counts[static_cast<std::size_t>(i / (nval / nmat))]);
      float value = s.values[static_cast<std::size_t>(i)];
      if (count == 0.0f) value = count = 1.0f;
      const float v = (value / count) * static_cast<float>(ncall);
      std::uint32_t u;
      std::memcpy(&u, &v, 4);
      gl::Builder::put(o, u, 4);
    }
  }
  i32(last_chunk);
  i32(static_cast<std::int32_t>(dataset.size()));
  o.insert(o.end(), dataset.begin(), dataset.end());
  calib_test::put_bytes(path, o);
}

// llama-quantize's importance per tensor (load_imatrix of quantize.cpp over
// common_imatrix_load), from each layout.
using Importance = std::map<std::string, std::vector<float>>;

Importance quantize_gguf(const std::string& path) {
  const gl::File f(path);
  Importance out;
  for (const gl::Tensor& t : f.tensors) {
    std::string name = t.name;
    if (name.size() < 8 || name.compare(name.size() - 8, 8, ".in_sum2") != 0) continue;
    name.resize(name.size() - 8);
    const gl::Tensor* c = f.find(name + ".counts");
    REQUIRE(c);
    const std::vector<float> sums = f.values(t), counts = f.values(*c);
    const std::size_t ne0 = sums.size() / counts.size();
    std::vector<float>& e = out[name];
    e.resize(sums.size());
    for (std::size_t j = 0; j < counts.size(); ++j) {
      const float count = static_cast<float>(std::lround(counts[j]));
      for (std::size_t i = 0; i < ne0; ++i) e[j * ne0 + i] = count > 0 ? sums[j * ne0 + i] / count : 1.0f;
    }
  }
  return out;
}

Importance quantize_dat(const std::string& path) {
  const std::vector<unsigned char> b = calib_test::file_bytes(path);
  std::size_t pos = 0;
  auto i32 = [&] {
    REQUIRE(pos + 4 <= b.size());
    const auto v = static_cast<std::int32_t>(static_cast<std::uint32_t>(gl::le(&b[pos], 4)));
    pos += 4;
    return v;
  };
  Importance out;
  const std::int32_t n = i32();
  for (std::int32_t k = 0; k < n; ++k) {
    const std::int32_t len = i32();
    const std::string name(reinterpret_cast<const char*>(&b[pos]), static_cast<std::size_t>(len));
    pos += static_cast<std::size_t>(len);
    const std::int32_t ncall = i32(), nval = i32();
    std::vector<float>& e = out[name];
    for (std::int32_t i = 0; i < nval; ++i) {
      float v;
      std::memcpy(&v, &b[pos], 4);
      pos += 4;
      e.push_back(ncall > 0 ? v / static_cast<float>(ncall) : v);
    }
  }
  return out;
}

// Sums of x^2 over `tokens` samples of n columns of unequal scales.
Stats collected(std::size_t n, std::int64_t tokens, std::uint64_t seed) {
  const InputStatistics s = calib_test::sample_stats(static_cast<Eigen::Index>(n), tokens, StatsMode::diagonal, seed);
  Stats out;
  for (Eigen::Index j = 0; j < s.features(); ++j)
    out.values.push_back(static_cast<float>(s.diagonal()(j) * static_cast<double>(tokens)));
  out.counts = {tokens};
  return out;
}

// Layer 0 complete, layer 1 with one tensor per shared input, a router (no
// Hugging Face name) and the output head.
Collected model_collection() {
  Collected c;
  const char* l0[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"};
  std::uint64_t seed = 10;
  for (const char* t : l0) c["blk.0." + std::string(t) + ".weight"] = collected(8, 1000, seed++);
  c["blk.0.ffn_down.weight"] = collected(16, 1000, seed++);
  c["blk.1.attn_q.weight"] = collected(8, 1000, seed++);
  c["blk.1.ffn_up.weight"] = collected(8, 1000, seed++);
  c["blk.0.ffn_gate_inp.weight"] = collected(8, 1000, seed++);
  c["output.weight"] = collected(8, 1000, seed++);
  return c;
}

// The library's importance: the mean sum / count of each entry.
void check_against(const lio::StatisticsFile& f, const Importance& imp, double rel) {
  REQUIRE(f.entries().size() == imp.size());
  for (const auto& e : imp) {
    CAPTURE(e.first);
    const auto m = f.lookup(e.first);
    REQUIRE(m.entry);
    CHECK_FALSE(m.shared);
    const Eigen::VectorXd d = f.statistics(e.first).diagonal();
    REQUIRE(static_cast<std::size_t>(d.size()) == e.second.size());
    for (Eigen::Index j = 0; j < d.size(); ++j)
      CHECK(d(j) == doctest::Approx(e.second[static_cast<std::size_t>(j)]).epsilon(rel));
  }
}

}  // namespace

TEST_CASE("imatrix: a GGUF from llama.cpp's layout reads as llama-quantize reads it") {
  const Collected c = model_collection();
  const std::string p = path_of("model.imatrix.gguf");
  write_gguf(p, c, {"wiki.train.raw", "extra.txt"}, 2, 512);
  const lio::StatisticsFile f = lio::read_imatrix_gguf(p);
  CHECK(f.format() == lio::CalibrationFormat::imatrix_gguf);
  CHECK(f.datasets() == std::vector<std::string>{"wiki.train.raw", "extra.txt"});
  CHECK(f.chunk_count() == 2);
  CHECK(f.chunk_size() == 512);
  CHECK_FALSE(f.counts_are_chunks());
  check_against(f, quantize_gguf(p), 1e-6);
  // Exactly the stored sums and count, by Hugging Face name.
  const InputStatistics s = f.statistics("model.layers.0.mlp.down_proj");
  CHECK(s.count() == 1000);
  CHECK(s.mode() == StatsMode::diagonal);
  for (Eigen::Index j = 0; j < 16; ++j)
    CHECK(s.diagonal()(j) ==
          static_cast<double>(c.at("blk.0.ffn_down.weight").values[static_cast<std::size_t>(j)]) / 1000);
  CHECK(f.entries().count("model.layers.0.self_attn.q_proj") == 1);
  CHECK(f.entries().count("lm_head") == 1);
  CHECK(f.entries().count("blk.0.ffn_gate_inp.weight") == 1);  // no Hugging Face name: kept
}

TEST_CASE("imatrix: a legacy .dat reads as llama-quantize reads it, and as the GGUF of the same sums") {
  const Collected c = model_collection();
  const std::string dat = path_of("model.imatrix.dat"), gguf = path_of("same.imatrix.gguf");
  write_dat(dat, c, 2, "wiki.train.raw", 512);
  write_gguf(gguf, c, {"wiki.train.raw"}, 2, 512);
  const lio::StatisticsFile f = lio::read_imatrix_dat(dat);
  CHECK(f.format() == lio::CalibrationFormat::imatrix_dat);
  CHECK(f.counts_are_chunks());
  CHECK(f.chunk_count() == 2);
  CHECK(f.datasets() == std::vector<std::string>{"wiki.train.raw"});
  check_against(f, quantize_dat(dat), 1e-6);
  CHECK(f.statistics("blk.0.attn_q.weight").count() == 2);  // ceil(1000 / 512) chunks
  const lio::StatisticsFile g = lio::read_imatrix_gguf(gguf);
  REQUIRE(g.entries().size() == f.entries().size());
  CHECK(g.shares() == f.shares());
  for (const auto& e : g.entries()) {
    CAPTURE(e.first);
    const Eigen::VectorXd a = f.statistics(e.first).diagonal(), b = g.statistics(e.first).diagonal();
    CHECK((a - b).cwiseAbs().maxCoeff() <= 1e-6 * b.cwiseAbs().maxCoeff());
  }
}

TEST_CASE("imatrix: modules without an entry fall back within q/k/v and gate/up") {
  const std::string p = path_of("shares.imatrix.gguf");
  Collected c = model_collection();
  c["blk.2.attn_qkv.weight"] = collected(8, 100, 77);  // fused: q, k and v of layer 2 share it
  write_gguf(p, c, {}, 1, 512);
  const lio::StatisticsFile f = lio::read_imatrix_gguf(p);
  const std::map<std::string, std::string> expected = {
      {"model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.q_proj"},
      {"model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.q_proj"},
      {"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"},
      {"model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.qkv_proj"},
      {"model.layers.2.self_attn.k_proj", "model.layers.2.self_attn.qkv_proj"},
      {"model.layers.2.self_attn.v_proj", "model.layers.2.self_attn.qkv_proj"},
  };
  CHECK(f.shares() == expected);
  const auto m = f.lookup("blk.1.attn_v.weight");
  REQUIRE(m.entry);
  CHECK(m.shared);
  CHECK(m.entry->name == "model.layers.1.self_attn.q_proj");
  CHECK_FALSE(f.lookup("blk.1.attn_q.weight").shared);
  CHECK(f.lookup("model.layers.1.self_attn.o_proj").entry == nullptr);  // no sibling shares o_proj's input
  CHECK(f.lookup("model.layers.1.mlp.down_proj").entry == nullptr);
}

TEST_CASE("imatrix: per-expert statistics are refused by name, the rest read") {
  Collected c = model_collection();
  Stats moe;
  for (int e = 0; e < 4; ++e) {
    const Stats one = collected(8, 100 + e, 90 + static_cast<std::uint64_t>(e));
    moe.values.insert(moe.values.end(), one.values.begin(), one.values.end());
    moe.counts.push_back(100 + e);
  }
  c["blk.1.ffn_down_exps.weight"] = moe;
  const std::string p = path_of("moe.imatrix.gguf"), d = path_of("moe.imatrix.dat");
  write_gguf(p, c, {}, 1, 512);
  write_dat(d, c, 1, "", 512);
  for (const std::string& path : {p, d}) {
    CAPTURE(path);
    const lio::StatisticsFile f = path == p ? lio::read_imatrix_gguf(path) : lio::read_imatrix_dat(path);
    CHECK(f.refused().count("blk.1.ffn_down_exps.weight") == 1);
    expect_error([&] { f.lookup("blk.1.ffn_down_exps.weight"); }, Errc::unsupported, {path, "ffn_down_exps", "expert"});
    CHECK(f.statistics("blk.0.ffn_down.weight").features() == 16);
  }
}

TEST_CASE("imatrix: a file of per-expert statistics only is refused when read") {
  Stats moe;
  for (int e = 0; e < 2; ++e) {
    const Stats one = collected(8, 100 + e, 70 + static_cast<std::uint64_t>(e));
    moe.values.insert(moe.values.end(), one.values.begin(), one.values.end());
    moe.counts.push_back(100 + e);
  }
  Collected c;
  c["blk.0.ffn_down_exps.weight"] = moe;
  const std::string p = path_of("experts.imatrix.gguf"), d = path_of("experts.imatrix.dat");
  write_gguf(p, c, {}, 1, 512);
  write_dat(d, c, 1, "", 512);
  expect_error([&] { lio::read_imatrix_gguf(p); }, Errc::unsupported, {p, "no usable entry", "per-expert"});
  expect_error([&] { lio::read_imatrix_dat(d); }, Errc::unsupported, {d, "no usable entry", "per-expert"});
  expect_error([&] { lio::read_calibration(p); }, Errc::unsupported, {p, "no usable entry"});
}

TEST_CASE("imatrix: write_imatrix_gguf is what llama-imatrix writes, read independently and by the library") {
  std::map<std::string, InputStatistics> stats;
  stats.emplace("model.layers.0.self_attn.q_proj", calib_test::sample_stats(8, 300, StatsMode::full, 5));
  stats.emplace("model.layers.0.mlp.down_proj", calib_test::sample_stats(16, 200, StatsMode::diagonal, 6));
  stats.emplace("lm_head", calib_test::sample_stats(8, 300, StatsMode::diagonal, 7));
  stats.emplace("blk.3.ffn_up.weight",
                calib_test::sample_stats(8, 100, StatsMode::diagonal, 8));  // llama.cpp name kept
  const std::map<std::string, std::string> shares = {
      {"model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.q_proj"}};
  const std::string p = path_of("written.imatrix.gguf");
  lio::write_imatrix_gguf(p, stats, {"calib.txt"}, 3, 100, shares);
  CHECK(calib_test::no_temporaries(calib_test::scratch_dir("imatrix")));

  const gl::File f(p);
  CHECK(f.kv_string("general.type") == "imatrix");
  const auto* cc = f.kv("imatrix.chunk_count");
  const auto* cs = f.kv("imatrix.chunk_size");
  REQUIRE(cc);
  REQUIRE(cs);
  CHECK(gl::le(cc->data(), 4) == 3);
  CHECK(gl::le(cs->data(), 4) == 100);
  const auto* ds = f.kv("imatrix.datasets");
  REQUIRE(ds);
  CHECK(gl::le(ds->data(), 4) == gl::T_STRING);
  CHECK(gl::le(ds->data() + 4, 8) == 1);
  CHECK(std::string(ds->begin() + 20, ds->end()) == "calib.txt");
  const std::vector<std::string> names = {"blk.0.attn_k.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                                          "blk.3.ffn_up.weight", "output.weight"};
  REQUIRE(f.tensors.size() == 2 * names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {  // sorted, in_sum2 then counts
    CHECK(f.tensors[2 * i].name == names[i] + ".in_sum2");
    CHECK(f.tensors[2 * i + 1].name == names[i] + ".counts");
    CHECK(f.tensors[2 * i].type == gl::F32);
    CHECK(f.tensors[2 * i].ne.size() == 1);
    CHECK(f.tensors[2 * i + 1].ne == std::vector<std::uint64_t>{1});
  }
  const Importance imp = quantize_gguf(p);
  auto expect_mean = [&](const std::string& llama, const InputStatistics& s) {
    CAPTURE(llama);
    const std::vector<float>& e = imp.at(llama);
    REQUIRE(static_cast<Eigen::Index>(e.size()) == s.features());
    for (Eigen::Index j = 0; j < s.features(); ++j)
      CHECK(e[static_cast<std::size_t>(j)] == doctest::Approx(s.diagonal()(j)).epsilon(1e-6));
    CHECK(f.values(*f.find(llama + ".counts"))[0] == static_cast<float>(s.count()));
  };
  expect_mean("blk.0.attn_q.weight", stats.at("model.layers.0.self_attn.q_proj"));  // a full matrix's diagonal
  expect_mean("blk.0.attn_k.weight", stats.at("model.layers.0.self_attn.q_proj"));  // the share's copy
  expect_mean("blk.0.ffn_down.weight", stats.at("model.layers.0.mlp.down_proj"));
  expect_mean("output.weight", stats.at("lm_head"));
  expect_mean("blk.3.ffn_up.weight", stats.at("blk.3.ffn_up.weight"));

  const lio::StatisticsFile g = lio::read_imatrix_gguf(p);
  CHECK(g.datasets() == std::vector<std::string>{"calib.txt"});
  for (const auto& s : stats) {
    const InputStatistics r = g.statistics(s.first);
    CHECK(r.count() == s.second.count());
    CHECK((r.diagonal() - s.second.diagonal()).cwiseAbs().maxCoeff() <= 1e-6 * s.second.diagonal().maxCoeff());
  }
  // The library's writer and the independent one agree byte for byte on the same sums.
  Collected c;
  for (const auto& t : f.tensors)
    if (t.name.size() > 8 && t.name.compare(t.name.size() - 8, 8, ".in_sum2") == 0) {
      const std::string n = t.name.substr(0, t.name.size() - 8);
      c[n].values = f.values(t);
      c[n].counts = {static_cast<std::int64_t>(f.values(*f.find(n + ".counts"))[0])};
    }
  write_gguf(path_of("again.imatrix.gguf"), c, {"calib.txt"}, 3, 100);
  CHECK(calib_test::file_bytes(path_of("again.imatrix.gguf")) == calib_test::file_bytes(p));

  expect_error(
      [&] {
        std::map<std::string, InputStatistics> bad;
        bad.emplace("model.embed_tokens", calib_test::sample_stats(4, 10, StatsMode::diagonal, 1));
        lio::write_imatrix_gguf(path_of("bad.gguf"), bad, {}, 1, 1);
      },
      Errc::invalid_argument, {"model.embed_tokens"});
  expect_error(
      [&] {
        std::map<std::string, InputStatistics> twice;
        twice.emplace("lm_head", calib_test::sample_stats(4, 10, StatsMode::diagonal, 1));
        twice.emplace("output.weight", calib_test::sample_stats(4, 10, StatsMode::diagonal, 1));
        lio::write_imatrix_gguf(path_of("bad.gguf"), twice, {}, 1, 1);
      },
      Errc::invalid_argument, {"output.weight"});
  CHECK_FALSE(std::filesystem::exists(path_of("bad.gguf")));
}

TEST_CASE("imatrix: llama-quantize's fallbacks (no tokens, ncall 0)") {
  Collected c;
  c["blk.0.attn_q.weight"] = {{4, 8, 12}, {0}};
  const std::string p = path_of("zero.imatrix.gguf");
  write_gguf(p, c, {}, 0, 512);
  const InputStatistics s = lio::read_imatrix_gguf(p).statistics("blk.0.attn_q.weight");
  CHECK(s.diagonal() == Eigen::Vector3d(1, 1, 1));  // importance 1, as llama-quantize gives it
  // A .dat entry with ncall 0 holds the importance itself.
  std::vector<unsigned char> o;
  auto i32 = [&](std::uint32_t v) { gl::Builder::put(o, v, 4); };
  i32(1);
  i32(19);
  const std::string name = "blk.0.attn_q.weight";
  o.insert(o.end(), name.begin(), name.end());
  i32(0);
  i32(2);
  for (float v : {0.5f, 3.0f}) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    i32(u);
  }
  calib_test::put_bytes(path_of("ncall0.dat"), o);
  const InputStatistics d = lio::read_imatrix_dat(path_of("ncall0.dat")).statistics(name);
  CHECK(d.diagonal() == Eigen::Vector2d(0.5, 3.0));
  CHECK(quantize_dat(path_of("ncall0.dat")).at(name) == std::vector<float>{0.5f, 3.0f});
}

}  // namespace test_imatrix
