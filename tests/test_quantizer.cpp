#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <loftq/quantizer.hpp>
#include <random>

#include "support.hpp"

using loftq::NormalFloat;
using loftq::RowMatrix;
using loftq::Uniform;

namespace {

int brute_argmin(const std::vector<float>& t, float y) {
  int best = 0;
  for (int i = 1; i < static_cast<int>(t.size()); ++i)
    if (std::abs(y - t[i]) < std::abs(y - t[best])) best = i;  // ties keep the lower index, like torch.argmin
  return best;
}

// Every code of P against the reference rule: y = x / absmax in float, argmin |y - t|.
template <class Q>
void check_codes_brute_force(const RowMatrix<float>& W, const Q& q) {
  const loftq::PackedMatrix P = loftq::quantize(W, q);
  const auto& t = q.codebook();
  const Eigen::Index N = W.size(), bs = q.block_size;
  for (Eigen::Index b = 0; b < P.num_blocks(); ++b) {
    float amax = 0;
    for (Eigen::Index e = b * bs; e < std::min(N, (b + 1) * bs); ++e) amax = std::max(amax, std::abs(W.data()[e]));
    REQUIRE(P.scales[b] == amax);
    for (Eigen::Index e = b * bs; e < std::min(N, (b + 1) * bs); ++e) {
      const float y = amax == 0 ? 0.0f : W.data()[e] / amax;
      if (P.code(e) != brute_argmin(t, y)) {
        FAIL("element " << e << " y=" << y << " code " << P.code(e) << " brute " << brute_argmin(t, y));
      }
    }
  }
}

// Blocks of 64 whose absmax is exactly 1 (so y == x) filled with every exact
// float midpoint, its neighbours, the levels and +-1.
RowMatrix<float> boundary_values(const std::vector<float>& t) {
  std::vector<float> v;
  for (std::size_t i = 0; i + 1 < t.size(); ++i) {
    const float mid = (t[i] + t[i + 1]) / 2;
    float y = mid;
    for (int k = 0; k < 8; ++k) y = std::nextafter(y, -2.0f);
    for (int k = 0; k < 17; ++k, y = std::nextafter(y, 2.0f)) v.push_back(y);
  }
  for (float x : t) v.push_back(x);
  v.push_back(1.0f);
  v.push_back(-1.0f);
  RowMatrix<float> W = RowMatrix<float>::Zero(static_cast<Eigen::Index>((v.size() + 62) / 63), 64);
  std::size_t k = 0;
  for (Eigen::Index r = 0; r < W.rows(); ++r) {
    W(r, 0) = 1.0f;
    for (Eigen::Index c = 1; c < 64 && k < v.size(); ++c) W(r, c) = v[k++];
  }
  return W;
}

}  // namespace

TEST_CASE("nearest code equals a brute-force argmin on millions of values, midpoints and +-scale included") {
  std::mt19937 g(42);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  RowMatrix<float> W(1024, 1024);  // 1M values per quantizer, 5 quantizers
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = nd(g) * (1 + (i % 7));
  check_codes_brute_force(W, NormalFloat<2>{});
  check_codes_brute_force(W, NormalFloat<3>{});
  check_codes_brute_force(W, NormalFloat<4>{});
  check_codes_brute_force(W, Uniform<4>{});
  check_codes_brute_force(W, NormalFloat<4>{7});  // blocks straddling rows
  // Block starts that alternate on and off byte boundaries of the 2-bit
  // stream (the AVX2 path packs in registers only from a boundary).
  check_codes_brute_force(W, NormalFloat<2>{10});
  check_codes_brute_force(W, NormalFloat<2>{7});
  check_codes_brute_force(boundary_values(NormalFloat<2>{}.codebook()), NormalFloat<2>{});
  check_codes_brute_force(boundary_values(NormalFloat<3>{}.codebook()), NormalFloat<3>{});
  check_codes_brute_force(boundary_values(NormalFloat<4>{}.codebook()), NormalFloat<4>{});
  check_codes_brute_force(boundary_values(Uniform<3>{}.codebook()), Uniform<3>{});
}

TEST_CASE("the element at +-absmax maps to the extreme level and dequantizes to exactly +-scale") {
  RowMatrix<float> W(1, 64);
  for (int j = 0; j < 64; ++j) W(0, j) = 0.01f * static_cast<float>(j - 30);
  W(0, 5) = -3.25f;
  const auto P = loftq::quantize(W, NormalFloat<4>{});
  CHECK(P.scales[0] == 3.25f);
  CHECK(P.code(5) == 0);
  CHECK(loftq::dequantize(P)(0, 5) == -3.25f);
}

TEST_CASE("all-zero and constant blocks give exact values, never NaN") {
  RowMatrix<float> W = RowMatrix<float>::Zero(3, 40);
  W.row(2).setConstant(0.75f);
  for (int bits : {2, 3, 4}) {
    const loftq::Quantizer nf(loftq::Quantizer::Kind::normal_float, bits, 16);
    const loftq::Quantizer ua(loftq::Quantizer::Kind::uniform, bits, 16, false);
    for (const auto& q : {nf, ua}) {
      const auto D = loftq::fake_quantize(W, q);
      CHECK(D.allFinite());
      CHECK(D.topRows(2).isZero(0));
      CHECK((D.row(2).array() == 0.75f).all());  // absmax: level 1 * 0.75; minmax: lo == hi
    }
  }
}

TEST_CASE("any block size and a short tail block") {
  std::mt19937 g(7);
  std::uniform_real_distribution<float> u(-2, 2);
  for (Eigen::Index bs : {1, 3, 7, 64, 100, 1000, 5000}) {
    RowMatrix<float> W(13, 29);  // 377 elements: a prime, so most block sizes leave a tail
    for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = u(g);
    const NormalFloat<3> q(bs);
    const auto P = loftq::quantize(W, q);
    CHECK(P.num_blocks() == (377 + bs - 1) / bs);
    CHECK(P.scales.size() == static_cast<std::size_t>(P.num_blocks()));
    check_codes_brute_force(W, q);
    const auto D = loftq::dequantize(P);
    CHECK((D - loftq::fake_quantize(W, q)).cwiseAbs().maxCoeff() == 0.0f);
    if (bs == 1) CHECK(D.isApprox(W, 0));  // a block of one is its own scale
  }
}

TEST_CASE("blocks follow the row-major flattening whatever the input layout") {
  Eigen::MatrixXf Wc = loftq_test::gaussian(6, 96, 3);  // column-major storage
  const RowMatrix<float> Wr = Wc;
  const auto Pc = loftq::quantize(Wc, NormalFloat<4>{32});
  const auto Pr = loftq::quantize(Wr, NormalFloat<4>{32});
  CHECK(Pc.codes == Pr.codes);
  CHECK(Pc.scales == Pr.scales);
  // Block 4 is row 1, columns 32..63.
  CHECK(Pc.scales[4] == Wr.row(1).segment(32, 32).cwiseAbs().maxCoeff());
  // Maps and blocks work without an explicit copy by the caller.
  Eigen::Map<const RowMatrix<float>> map(Wr.data(), 6, 96);
  CHECK(loftq::quantize(map, NormalFloat<4>{32}).codes == Pr.codes);
  const Eigen::MatrixXf big = loftq_test::gaussian(10, 100, 4);
  const RowMatrix<float> sub = big.block(2, 2, 6, 96);
  CHECK(loftq::quantize(big.block(2, 2, 6, 96), NormalFloat<4>{32}).codes ==
        loftq::quantize(sub, NormalFloat<4>{32}).codes);
}

TEST_CASE("requantizing the dequantized matrix gives back the same codes and scales") {
  const Eigen::MatrixXf W = loftq_test::gaussian(37, 91, 11);
  auto check = [&](const auto& q) {
    const auto P = loftq::quantize(W, q);
    const auto D = loftq::dequantize(P);
    const auto P2 = loftq::quantize(D, q);
    CHECK(P2.codes == P.codes);
    CHECK(P2.scales == P.scales);
    CHECK(P2.mins == P.mins);
    CHECK(loftq::dequantize(P2) == D);
  };
  for (Eigen::Index bs : {5, 64, 333}) {
    check(NormalFloat<2>{bs});
    check(NormalFloat<3>{bs});
    check(NormalFloat<4>{bs});
    check(NormalFloat<8>{bs});
    check(Uniform<2>{bs});
    check(Uniform<4>{bs, false});
    check(Uniform<8>{bs, false});
  }
  const Eigen::MatrixXd Wd = W.cast<double>();
  const auto Pd = loftq::quantize(Wd, NormalFloat<4>{});
  CHECK(loftq::quantize(loftq::dequantize<double>(Pd), NormalFloat<4>{}).codes == Pd.codes);
}

TEST_CASE("fake_quantize is bit-identical to dequantize(quantize) for float and double") {
  const Eigen::MatrixXf W = loftq_test::gaussian(50, 70, 5);
  CHECK(loftq::fake_quantize(W, NormalFloat<4>{}) == loftq::dequantize<float>(loftq::quantize(W, NormalFloat<4>{})));
  CHECK(loftq::fake_quantize(W, Uniform<3>{64, false}) ==
        loftq::dequantize<float>(loftq::quantize(W, Uniform<3>{64, false})));
  const Eigen::MatrixXd Wd = W.cast<double>();
  CHECK(loftq::fake_quantize(Wd, NormalFloat<2>{}) == loftq::dequantize<double>(loftq::quantize(Wd, NormalFloat<2>{})));
}

TEST_CASE("quantization error shrinks as bits grow") {
  const Eigen::MatrixXf W = loftq_test::gaussian(64, 256, 9);
  double prev = 1e9;
  for (int bits = 2; bits <= 8; ++bits) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits);
    const double e = (W - loftq::fake_quantize(W, q)).norm() / W.norm();
    CHECK(e < prev);
    prev = e;
  }
  CHECK(prev < 0.02);
}

TEST_CASE("results do not depend on the thread count") {
  const Eigen::MatrixXf W = loftq_test::gaussian(300, 500, 13);
  for (int bits : {2, 3, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits, 64);
    const auto P1 = loftq::quantize(W, q, 1), P2 = loftq::quantize(W, q, 2);
    CHECK(P1.codes == P2.codes);
    CHECK(P1.scales == P2.scales);
    CHECK(loftq::fake_quantize(W, q, 1) == loftq::fake_quantize(W, q, 2));
  }
}

TEST_CASE("absmax: max |x| for every length and position of the maximum; NaN anywhere gives NaN") {
  std::mt19937 rng(17);
  std::normal_distribution<float> g;
  for (std::int64_t n = 1; n <= 40; ++n)
    for (std::int64_t at = 0; at < n; ++at) {
      CAPTURE(n);
      CAPTURE(at);
      std::vector<float> x(static_cast<std::size_t>(n));
      for (float& v : x) v = g(rng);
      x[static_cast<std::size_t>(at)] = (at % 2 ? -1.0f : 1.0f) * 9.5f;  // the unique maximum, either sign
      CHECK(loftq::detail::absmax(x.data(), n) == 9.5f);
      x[static_cast<std::size_t>(at)] = std::numeric_limits<float>::quiet_NaN();
      CHECK(std::isnan(loftq::detail::absmax(x.data(), n)));
      x[static_cast<std::size_t>(at)] = -std::numeric_limits<float>::infinity();
      CHECK(loftq::detail::absmax(x.data(), n) == std::numeric_limits<float>::infinity());
    }
  const float zeros[9] = {0.0f, -0.0f, 0.0f, -0.0f, 0.0f, 0.0f, -0.0f, 0.0f, -0.0f};
  CHECK(loftq::detail::absmax(zeros, 9) == 0.0f);
}

TEST_CASE("bad input gets a typed error") {
  using loftq::Errc;
  auto code_of = [](auto&& f) {
    try {
      f();
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return static_cast<Errc>(0);
  };
  Eigen::MatrixXf W = loftq_test::gaussian(4, 64, 1);
  CHECK(code_of([&] { loftq::quantize(Eigen::MatrixXf(0, 5), NormalFloat<4>{}); }) == Errc::invalid_argument);
  CHECK(code_of([&] { loftq::quantize(W, NormalFloat<4>{0}); }) == Errc::invalid_argument);
  CHECK(code_of([&] { loftq::Quantizer(loftq::Quantizer::Kind::normal_float, 9); }) == Errc::unsupported);
  CHECK(code_of([&] { loftq::Quantizer(loftq::Quantizer::Kind::uniform, 1); }) == Errc::unsupported);
  W(2, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK(code_of([&] { loftq::quantize(W, NormalFloat<4>{}); }) == Errc::non_finite);
  W(2, 3) = -std::numeric_limits<float>::infinity();
  CHECK(code_of([&] { loftq::fake_quantize(W, NormalFloat<4>{}); }) == Errc::non_finite);
  // NaN deep inside a large matrix, found by the pass itself (no separate scan),
  // for every kernel and both scale modes; in place, W is left untouched.
  {
    loftq::RowMatrix<float> Big = loftq_test::gaussian(300, 700, 2);
    Big(251, 613) = std::numeric_limits<float>::quiet_NaN();
    loftq::QuantizeOptions so;
    so.scale_search = true;
    CHECK(code_of([&] { loftq::quantize(Big, NormalFloat<2>{}); }) == Errc::non_finite);
    CHECK(code_of([&] { loftq::quantize(Big, NormalFloat<4>{}, so); }) == Errc::non_finite);
    CHECK(code_of([&] { loftq::quantize(Big, NormalFloat<8>{}); }) == Errc::non_finite);
    CHECK(code_of([&] { loftq::quantize(Big, Uniform<3>{64, false}); }) == Errc::non_finite);
    const loftq::RowMatrix<float> before = Big;
    CHECK(code_of([&] { loftq::fake_quantize(Big, NormalFloat<4>{}, Big); }) == Errc::non_finite);
    CHECK(before.cwiseEqual(Big).count() + 1 == Big.size());  // all equal but the NaN (NaN != NaN)
    Big(251, 613) = std::numeric_limits<float>::infinity();
    CHECK(code_of([&] { loftq::fake_quantize(Big, NormalFloat<4>{}, so); }) == Errc::non_finite);
  }
  // Scales are fp32: a double block beyond the float range cannot be stored.
  Eigen::MatrixXd Wd = Eigen::MatrixXd::Ones(2, 64);
  Wd(1, 1) = 1e300;
  CHECK(code_of([&] { loftq::quantize(Wd, NormalFloat<4>{}); }) == Errc::invalid_argument);
  // Values near FLT_MAX are fine in float.
  Eigen::MatrixXf Wm = Eigen::MatrixXf::Constant(2, 64, std::numeric_limits<float>::max());
  Wm(0, 0) = -std::numeric_limits<float>::max();
  CHECK(loftq::fake_quantize(Wm, NormalFloat<4>{}).allFinite());
  // ...but a min/max range of 2 * FLT_MAX is not representable: rejected, not inf.
  CHECK(code_of([&] { loftq::fake_quantize(Wm, Uniform<4>{64, false}); }) == Errc::invalid_argument);
  // Denormal blocks keep their (denormal) scale and stay finite.
  Eigen::MatrixXf Wden = Eigen::MatrixXf::Constant(1, 64, std::numeric_limits<float>::denorm_min() * 3);
  Wden(0, 7) = -std::numeric_limits<float>::denorm_min() * 5;
  const auto Pden = loftq::quantize(Wden, NormalFloat<4>{});
  CHECK(Pden.scales[0] == std::numeric_limits<float>::denorm_min() * 5);
  CHECK(loftq::dequantize(Pden)(0, 7) == Wden(0, 7));
}
