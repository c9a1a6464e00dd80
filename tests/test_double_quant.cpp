#include <doctest/doctest.h>

#include <loftq/double_quant.hpp>
#include <loftq/initialize.hpp>
#include <loftq/quantizer.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "common/matrices.hpp"
#include "support.hpp"

using loftq::DoubleQuantScales;
using loftq::PackedMatrix;

namespace {

float step_of(const DoubleQuantScales& D, std::size_t i) {
  return D.absmax[i / static_cast<std::size_t>(D.block_size)] / 127.0f;
}

// Absmax scales of a heavy-tailed matrix: positive, spread out, a few large.
std::vector<float> realistic_scales(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::lognormal_distribution<double> ln(std::log(0.05), 0.35);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<float> s(n);
  for (auto& x : s) x = static_cast<float>(ln(g) * (u(g) < 0.01 ? 8.0 : 1.0));
  return s;
}

void check_round_trip(const std::vector<float>& s, Eigen::Index block) {
  const DoubleQuantScales D = loftq::double_quantize_scales(s, block);
  REQUIRE(D.codes.size() == s.size());
  REQUIRE(D.absmax.size() == (s.size() + static_cast<std::size_t>(block) - 1) / static_cast<std::size_t>(block));
  const std::vector<float> r = loftq::recover_scales(D);
  double sum = 0;
  for (float x : s) sum += x;
  CHECK(D.mean == static_cast<float>(sum / static_cast<double>(s.size())));
  for (std::size_t i = 0; i < s.size(); ++i) {
    CHECK(D.codes[i] >= 1);
    const float step = step_of(D, i);
    const double err = std::abs(static_cast<double>(r[i]) - static_cast<double>(s[i]));
    // Half a step of the 8-bit grid, plus the one fp32 rounding of the add.
    const double ulp = std::nextafter(std::abs(r[i]), INFINITY) - std::abs(r[i]);
    if (static_cast<double>(s[i]) >= step / 2.0)
      CHECK(err <= step / 2.0 + ulp);
    else
      CHECK(err < static_cast<double>(step) + ulp);  // may be lifted off zero
    CHECK(r[i] >= 0.0f);
    if (s[i] > 0) CHECK(r[i] > 0.0f);
    // The format's claim: recovery is exact but for the last add, so a reader
    // with or without FMA, in float or in double, gets the same bits.
    const float q = static_cast<float>(static_cast<int>(D.codes[i]) - 128);
    CHECK(std::fma(q, step, D.mean) == r[i]);
    CHECK(static_cast<float>(static_cast<double>(D.mean) + static_cast<double>(q) * static_cast<double>(step)) == r[i]);
  }
  for (std::size_t k = 0; k < D.absmax.size(); ++k) {
    const float step = D.absmax[k] / 127.0f;
    CHECK(127.0f * step == D.absmax[k]);
    // The grid covers the block: max |s - mean| <= 127 steps.
    for (std::size_t i = k * static_cast<std::size_t>(block);
         i < std::min(s.size(), (k + 1) * static_cast<std::size_t>(block)); ++i)
      CHECK(std::abs(static_cast<double>(s[i]) - D.mean) <= static_cast<double>(D.absmax[k]));
  }
}

}  // namespace

TEST_CASE("double quantization: every scale within half a step, for any count") {
  // Counts that are and are not multiples of the 256-scale block: the tail
  // block is shorter and gets its own absmax.
  for (std::size_t n : {1u, 2u, 255u, 256u, 257u, 300u, 1000u, 4096u}) {
    CAPTURE(n);
    check_round_trip(realistic_scales(n, n), 256);
  }
  check_round_trip(realistic_scales(1000, 7), 64);
  check_round_trip(realistic_scales(1000, 8), 1);
}

TEST_CASE("double quantization: the mean is subtracted before quantizing") {
  // Scales around 10 with a spread of +-0.01: without the mean the 8-bit grid
  // would step by ~10/127, with it by ~0.01/127.
  std::vector<float> s(600);
  std::mt19937 g(3);
  std::uniform_real_distribution<float> u(-0.01f, 0.01f);
  for (auto& x : s) x = 10.0f + u(g);
  const DoubleQuantScales D = loftq::double_quantize_scales(s);
  CHECK(std::abs(D.mean - 10.0f) < 0.001f);
  for (float a : D.absmax) CHECK(a <= 0.0101f);
  const std::vector<float> r = loftq::recover_scales(D);
  for (std::size_t i = 0; i < s.size(); ++i) CHECK(std::abs(r[i] - s[i]) <= 0.0101f / 127 / 2 + 1e-6f);
  // All equal: the mean alone, exact.
  const std::vector<float> c(300, 0.25f);
  const DoubleQuantScales E = loftq::double_quantize_scales(c);
  CHECK(E.mean == 0.25f);
  for (float a : E.absmax) CHECK(a == 0.0f);
  for (auto code : E.codes) CHECK(code == 128);
  CHECK(loftq::recover_scales(E) == c);
}

TEST_CASE("double quantization: small scales are never turned into zero or negative ones") {
  // One huge scale makes the step ~ 1000 / 127 / 2; the tiny and zero scales
  // would round to the mean's grid point below zero.
  std::vector<float> s = {1000.0f, 0.001f, 0.0f, 2.0f, 0.0f, 1e-30f};
  const DoubleQuantScales D = loftq::double_quantize_scales(s);
  const std::vector<float> r = loftq::recover_scales(D);
  for (std::size_t i = 0; i < s.size(); ++i) {
    CAPTURE(i);
    CHECK(r[i] >= 0.0f);
    if (s[i] > 0) CHECK(r[i] > 0.0f);
  }
  check_round_trip(s, 256);
}

TEST_CASE("double quantization: bad input is a loftq::Error") {
  CHECK_THROWS_AS(loftq::double_quantize_scales({}), loftq::Error);
  CHECK_THROWS_AS(loftq::double_quantize_scales({1.0f, NAN}), loftq::Error);
  CHECK_THROWS_AS(loftq::double_quantize_scales({1.0f, INFINITY}), loftq::Error);
  CHECK_THROWS_AS(loftq::double_quantize_scales({1.0f, -0.5f}), loftq::Error);
  CHECK_THROWS_AS(loftq::double_quantize_scales({1.0f}, 0), loftq::Error);

  const Eigen::MatrixXf W = loftq_test::gaussian(16, 64, 5);
  // min/max blocks carry two values per block: not supported.
  const PackedMatrix A = loftq::quantize(W, loftq::Uniform<4>(64, /*sym=*/false));
  CHECK_THROWS_AS(loftq::double_quantize(A), loftq::Error);
  const PackedMatrix P = loftq::double_quantize(loftq::quantize(W, loftq::NormalFloat<4>{}));
  CHECK_THROWS_AS(loftq::double_quantize(P), loftq::Error);  // twice

  // A payload that disagrees with the scales, or is malformed, is refused
  // before anything is decoded.
  auto expect_invalid = [](const PackedMatrix& X) {
    CHECK_THROWS_AS(loftq::detail::validate(X), loftq::Error);
    CHECK_THROWS_AS(loftq::dequantize(X), loftq::Error);
  };
  PackedMatrix X = P;
  X.scale_dq.codes[0] = static_cast<std::uint8_t>(X.scale_dq.codes[0] ^ 1);
  expect_invalid(X);
  X = P;
  X.scales[3] = std::nextafter(X.scales[3], 1.0f);
  expect_invalid(X);
  X = P;
  X.scale_dq.codes[1] = 0;
  expect_invalid(X);
  X = P;
  X.scale_dq.absmax.push_back(1.0f);
  expect_invalid(X);
  X = P;
  X.scale_dq.mean = NAN;
  expect_invalid(X);
  X = P;
  X.scale_dq.codes.pop_back();
  expect_invalid(X);
  X = P;
  X.scale_dq.block_size = 0;
  expect_invalid(X);
  X = P;
  X.scale_dq.absmax[0] = -1.0f;
  expect_invalid(X);
  CHECK_NOTHROW(loftq::detail::validate(P));
}

TEST_CASE("double-quantized PackedMatrix: bits per weight, dequantize, requantize") {
  // 96 x 100 = 9600 weights, 150 blocks of 64: one full and one tail block of scales.
  const Eigen::MatrixXf W = loftq_test::gaussian(96, 100, 11);
  for (int bits : {2, 4}) {
    CAPTURE(bits);
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits, 64);
    const PackedMatrix P0 = loftq::quantize(W, q);
    const PackedMatrix P = loftq::double_quantize(P0);
    REQUIRE(P.double_quantized());
    CHECK(P.codes == P0.codes);
    const double N = 9600, nb = 150;
    CHECK(P0.bits_per_weight() == doctest::Approx(bits + 32 * nb / N));
    CHECK(P.bits_per_weight() ==
          doctest::Approx(bits + (8 * nb + 32 * 1 + 32 * 1) / N));  // ceil(150/256) absmax + mean
    const loftq::RowMatrix<float> D = loftq::dequantize(P);
    for (Eigen::Index e = 0; e < P.size(); ++e)
      REQUIRE(D.data()[e] ==
              P.codebook[static_cast<std::size_t>(P.code(e))] * P.scales[static_cast<std::size_t>(e / 64)]);
    // The recovered scales are what requantization finds again.
    const PackedMatrix R = loftq::quantize(D, q);
    CHECK(R.codes == P.codes);
    CHECK(R.scales == P.scales);
  }
}

TEST_CASE("double_quantize(W, result) with default Options: the randomized, warm-started refit") {
  const Eigen::MatrixXf W = loftq_test::structured(128, 192, 22);
  const loftq::Options opt;  // warm_power_iterations = -1 (automatic) must resolve, not reach TruncatedSVD
  auto r = loftq::initialize(W, loftq::NormalFloat<4>{}, opt);
  const double before = r.error();
  const auto eff = loftq::double_quantize(W, r, opt);
  CHECK(eff.error_before == before);
  CHECK(eff.error_after <= eff.error_rounded);
  CHECK(r.error() == eff.error_after);
}

TEST_CASE("double_quantize(W, result): the factors absorb the scale rounding") {
  const Eigen::MatrixXf W = loftq_test::structured(128, 192, 21);
  loftq::Options opt;
  opt.rank = 8;
  opt.iterations = 3;
  opt.svd.method = loftq::SVDMethod::exact;
  auto r = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  const std::size_t h = r.history.size();
  const double before = r.error();
  const auto eff = loftq::double_quantize(W, r, opt);
  CHECK(eff.error_before == before);
  CHECK(r.history.size() == h + 1);
  CHECK(r.best_iteration == static_cast<int>(h + 1));
  CHECK(r.error() == eff.error_after);
  // An exact SVD of W - Q_dq is the best rank-r correction for that Q.
  CHECK(eff.error_after <= eff.error_rounded);
  CHECK(r.packed.double_quantized());
  CHECK(r.Q == loftq::dequantize(r.packed));
  const double actual = (W - r.Q - r.A * r.B.transpose()).norm() / W.norm();
  CHECK(actual == doctest::Approx(eff.error_after).epsilon(1e-5));
  CHECK(eff.bits_per_weight_after < eff.bits_per_weight_before);
  // Without the refit the factors stay and the error is the rounded one.
  auto r2 = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  const auto A0 = r2.A;
  const auto eff2 = loftq::double_quantize(W, r2, opt, loftq::kDoubleQuantBlock, /*refit=*/false);
  CHECK(r2.A == A0);
  CHECK(eff2.error_after == eff2.error_rounded);
  CHECK(eff2.error_rounded == eff.error_rounded);
  // Shape mismatch.
  auto r3 = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  CHECK_THROWS_AS(loftq::double_quantize(Eigen::MatrixXf(W.topRows(64)), r3, opt), loftq::Error);
}

TEST_CASE("double quantization on a realistic matrix: NF4 and NF2, block 64" * doctest::timeout(300)) {
  // The figures in docs/results.md ("Double-quantized scales") come from this test.
  const loftq_common::RowMatrixXf W = loftq_common::realistic_matrix(1024, 1024, 1);
  loftq::Options opt;
  opt.rank = 16;
  opt.iterations = 5;
  opt.svd.method = loftq::SVDMethod::exact;
  opt.scale_search = false;  // pinned: the figures are for absmax scales
  opt.start = loftq::Start::zero;
  for (int bits : {4, 2}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits, 64);
    auto r = loftq::initialize(W, q, opt);
    const auto eff = loftq::double_quantize(W, r, opt);
    std::printf(
        "double quant NF%d block 64: bits/weight %.4f -> %.4f; rel. error LoftQ %.5f, DQ same factors %.5f, "
        "DQ + refit %.5f\n",
        bits, eff.bits_per_weight_before, eff.bits_per_weight_after, eff.error_before, eff.error_rounded,
        eff.error_after);
    const double N = 1024.0 * 1024, nb = N / 64;
    CHECK(eff.bits_per_weight_before == doctest::Approx(bits + 0.5));
    CHECK(eff.bits_per_weight_after == doctest::Approx(bits + (8 * nb + 32 * (nb / 256) + 32) / N));
    CHECK(eff.error_after <= eff.error_rounded);
    // The 8-bit scales cost well under 1% of the error at either width.
    CHECK(eff.error_after < eff.error_before * 1.01);
  }
}
