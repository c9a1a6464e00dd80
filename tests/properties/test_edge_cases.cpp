// Numerical edge cases: each input is either accepted with a defined result
// or rejected with a loftq::Error of a stated kind. The verdicts below are the
// documented behaviour; changing one is an API change.
//
//   input                                   quantize / fake_quantize           initialize
//   denormal values (float)                 accepted, exact round trip rules   accepted, finite
//   values near FLT_MAX, absmax             accepted, finite                   invalid_argument/non_finite (residual
//                                                                              overflows float); W/16 accepted
//   values near FLT_MAX, minmax, range>max  invalid_argument (range overflows)
//   constant blocks                         accepted, reproduced exactly       accepted
//   all-zero matrix                         accepted, zero codes->0            accepted, Q = 0, error 0
//   rank = min(m, n), exact SVD             -                                  accepted, W == Q + A B^T to rounding
//   one huge outlier                        accepted, its block collapses      accepted, no worse than QLoRA
//   double beyond float range               invalid_argument (fp32 scale)      invalid_argument
//   double below float range (1e-300)       accepted: scale 0, block -> 0      accepted, finite
//   NaN / Inf                               non_finite                         non_finite
#include <doctest/doctest.h>

#include <loftq/loftq.hpp>

#include <Eigen/Core>
#include <cfloat>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

namespace {

using loftq::Quantizer;
using loftq::RowMatrix;

template <class Scalar>
RowMatrix<Scalar> gaussian(Eigen::Index m, Eigen::Index n, unsigned seed, double sd = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd(0.0, sd);
  RowMatrix<Scalar> W(m, n);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = static_cast<Scalar>(nd(g));
  return W;
}

const Quantizer kQuantizers[] = {
    Quantizer(Quantizer::Kind::normal_float, 4, 64),
    Quantizer(Quantizer::Kind::normal_float, 2, 16),
    Quantizer(Quantizer::Kind::uniform, 3, 32, true),
    Quantizer(Quantizer::Kind::uniform, 8, 48, false),
};

template <class Scalar>
loftq::Errc error_code_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const loftq::Error& e) {
    return e.code();
  }
  FAIL("expected a loftq::Error");
  return loftq::Errc::io_error;
}

template <class Scalar, class Q>
void check_accepted_quantize(const RowMatrix<Scalar>& W, const Q& q) {
  const auto P = loftq::quantize(W, q);
  const auto D = loftq::dequantize<Scalar>(P);
  const auto F = loftq::fake_quantize(W, q);
  REQUIRE(D.allFinite());
  CHECK(D == F);
  CHECK(loftq::quantize(D, q).codes == P.codes);
}

loftq::Options small_opts(Eigen::Index rank, loftq::SVDMethod method = loftq::SVDMethod::exact) {
  loftq::Options o;
  o.rank = rank;
  o.iterations = 3;
  o.svd.method = method;
  return o;
}

template <class R>
void check_finite(const R& r) {
  CHECK(r.Q.allFinite());
  CHECK(r.A.allFinite());
  CHECK(r.B.allFinite());
  for (double h : r.history) CHECK(std::isfinite(h));
  CHECK(std::isfinite(r.qlora_error));
}

}  // namespace

TEST_CASE("edge: denormal inputs are accepted and round trip") {
  RowMatrix<float> W = gaussian<float>(24, 40, 1);
  W *= 1e-39f;  // every value subnormal or near it
  W(0, 0) = std::numeric_limits<float>::denorm_min();
  for (const auto& q : kQuantizers) {
    CAPTURE(q.name());
    check_accepted_quantize(W, q);
    const auto r = loftq::initialize(W, q, small_opts(4));
    check_finite(r);
    CHECK(r.error() <= r.qlora_error * (1 + 1e-6));
  }
}

TEST_CASE("edge: values near FLT_MAX") {
  RowMatrix<float> W = gaussian<float>(16, 32, 2);
  W *= FLT_MAX / 8;  // gaussian draws stay well below 8 sigma here
  W(3, 3) = FLT_MAX;
  W(4, 4) = -FLT_MAX;
  for (const auto& q : kQuantizers) {
    CAPTURE(q.name());
    if (q.scale_mode() == loftq::ScaleMode::absmax) {
      check_accepted_quantize(W, q);
    } else {
      // max - min of a block overflows float: refused, never an Inf scale.
      CHECK(error_code_of<float>([&] { (void)loftq::quantize(W, q); }) == loftq::Errc::invalid_argument);
      CHECK(error_code_of<float>([&] { (void)loftq::fake_quantize(W, q); }) == loftq::Errc::invalid_argument);
    }
  }
  // initialize: the residual W - A B^T of the second iteration overflows
  // float here, so the run is refused (invalid_argument from the fp32 scale
  // check, or non_finite from the SVD), never a NaN/Inf result.
  for (auto method : {loftq::SVDMethod::exact, loftq::SVDMethod::randomized}) {
    const loftq::Errc e =
        error_code_of<float>([&] { (void)loftq::initialize(W, kQuantizers[0], small_opts(2, method)); });
    CHECK((e == loftq::Errc::invalid_argument || e == loftq::Errc::non_finite));
  }
  // Scaled down by 16 the same matrix is accepted, with a finite result.
  const RowMatrix<float> Ws = W / 16;
  const auto r = loftq::initialize(Ws, kQuantizers[0], small_opts(2));
  check_finite(r);
  CHECK(r.error() <= r.qlora_error * (1 + 1e-6));
}

TEST_CASE("edge: constant blocks are reproduced exactly") {
  for (float c : {0.0f, 1.5f, -3.25f, 7e-3f}) {
    RowMatrix<float> W = RowMatrix<float>::Constant(8, 64, c);
    W.row(5).setConstant(-c);  // a second constant, different blocks
    for (const auto& q : kQuantizers) {
      CAPTURE(q.name());
      CAPTURE(c);
      check_accepted_quantize(W, q);
      CHECK(loftq::fake_quantize(W, q) == W);
    }
  }
}

TEST_CASE("edge: an all-zero matrix gives Q = 0, finite factors, error 0") {
  const RowMatrix<double> W = RowMatrix<double>::Zero(12, 20);
  for (const auto& q : kQuantizers) {
    CAPTURE(q.name());
    check_accepted_quantize(W, q);
    for (auto method : {loftq::SVDMethod::exact, loftq::SVDMethod::randomized}) {
      const auto r = loftq::initialize(W, q, small_opts(3, method));
      check_finite(r);
      CHECK(r.Q.isZero(0));
      CHECK(r.error() == 0.0);
      CHECK(r.qlora_error == 0.0);
      CHECK((r.A * r.B.transpose()).isZero(0));
    }
  }
}

TEST_CASE("edge: rank = min(m, n) makes W == Q + A B^T up to rounding") {
  for (auto shape : {std::pair<Eigen::Index, Eigen::Index>{9, 23}, {23, 9}, {1, 17}, {12, 12}}) {
    const RowMatrix<double> W = gaussian<double>(shape.first, shape.second, 3);
    const Eigen::Index r = std::min(shape.first, shape.second);
    const auto res = loftq::initialize(W, kQuantizers[1], small_opts(r));
    check_finite(res);
    CHECK(res.rank() == r);
    const double rel = (W - res.Q - res.A * res.B.transpose()).norm() / W.norm();
    CHECK(rel < 1e-10);
    CHECK(res.error() < 1e-10);
  }
}

TEST_CASE("edge: a single huge outlier") {
  RowMatrix<float> W = gaussian<float>(32, 64, 4);
  W(7, 13) = 1e30f;
  for (const auto& q : kQuantizers) {
    CAPTURE(q.name());
    check_accepted_quantize(W, q);
    const auto P = loftq::quantize(W, q);
    // The outlier itself is reproduced: it is its block's absmax (or max).
    CHECK(loftq::dequantize<float>(P)(7, 13) == 1e30f);
    const auto r = loftq::initialize(W, q, small_opts(4));
    check_finite(r);
    CHECK(r.error() <= r.qlora_error * (1 + 1e-6));
  }
}

TEST_CASE("edge: double input beyond the float range is rejected (fp32 block scales)") {
  for (double big : {1e300, 3.5e38, -1e39}) {
    RowMatrix<double> W = gaussian<double>(8, 16, 5);
    W(2, 9) = big;
    for (const auto& q : kQuantizers) {
      CAPTURE(q.name());
      CAPTURE(big);
      CHECK(error_code_of<double>([&] { (void)loftq::quantize(W, q); }) == loftq::Errc::invalid_argument);
      CHECK(error_code_of<double>([&] { (void)loftq::fake_quantize(W, q); }) == loftq::Errc::invalid_argument);
      CHECK(error_code_of<double>([&] { (void)loftq::initialize(W, q, small_opts(2)); }) ==
            loftq::Errc::invalid_argument);
      CHECK(error_code_of<double>([&] { (void)loftq::qlora_init(W, q, small_opts(2)); }) ==
            loftq::Errc::invalid_argument);
    }
  }
}

TEST_CASE("edge: double input below the float range quantizes to zero") {
  RowMatrix<double> W = gaussian<double>(8, 16, 6);
  W *= 1e-300;  // every block scale rounds to fp32 0: the block is all zeros
  for (const auto& q : kQuantizers) {
    CAPTURE(q.name());
    check_accepted_quantize(W, q);
    CHECK(loftq::fake_quantize(W, q).isZero(0));
    const auto r = loftq::initialize(W, q, small_opts(2));
    check_finite(r);
  }
}

TEST_CASE("edge: NaN and Inf are rejected as non_finite") {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    RowMatrix<double> W = gaussian<double>(4, 8, 7);
    W(1, 2) = bad;
    CHECK(error_code_of<double>([&] { (void)loftq::quantize(W, kQuantizers[0]); }) == loftq::Errc::non_finite);
    CHECK(error_code_of<double>([&] { (void)loftq::initialize(W, kQuantizers[0], small_opts(2)); }) ==
          loftq::Errc::non_finite);
  }
}
