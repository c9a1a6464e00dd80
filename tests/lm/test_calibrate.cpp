// Calibration statistics (common/lm/calibrate.hpp) and the token loader: the
// statistics against a float64 brute force over an independent per-token
// forward pass, determinism, refusal of bad tokens, and cancellation. The
// model formats against each other are test_load.cpp.
#include <doctest/doctest.h>

#include <loftq/detail/half.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/safetensors.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/load.hpp"
#include "common/lm/save.hpp"
#include "calibrate_support.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/lm/CMakeLists.txt).
namespace test_calibrate {

namespace {

using calibrate_test::check_identical;
using calibrate_test::exists;
using calibrate_test::random_sequences;
using calibrate_test::rel_diff;
using calibrate_test::shared;
using calibrate_test::TempDir;
using lm::Mat;

// --- An independent float64 forward, one position at a time with a key/value
// cache, as llama2.c's run.c computes it; it records every linear's input.
// Sums of x x^T per layer and input: [layer][0 q/k/v, 1 o, 2 gate/up, 3 down].
using Sums = std::vector<std::array<Eigen::MatrixXd, 4>>;

Sums brute_force_sums(const lm::Weights<float>& wf, const std::vector<std::vector<int>>& seqs) {
  const lm::Config& c = wf.config;
  const int d = c.dim, hs = c.head_size(), kvd = c.kv_dim(), group = c.n_heads / c.n_kv_heads;
  std::vector<std::array<Eigen::MatrixXd, 4>> sums(static_cast<std::size_t>(c.n_layers));
  for (auto& s : sums) {
    s[0] = s[1] = s[2] = Eigen::MatrixXd::Zero(d, d);
    s[3] = Eigen::MatrixXd::Zero(c.hidden_dim, c.hidden_dim);
  }
  auto W = [&](int l, int k) { return wf.layers[static_cast<std::size_t>(l)].W[k].cast<double>().eval(); };
  auto rmsnorm = [&](const Eigen::VectorXd& x, const lm::Vec<float>& g) {
    double ss = 0;
    for (int j = 0; j < d; ++j) ss += x(j) * x(j);
    const double r = 1.0 / std::sqrt(ss / d + 1e-5);
    Eigen::VectorXd y(d);
    for (int j = 0; j < d; ++j) y(j) = static_cast<double>(g(j)) * x(j) * r;
    return y;
  };
  auto outer = [](Eigen::MatrixXd& S, const Eigen::VectorXd& v) {
    for (Eigen::Index i = 0; i < v.size(); ++i)
      for (Eigen::Index j = 0; j < v.size(); ++j) S(i, j) += v(i) * v(j);
  };
  for (const auto& seq : seqs) {
    std::vector<std::vector<Eigen::VectorXd>> kcache(static_cast<std::size_t>(c.n_layers)),
        vcache(static_cast<std::size_t>(c.n_layers));
    for (std::size_t pos = 0; pos < seq.size(); ++pos) {
      Eigen::VectorXd x = wf.embedding.row(seq[pos]).transpose().cast<double>();
      for (int l = 0; l < c.n_layers; ++l) {
        const auto& lw = wf.layers[static_cast<std::size_t>(l)];
        auto& S = sums[static_cast<std::size_t>(l)];
        const Eigen::VectorXd xn = rmsnorm(x, lw.rms_att);
        outer(S[0], xn);
        Eigen::VectorXd q = W(l, lm::kQ) * xn, k = W(l, lm::kK) * xn, v = W(l, lm::kV) * xn;
        for (int i = 0; i < d; i += 2) {  // run.c's RoPE: pairs (i, i+1), freq from i mod head_size
          const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % hs) / hs);
          const double a = static_cast<double>(pos) * freq, cr = std::cos(a), sr = std::sin(a);
          auto rot = [&](Eigen::VectorXd& u) {
            const double u0 = u(i), u1 = u(i + 1);
            u(i) = u0 * cr - u1 * sr;
            u(i + 1) = u0 * sr + u1 * cr;
          };
          rot(q);
          if (i < kvd) rot(k);
        }
        kcache[static_cast<std::size_t>(l)].push_back(k);
        vcache[static_cast<std::size_t>(l)].push_back(v);
        Eigen::VectorXd att = Eigen::VectorXd::Zero(d);
        for (int h = 0; h < c.n_heads; ++h) {
          const int g = h / group;
          std::vector<double> score(pos + 1);
          double mx = -1e300;
          for (std::size_t s = 0; s <= pos; ++s) {
            score[s] = q.segment(h * hs, hs).dot(kcache[static_cast<std::size_t>(l)][s].segment(g * hs, hs)) /
                       std::sqrt(static_cast<double>(hs));
            mx = std::max(mx, score[s]);
          }
          double z = 0;
          for (double& e : score) z += (e = std::exp(e - mx));
          for (std::size_t s = 0; s <= pos; ++s)
            att.segment(h * hs, hs) += score[s] / z * vcache[static_cast<std::size_t>(l)][s].segment(g * hs, hs);
        }
        outer(S[1], att);
        x += W(l, lm::kO) * att;
        const Eigen::VectorXd xn2 = rmsnorm(x, lw.rms_ffn);
        outer(S[2], xn2);
        const Eigen::VectorXd h1 = W(l, lm::kGate) * xn2, h3 = W(l, lm::kUp) * xn2;
        Eigen::VectorXd hh(h1.size());
        for (Eigen::Index j = 0; j < h1.size(); ++j) hh(j) = h1(j) / (1.0 + std::exp(-h1(j))) * h3(j);
        outer(S[3], hh);
        x += W(l, lm::kDown) * hh;
      }
    }
  }
  return sums;
}

void write_tokens_npy(const std::string& path, const char* descr, int itemsize, const std::vector<std::int64_t>& ids,
                      std::size_t rows, std::size_t cols) {
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" +
                       std::to_string(rows) + ", " + std::to_string(cols) + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(len), 2);
  f << header;
  for (std::int64_t v : ids) {
    if (itemsize == 4) {
      const std::int32_t x = static_cast<std::int32_t>(v);
      f.write(reinterpret_cast<const char*>(&x), 4);
    } else {
      f.write(reinterpret_cast<const char*>(&v), 8);
    }
  }
}

}  // namespace

TEST_CASE("calibration statistics equal a float64 brute force over an independent forward") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const lm::Config& c = w.config;
  const auto seqs = random_sequences(c.vocab_size, {17, 32, 9}, 7);
  const Sums brute = brute_force_sums(w, seqs);

  lm::CalibrationOptions o;
  o.threads = 1;
  // The double instantiation differs from the brute force only in summation order.
  const lm::Calibration cd = lm::collect_statistics(w.cast<double>(), seqs, o);
  // The float forward rounds activations to float.
  const lm::Calibration cf = lm::collect_statistics(w, seqs, o);
  REQUIRE(cd.inputs.size() == static_cast<std::size_t>(4 * c.n_layers));
  CHECK(cd.tokens == 17 + 32 + 9);
  CHECK(cd.sequences == 3);
  for (int l = 0; l < c.n_layers; ++l)
    for (int s = 0; s < 4; ++s) {
      const auto& in = cd.inputs[static_cast<std::size_t>(4 * l + s)];
      CHECK(in.layer == l);
      CHECK(in.stats.count() == 58);
      const Eigen::MatrixXd& ref = brute[static_cast<std::size_t>(l)][static_cast<std::size_t>(s)];
      const Eigen::MatrixXd Hd = in.stats.gram() * 58.0;
      const Eigen::MatrixXd Hf = cf.inputs[static_cast<std::size_t>(4 * l + s)].stats.gram() * 58.0;
      CHECK(rel_diff(Hd, ref) < 1e-12);
      CHECK(rel_diff(Hf, ref) < 1e-5);
    }
  // Names and sharing.
  CHECK(cd.inputs[0].name == "model.layers.0.self_attn.q_proj");
  CHECK(cd.inputs[0].targets == std::vector<std::string>{"model.layers.0.self_attn.q_proj",
                                                         "model.layers.0.self_attn.k_proj",
                                                         "model.layers.0.self_attn.v_proj"});
  CHECK(cd.inputs[2].targets == std::vector<std::string>{"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"});
  CHECK(cd.inputs[3].name == "model.layers.0.mlp.down_proj");
  CHECK(&cd.at("model.layers.1.mlp.up_proj") == &cd.inputs[6]);
  CHECK(&cd.at(1, lm::kV) == &cd.inputs[4].stats);
  CHECK_THROWS_AS(cd.at("model.layers.9.mlp.up_proj"), loftq::Error);
}

TEST_CASE("diagonal statistics are the diagonal of the full ones") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {40, 25}, 11);
  lm::CalibrationOptions o;
  const lm::Calibration full = lm::collect_statistics(w, seqs, o);
  o.mode = loftq::StatsMode::diagonal;
  const lm::Calibration diag = lm::collect_statistics(w, seqs, o);
  REQUIRE(full.inputs.size() == diag.inputs.size());
  for (std::size_t i = 0; i < full.inputs.size(); ++i) {
    CHECK(diag.inputs[i].stats.mode() == loftq::StatsMode::diagonal);
    const Eigen::VectorXd a = diag.inputs[i].stats.diagonal(), b = full.inputs[i].stats.diagonal();
    // The same products; only the order of the sums may differ (GEMM vs a
    // column reduction), so agreement is to a few units in the last place.
    CHECK(((a - b).cwiseAbs().array() <= 1e-13 * b.cwiseAbs().array()).all());
  }
}

TEST_CASE("calibration is bit-identical for 1 and 2 threads and any batch") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {64, 31, 64, 5, 50}, 3);
  // Chunk 0: by memory, all 214 tokens in one update per layer; 37: updates
  // cut inside sequences and across batches.
  const loftq::StatsMode modes[] = {loftq::StatsMode::full, loftq::StatsMode::diagonal};
  for (int i = 0; i < 4; ++i) {
    const std::int64_t chunk = i < 2 ? 0 : 37;
    CAPTURE(chunk);
    lm::CalibrationOptions o;
    o.mode = modes[i % 2];
    o.chunk = chunk;
    o.threads = 1;
    o.batch = 1;
    const lm::Calibration a = lm::collect_statistics(w, seqs, o);
    o.threads = 2;
    o.batch = 0;
    const lm::Calibration b = lm::collect_statistics(w, seqs, o);
    o.batch = 3;
    const lm::Calibration c3 = lm::collect_statistics(w, seqs, o);
    check_identical(a, b);
    check_identical(a, c3);
    if (chunk == 0) continue;
    // The same rows, each once: the sums of one update per layer to rounding.
    o.chunk = 0;
    const lm::Calibration whole = lm::collect_statistics(w, seqs, o);
    REQUIRE(whole.inputs.size() == a.inputs.size());
    for (std::size_t k = 0; k < a.inputs.size(); ++k) {
      const loftq::InputStatistics& x = a.inputs[k].stats;
      const loftq::InputStatistics& y = whole.inputs[k].stats;
      CHECK(x.count() == 214);
      CHECK(rel_diff(x.diagonal(), y.diagonal()) < 1e-13);
      if (x.mode() == loftq::StatsMode::full) CHECK(rel_diff(x.gram(), y.gram()) < 1e-13);
    }
  }
  lm::CalibrationOptions bad;
  bad.chunk = -1;
  CHECK_THROWS_AS(lm::collect_statistics(w, seqs, bad), loftq::Error);
}

TEST_CASE("statistics handed over layer by layer equal the ones held whole") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {40, 17, 40}, 21);
  lm::CalibrationOptions o;
  o.threads = 2;
  const lm::Calibration whole = lm::collect_statistics(w, seqs, o);
  lm::Calibration streamed;
  int layers = 0;
  o.on_layer = [&](std::vector<lm::LinearInput>& layer) {
    REQUIRE(layer.size() == 4);
    CHECK(layer[0].layer == layers);  // in order, each once
    ++layers;
    for (auto& in : layer) streamed.inputs.push_back(std::move(in));
  };
  const lm::Calibration rest = lm::collect_statistics(w, seqs, o);
  CHECK(layers == w.config.n_layers);
  CHECK(rest.inputs.empty());
  streamed.tokens = rest.tokens;
  streamed.sequences = rest.sequences;
  CHECK(rest.tokens == 97);
  check_identical(whole, streamed);
}

TEST_CASE("bad tokens are refused") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const int V = w.config.vocab_size;
  auto code = [&](const std::vector<std::vector<int>>& s) {
    try {
      lm::collect_statistics(w, s);
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return loftq::Errc::cancelled;  // not thrown
  };
  CHECK(code({{1, 2, V}}) == loftq::Errc::invalid_argument);
  CHECK(code({{1, -1}}) == loftq::Errc::invalid_argument);
  CHECK(code({}) == loftq::Errc::invalid_argument);
  CHECK(code({std::vector<int>(static_cast<std::size_t>(w.config.seq_len) + 1, 1)}) == loftq::Errc::invalid_argument);

  TempDir dir("tokens");
  // int32 and int64 files read back as written.
  write_tokens_npy(dir / "ok32.npy", "<i4", 4, {1, 2, 3, 4, 5, V - 1}, 2, 3);
  write_tokens_npy(dir / "ok64.npy", "<i8", 8, {1, 2, 3, 4, 5, V - 1}, 3, 2);
  CHECK(lm::read_tokens(dir / "ok32.npy", w.config) == std::vector<std::vector<int>>{{1, 2, 3}, {4, 5, V - 1}});
  CHECK(lm::read_tokens(dir / "ok64.npy", w.config) == std::vector<std::vector<int>>{{1, 2}, {3, 4}, {5, V - 1}});
  // An id past the vocabulary, a negative one, one past int32, a float file,
  // and sequences longer than the context.
  write_tokens_npy(dir / "big.npy", "<i4", 4, {1, 2, 3, 4, V, 6}, 2, 3);
  write_tokens_npy(dir / "neg.npy", "<i8", 8, {1, -2}, 1, 2);
  write_tokens_npy(dir / "huge.npy", "<i8", 8, {1, std::int64_t(1) << 40}, 1, 2);
  write_tokens_npy(dir / "float.npy", "<f4", 4, {0, 0}, 1, 2);
  std::vector<std::int64_t> longer(static_cast<std::size_t>(w.config.seq_len) + 1, 1);
  write_tokens_npy(dir / "long.npy", "<i4", 4, longer, 1, longer.size());
  for (const char* f : {"big.npy", "neg.npy", "huge.npy", "long.npy"}) {
    CAPTURE(f);
    try {
      lm::read_tokens(dir / f, w.config);
      FAIL("accepted");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::invalid_argument);
      CHECK(std::string(e.what()).find(f) != std::string::npos);
    }
  }
  try {
    lm::read_tokens(dir / "big.npy", w.config);
  } catch (const loftq::Error& e) {
    CHECK(std::string(e.what()).find("token id " + std::to_string(V) + " (sequence 1, position 1)") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(lm::read_tokens(dir / "float.npy", w.config), loftq::Error);
}

TEST_CASE("cancellation is honoured and progress is reported per sequence and layer") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {8, 8, 8, 8}, 5);
  std::atomic<bool> cancel{false};
  std::vector<std::size_t> seen;
  lm::CalibrationOptions o;
  o.batch = 1;
  o.cancel = &cancel;
  const std::size_t steps = 4 * static_cast<std::size_t>(w.config.n_layers);
  o.progress = [&](std::size_t done, std::size_t total) {
    CHECK(total == steps);
    seen.push_back(done);
    if (done == 2) cancel = true;
  };
  try {
    lm::collect_statistics(w, seqs, o);
    FAIL("not cancelled");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::cancelled);
  }
  CHECK(seen == std::vector<std::size_t>{1, 2});
  // Raised before the call: nothing runs.
  seen.clear();
  CHECK_THROWS_AS(lm::collect_statistics(w, seqs, o), loftq::Error);
  CHECK(seen.empty());
  // Lowered: the whole run completes.
  cancel = false;
  seen.clear();
  o.progress = [&](std::size_t done, std::size_t) { seen.push_back(done); };
  CHECK(lm::collect_statistics(w, seqs, o).sequences == 4);
  std::vector<std::size_t> every(steps);
  std::iota(every.begin(), every.end(), std::size_t{1});
  CHECK(seen == every);
}

}  // namespace test_calibrate
