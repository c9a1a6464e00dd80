// loftq/io/statistics.hpp: the project's statistics file. Round trips, the
// layout on disk read back without the library, shares, and every
// validation error.
#include <doctest/doctest.h>

#include <loftq/data_aware.hpp>
#include <loftq/io/statistics.hpp>

#include "calib_support.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include <unistd.h>

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_statistics {

namespace lio = loftq::io;
using namespace calib_test;

namespace {

std::string path_of(const std::string& name) { return calib_test::scratch_dir("statistics") + "/" + name; }

const std::string kQ = "model.layers.0.self_attn.q_proj";
const std::string kK = "model.layers.0.self_attn.k_proj";
const std::string kDown = "model.layers.0.mlp.down_proj";

std::map<std::string, InputStatistics> two_entries() {
  std::map<std::string, InputStatistics> m;
  m.emplace(kQ, calib_test::sample_stats(7, 50, StatsMode::full, 1));
  m.emplace(kDown, calib_test::sample_stats(11, 40, StatsMode::diagonal, 2));
  return m;
}

// A file of raw tensors with the format key, through the generic writer.
struct RawTensor {
  std::string name;
  lio::Dtype dtype;
  std::vector<std::uint64_t> shape;
  std::vector<unsigned char> bytes;
};
template <class T>
std::vector<unsigned char> bytes_of(const std::vector<T>& v) {
  std::vector<unsigned char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}
void write_raw(const std::string& path, const std::vector<RawTensor>& ts,
               std::map<std::string, std::string> md = {{"loftq.format", lio::kStatisticsFormat}}) {
  std::vector<lio::TensorDecl> decls;
  for (const auto& t : ts) decls.push_back({t.name, t.dtype, t.shape});
  lio::SafetensorsWriter w(path, decls, md);
  for (const auto& t : ts) w.write(t.name, t.bytes.data(), t.bytes.size());
  w.commit();
}
RawTensor tokens(const std::string& module, std::int64_t n, std::vector<std::uint64_t> shape = {}) {
  return {module + ".tokens", lio::Dtype::I64, shape, bytes_of(std::vector<std::int64_t>{n})};
}
RawTensor xtx(const std::string& module, std::vector<float> v, std::vector<std::uint64_t> shape) {
  return {module + ".xtx", lio::Dtype::F32, shape, bytes_of(v)};
}

}  // namespace

TEST_CASE("statistics: F64 round trip is exact, full and diagonal") {
  const auto stats = two_entries();
  const std::string p = path_of("exact.safetensors");
  lio::write_statistics(p, stats, {}, lio::Dtype::F64);
  CHECK(calib_test::no_temporaries(calib_test::scratch_dir("statistics")));
  const lio::StatisticsFile f = lio::read_statistics(p);
  CHECK(f.format() == lio::CalibrationFormat::loftq);
  REQUIRE(f.entries().size() == 2);
  for (const auto& s : stats) {
    const lio::CalibrationEntry& e = f.check(s.first, s.second.features());
    CHECK(e.mode == s.second.mode());
    CHECK(e.count == s.second.count());
    const InputStatistics r = f.statistics(s.first);
    CHECK(r.count() == s.second.count());
    CHECK(r.diagonal() == s.second.diagonal());
    if (s.second.mode() == StatsMode::full) CHECK(r.gram() == s.second.gram());
  }
  f.validate();
}

TEST_CASE("statistics: F32 layout on disk, read without the library") {
  const auto stats = two_entries();
  const std::string p = path_of("layout.safetensors");
  lio::write_statistics(p, stats, {{kK, kQ}});
  const std::vector<unsigned char> b = calib_test::file_bytes(p);
  REQUIRE(b.size() >= 8);
  std::uint64_t hl = 0;
  for (int i = 7; i >= 0; --i) hl = (hl << 8) | b[static_cast<std::size_t>(i)];
  const nlohmann::json h = nlohmann::json::parse(b.begin() + 8, b.begin() + 8 + static_cast<std::ptrdiff_t>(hl));
  CHECK(h["__metadata__"]["loftq.format"] == "loftq.calibration.v1");
  CHECK(h["__metadata__"]["loftq.shares." + kK] == kQ);
  const std::size_t data = 8 + hl;
  for (const auto& s : stats) {
    const auto& x = h[s.first + ".xtx"];
    const auto& t = h[s.first + ".tokens"];
    CHECK(x["dtype"] == "F32");
    CHECK(t["dtype"] == "I64");
    CHECK(t["shape"].empty());
    std::int64_t count;
    std::memcpy(&count, &b[data + t["data_offsets"][0].get<std::size_t>()], 8);
    CHECK(count == s.second.count());
    const Eigen::Index n = s.second.features();
    const bool full = s.second.mode() == StatsMode::full;
    CHECK(x["shape"] == (full ? nlohmann::json{n, n} : nlohmann::json{n}));
    // The stored values are the sums: count x the mean, row-major.
    const Eigen::MatrixXd sums =
        full ? Eigen::MatrixXd(s.second.gram() * static_cast<double>(s.second.count()))
             : Eigen::MatrixXd(s.second.diagonal().transpose() * static_cast<double>(s.second.count()));
    const std::size_t at = data + x["data_offsets"][0].get<std::size_t>();
    for (Eigen::Index i = 0; i < sums.rows(); ++i)
      for (Eigen::Index j = 0; j < sums.cols(); ++j) {
        float v;
        std::memcpy(&v, &b[at + 4 * static_cast<std::size_t>(i * sums.cols() + j)], 4);
        CHECK(v == doctest::Approx(sums(i, j)).epsilon(1e-6));
        if (full) {
          float w;
          std::memcpy(&w, &b[at + 4 * static_cast<std::size_t>(j * sums.cols() + i)], 4);
          CHECK(v == w);  // written symmetric
        }
      }
  }
  // And the library reads its own F32 output back to float precision.
  const lio::StatisticsFile f = lio::read_statistics(p);
  const Eigen::MatrixXd g = f.statistics(kQ).gram(), g0 = stats.at(kQ).gram();
  CHECK((g - g0).cwiseAbs().maxCoeff() <= 1e-6 * g0.cwiseAbs().maxCoeff());
}

TEST_CASE("statistics: shares fall back, and lookup says so") {
  const auto stats = two_entries();
  const std::string p = path_of("shares.safetensors");
  const std::string kV = "model.layers.0.self_attn.v_proj";
  lio::write_statistics(p, stats, {{kK, kQ}, {kV, kQ}}, lio::Dtype::F64);
  const lio::StatisticsFile f = lio::read_statistics(p);
  CHECK(f.shares().size() == 2);
  const auto own = f.lookup(kQ);
  REQUIRE(own.entry);
  CHECK_FALSE(own.shared);
  for (const std::string& t : {kK, kV, std::string("blk.0.attn_k.weight"), kK + ".weight"}) {
    const auto m = f.lookup(t);
    REQUIRE(m.entry);
    CHECK(m.shared);
    CHECK(m.entry->name == kQ);
    CHECK(f.statistics(t).gram() == stats.at(kQ).gram());
  }
  CHECK(f.lookup("blk.0.attn_q.weight").entry == own.entry);  // llama.cpp naming
  CHECK(f.lookup("model.layers.1.self_attn.q_proj").entry == nullptr);
  expect_error([&] { f.statistics("model.layers.1.self_attn.q_proj"); }, Errc::invalid_argument,
               {p, "model.layers.1.self_attn.q_proj"});
  // A share must fall back to an entry, and not shadow one.
  expect_error(
      [&] {
        lio::write_statistics(path_of("bad.safetensors"), stats, {{kK, "nowhere"}});
      },
      Errc::invalid_argument, {kK, "nowhere"});
  expect_error(
      [&] {
        lio::write_statistics(path_of("bad.safetensors"), stats, {{kDown, kQ}});
      },
      Errc::invalid_argument, {kDown});
  write_raw(path_of("dangling.safetensors"), {xtx(kDown, {1, 2}, {2}), tokens(kDown, 3)},
            {{"loftq.format", lio::kStatisticsFormat}, {"loftq.shares." + kK, kQ}});
  expect_error([&] { lio::read_statistics(path_of("dangling.safetensors")); }, Errc::invalid_argument,
               {"dangling.safetensors", kK, kQ});
}

TEST_CASE("statistics: shape mismatch against the expected n") {
  const std::string p = path_of("shape.safetensors");
  lio::write_statistics(p, two_entries());
  const lio::StatisticsFile f = lio::read_statistics(p);
  CHECK(f.check(kQ, 7).features == 7);
  expect_error([&] { f.check(kQ, 8); }, Errc::invalid_argument, {p, kQ + ".xtx", "7", "8"});
  expect_error([&] { f.check("lm_head", 7); }, Errc::invalid_argument, {p, "lm_head"});
}

TEST_CASE("statistics: values are validated, naming the file and tensor") {
  const std::string m = kDown;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Case {
    const char* file;
    std::vector<float> v;
    std::vector<std::uint64_t> shape;
    Errc code;
    const char* says;
  };
  const Case cases[] = {
      {"nan.safetensors", {1, nan, 3}, {3}, Errc::non_finite, "NaN or Inf"},
      {"inf.safetensors", {1, 0, 0, inf}, {2, 2}, Errc::non_finite, "NaN or Inf"},
      {"negdiag.safetensors", {1, -2, 3}, {3}, Errc::invalid_argument, "negative"},
      {"negdiag_full.safetensors", {1, 0, 0, -1}, {2, 2}, Errc::invalid_argument, "negative"},
      {"asym.safetensors", {4, 1, 1.01f, 4}, {2, 2}, Errc::invalid_argument, "not symmetric"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.file);
    const std::string p = path_of(c.file);
    write_raw(p, {xtx(m, c.v, c.shape), tokens(m, 5)});
    const lio::StatisticsFile f = lio::read_statistics(p);  // the structure is fine
    expect_error([&] { f.statistics(m); }, c.code, {p, m + ".xtx", c.says});
    expect_error([&] { f.validate(); }, c.code, {p, m + ".xtx"});
  }
  // Asymmetry within the tolerance is accepted and averaged away.
  write_raw(path_of("nearsym.safetensors"), {xtx(m, {4, 1, 1.00001f, 4}, {2, 2}), tokens(m, 2)});
  const InputStatistics s = lio::read_statistics(path_of("nearsym.safetensors")).statistics(m);
  CHECK(s.gram()(0, 1) == s.gram()(1, 0));
  CHECK(s.gram()(0, 1) == doctest::Approx((1.0 + static_cast<double>(1.00001f)) / 4));
}

TEST_CASE("statistics: structural errors at read") {
  const std::string m = kDown;
  struct Case {
    const char* file;
    std::vector<RawTensor> ts;
    Errc code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"zero_tokens.safetensors", {xtx(m, {1, 2}, {2}), tokens(m, 0)}, Errc::invalid_argument, m + ".tokens"},
      {"neg_tokens.safetensors", {xtx(m, {1, 2}, {2}), tokens(m, -4, {1})}, Errc::invalid_argument, m + ".tokens"},
      {"nonsquare.safetensors", {xtx(m, {1, 2, 3, 4, 5, 6}, {2, 3}), tokens(m, 1)}, Errc::parse_error, m + ".xtx"},
      {"3d.safetensors", {xtx(m, {1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2}), tokens(m, 1)}, Errc::parse_error, m + ".xtx"},
      {"no_tokens.safetensors", {xtx(m, {1, 2}, {2})}, Errc::parse_error, m + ".xtx"},
      {"no_xtx.safetensors", {tokens(m, 3)}, Errc::parse_error, m + ".tokens"},
      {"stray.safetensors", {xtx(m, {1, 2}, {2}), tokens(m, 3), xtx("x", {1}, {1})}, Errc::parse_error, "x.xtx"},
      {"stray2.safetensors",
       {xtx(m, {1, 2}, {2}), tokens(m, 3), {"weight", lio::Dtype::F32, {1}, bytes_of(std::vector<float>{1})}},
       Errc::parse_error,
       "weight"},
      {"f16.safetensors", {{m + ".xtx", lio::Dtype::F16, {1}, {0, 0x3c}}, tokens(m, 3)}, Errc::unsupported, "F16"},
      {"tokens_f32.safetensors",
       {xtx(m, {1}, {1}), {m + ".tokens", lio::Dtype::F32, {}, bytes_of(std::vector<float>{3})}},
       Errc::parse_error,
       m + ".tokens"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.file);
    const std::string p = path_of(c.file);
    write_raw(p, c.ts);
    expect_error([&] { lio::read_statistics(p); }, c.code, {p, c.says});
  }
  const std::string p = path_of("noformat.safetensors");
  write_raw(p, {xtx(m, {1}, {1}), tokens(m, 1)}, {});
  expect_error([&] { lio::read_statistics(p); }, Errc::parse_error, {p, "loftq.format"});
  write_raw(p, {xtx(m, {1}, {1}), tokens(m, 1)}, {{"loftq.format", "loftq.calibration.v9"}});
  expect_error([&] { lio::read_statistics(p); }, Errc::unsupported, {p, "v9"});
}

TEST_CASE("statistics: a truncated file is an error at every length") {
  const std::string good = path_of("whole.safetensors");
  lio::write_statistics(good, two_entries());
  const std::vector<unsigned char> b = calib_test::file_bytes(good);
  const std::string p = path_of("cut.safetensors");
  for (std::size_t len = 0; len < b.size(); len += (len < 64 ? 1 : 13)) {
    CAPTURE(len);
    calib_test::put_bytes(p, std::vector<unsigned char>(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(len)));
    expect_error([&] { lio::read_statistics(p); }, Errc::parse_error, {p});
  }
}

TEST_CASE("statistics: writing refuses what it cannot store, and leaves nothing behind") {
  const std::string dir = calib_test::scratch_dir("statistics");
  std::map<std::string, InputStatistics> empty;
  empty.emplace(kQ, InputStatistics(4, StatsMode::diagonal));
  expect_error([&] { lio::write_statistics(path_of("w.safetensors"), empty); }, Errc::invalid_argument, {kQ});
  expect_error([&] { lio::write_statistics(path_of("w.safetensors"), {}); }, Errc::invalid_argument, {"w.safetensors"});
  // Squares of 1e30 overflow F32 (but not F64).
  InputStatistics big(2, StatsMode::full);
  big.add(Eigen::MatrixXd::Constant(3, 2, 1e30));
  std::map<std::string, InputStatistics> m;
  m.emplace(kQ, big);
  expect_error([&] { lio::write_statistics(path_of("w.safetensors"), m); }, Errc::non_finite, {kQ, "F32"});
  CHECK_FALSE(std::filesystem::exists(path_of("w.safetensors")));
  CHECK(calib_test::no_temporaries(dir));
  lio::write_statistics(path_of("w.safetensors"), m, {}, lio::Dtype::F64);
  CHECK(lio::read_statistics(path_of("w.safetensors")).statistics(kQ).gram()(0, 1) == doctest::Approx(1e60));
  // Overwrites replace the file whole.
  lio::write_statistics(path_of("w.safetensors"), two_entries());
  CHECK(lio::read_statistics(path_of("w.safetensors")).entries().size() == 2);
  CHECK(calib_test::no_temporaries(dir));
}

TEST_CASE("statistics: read back, they drive data-aware LoftQ exactly as the originals") {
  const auto stats = two_entries();
  const std::string p = path_of("drive.safetensors");
  lio::write_statistics(p, stats, {}, lio::Dtype::F64);
  const lio::StatisticsFile f = lio::read_statistics(p);
  for (const auto& s : stats) {
    CAPTURE(s.first);
    const Eigen::Index n = s.second.features();
    const Eigen::MatrixXf W = Eigen::MatrixXf::NullaryExpr(12, n, [](Eigen::Index i, Eigen::Index j) {
      return std::sin(0.7f * static_cast<float>(i) + 1.3f * static_cast<float>(j * j));
    });
    loftq::Options o;
    o.rank = 2;
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, 2);
    const auto a = loftq::initialize(W, q, s.second, o), b = loftq::initialize(W, q, f.statistics(s.first), o);
    CHECK(a.Q == b.Q);
    CHECK(a.A == b.A);
    CHECK(a.B == b.B);
    CHECK(a.history == b.history);
  }
}

TEST_CASE("statistics: the streaming writer equals the one-shot writer, and refuses an incomplete file") {
  const std::string dir = calib_test::scratch_dir("statistics");
  const auto m = two_entries();
  std::vector<lio::StatisticsDecl> decls;
  for (const auto& e : m) decls.push_back({e.first, e.second.features(), e.second.mode()});
  lio::write_statistics(path_of("oneshot.safetensors"), m, {}, lio::Dtype::F64);
  {
    // Written in the reverse order of the declarations: offsets come from the header.
    lio::StatisticsWriter w(path_of("stream.safetensors"), decls, {}, lio::Dtype::F64);
    for (auto it = m.rbegin(); it != m.rend(); ++it) w.write(it->first, it->second);
    w.commit();
  }
  CHECK(calib_test::file_bytes(path_of("stream.safetensors")) ==
        calib_test::file_bytes(path_of("oneshot.safetensors")));

  {
    lio::StatisticsWriter w(path_of("partial.safetensors"), decls);
    expect_error([&] { w.write("model.layers.9.mlp.up_proj", m.begin()->second); }, Errc::invalid_argument,
                 {"up_proj", "not declared"});
    expect_error([&] { w.write(decls[0].module, InputStatistics(3, StatsMode::full)); }, Errc::invalid_argument,
                 {decls[0].module, "declaration"});
    w.write(decls[0].module, m.at(decls[0].module));
    expect_error([&] { w.write(decls[0].module, m.at(decls[0].module)); }, Errc::invalid_argument, {"already written"});
    expect_error([&] { w.commit(); }, Errc::invalid_argument, {decls[1].module, "not written"});
  }
  CHECK_FALSE(std::filesystem::exists(path_of("partial.safetensors")));
  CHECK(calib_test::no_temporaries(dir));
}

}  // namespace test_statistics
