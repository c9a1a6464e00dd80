#include <doctest/doctest.h>

#include <Eigen/QR>
#include <loftq/svd.hpp>

#include "support.hpp"

using loftq::SVDMethod;
using loftq::SVDOptions;
using loftq::TruncatedSVD;
using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

Eigen::MatrixXd orthonormal(Eigen::Index m, Eigen::Index k, std::uint64_t seed) {
  const Eigen::MatrixXd G = loftq_test::gaussian(m, k, seed).cast<double>();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(G);
  return qr.householderQ() * Eigen::MatrixXd::Identity(m, k);
}

struct Known {
  Eigen::MatrixXd M, U, V;
  Eigen::VectorXd s;
};

// M = U diag(s) V^T with a prescribed spectrum.
Known with_spectrum(Eigen::Index m, Eigen::Index n, const Eigen::VectorXd& s, std::uint64_t seed) {
  Known k;
  k.s = s;
  k.U = orthonormal(m, s.size(), seed);
  k.V = orthonormal(n, s.size(), seed + 100);
  k.M = k.U * s.asDiagonal() * k.V.transpose();
  return k;
}

// Largest principal angle (as sin) between two subspaces with orthonormal bases.
double subspace_gap(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) { return (B - A * (A.transpose() * B)).norm(); }

// out = a * b in float, as a sum of `depth` products per entry, within the
// float rounding bound depth * eps * (|a| |b|) of the double product.
template <class Out>
bool within_sum_rounding(const Out& out, const Eigen::MatrixXd& a, const Eigen::MatrixXd& b, Eigen::Index depth) {
  const Eigen::MatrixXd exact = a * b;
  const Eigen::MatrixXd bound = (a.cwiseAbs() * b.cwiseAbs()) * (static_cast<double>(depth) * 1.2e-7);
  return ((out.template cast<double>() - exact).cwiseAbs() - bound).maxCoeff() <= 0.0;
}

}  // namespace

TEST_CASE("exact and randomized recover a geometric spectrum") {
  const Eigen::Index m = 300, n = 200, r = 10;
  Eigen::VectorXd s(n);
  for (Eigen::Index i = 0; i < n; ++i) s[i] = std::pow(0.8, static_cast<double>(i));
  const Known k = with_spectrum(m, n, s, 1);
  for (SVDMethod method : {SVDMethod::exact, SVDMethod::randomized}) {
    SVDOptions o;
    o.method = method;
    o.oversampling = 10;
    TruncatedSVD<Eigen::MatrixXd> svd(k.M, r, o);
    REQUIRE(svd.info() == Eigen::Success);
    CHECK(svd.rank() == r);
    CHECK(svd.matrixU().rows() == m);
    CHECK(svd.matrixV().rows() == n);
    for (Eigen::Index i = 0; i < r; ++i) CHECK(svd.singularValues()[i] == doctest::Approx(s[i]).epsilon(1e-6));
    CHECK(subspace_gap(k.U.leftCols(r), svd.matrixU()) < 1e-5);
    CHECK(subspace_gap(k.V.leftCols(r), svd.matrixV()) < 1e-5);
    // Orthonormal factors.
    CHECK((svd.matrixU().transpose() * svd.matrixU() - Eigen::MatrixXd::Identity(r, r)).norm() < 1e-10);
    CHECK((svd.matrixV().transpose() * svd.matrixV() - Eigen::MatrixXd::Identity(r, r)).norm() < 1e-10);
  }
}

TEST_CASE("randomized is near-optimal in Frobenius error on a flat spectrum") {
  // Noise plus a planted rank-8 part: the tail is flat, the hard case.
  const Eigen::MatrixXf M = loftq_test::structured(400, 300, 7);
  const Eigen::Index r = 8;
  TruncatedSVD<Eigen::MatrixXf> ex(M, r, SVDOptions{SVDMethod::exact});
  TruncatedSVD<Eigen::MatrixXf> rnd(M, r, SVDOptions{});
  auto err = [&](const TruncatedSVD<Eigen::MatrixXf>& s) {
    return (M - s.matrixU() * s.singularValues().asDiagonal() * s.matrixV().transpose()).norm();
  };
  CHECK(err(rnd) <= err(ex) * 1.005);
  CHECK(err(ex) <= err(rnd) * (1 + 1e-5));  // exact is optimal (Eckart-Young)
  // On a flat spectrum individual values are only roughly right (each is a lower bound).
  for (Eigen::Index i = 0; i < r; ++i) {
    CHECK(rnd.singularValues()[i] <= ex.singularValues()[i] * (1 + 1e-5));
    CHECK(rnd.singularValues()[i] >= ex.singularValues()[i] * 0.9);
  }
}

TEST_CASE("a warm start from the true subspace needs no power iterations") {
  Eigen::VectorXd s(150);
  for (Eigen::Index i = 0; i < 150; ++i) s[i] = 1.0 / (1.0 + static_cast<double>(i));  // slow decay
  const Known k = with_spectrum(250, 150, s, 3);
  SVDOptions o;
  o.power_iterations = 0;
  o.oversampling = 4;
  TruncatedSVD<Eigen::MatrixXd> cold(k.M, 8, o);
  TruncatedSVD<Eigen::MatrixXd> warm;
  warm.compute(k.M, 8, o, k.V.leftCols(8));
  for (Eigen::Index i = 0; i < 8; ++i) CHECK(warm.singularValues()[i] == doctest::Approx(s[i]).epsilon(1e-10));
  CHECK(subspace_gap(k.V.leftCols(8), warm.matrixV()) < 1e-8);
  // Cold with no power iterations is visibly worse on this slowly decaying spectrum.
  CHECK(subspace_gap(k.V.leftCols(8), cold.matrixV()) > 1e-3);
}

TEST_CASE("rightBasis: k orthonormal columns whose leading ones are matrixV(); a warm start from it converges") {
  Eigen::VectorXd s(150);
  for (Eigen::Index i = 0; i < 150; ++i) s[i] = 1.0 / (1.0 + static_cast<double>(i));
  const Known k = with_spectrum(250, 150, s, 5);
  SVDOptions o;
  o.oversampling = 6;
  o.power_iterations = 1;
  TruncatedSVD<Eigen::MatrixXd> a(k.M, 8, o);
  const Eigen::MatrixXd& Vk = a.rightBasis();
  REQUIRE(Vk.rows() == 150);
  REQUIRE(Vk.cols() == 14);
  CHECK((Vk.transpose() * Vk - Eigen::MatrixXd::Identity(14, 14)).norm() < 1e-10);
  CHECK(Vk.leftCols(8) == a.matrixV());
  // Feeding the whole basis back is one more subspace iteration each time:
  // the gap to the true subspace shrinks with every warm solve.
  double gap = subspace_gap(k.V.leftCols(8), a.matrixV());
  o.power_iterations = 0;
  for (int it = 0; it < 3; ++it) {
    TruncatedSVD<Eigen::MatrixXd> b;
    b.compute(k.M, 8, o, a.rightBasis());
    const double g = subspace_gap(k.V.leftCols(8), b.matrixV());
    CHECK(g < gap);
    gap = g;
    a = b;
  }
  TruncatedSVD<Eigen::MatrixXd> ex(k.M, 8, SVDOptions{SVDMethod::exact});
  CHECK(ex.rightBasis() == ex.matrixV());
}

TEST_CASE("deterministic: same seed, same bits; thread count does not matter") {
  const Eigen::MatrixXf M = loftq_test::structured(700, 500, 9);
  SVDOptions a;
  a.threads = 1;
  SVDOptions b = a;
  b.threads = 2;
  TruncatedSVD<Eigen::MatrixXf> s1(M, 16, a), s2(M, 16, b), s3(M, 16, a);
  CHECK(s1.matrixU() == s2.matrixU());
  CHECK(s1.matrixV() == s2.matrixV());
  CHECK(s1.singularValues() == s2.singularValues());
  CHECK(s1.matrixU() == s3.matrixU());
  SVDOptions c = a;
  c.seed = 1;
  TruncatedSVD<Eigen::MatrixXf> s4(M, 16, c);
  CHECK(s4.matrixU() != s1.matrixU());  // the seed is really used
}

TEST_CASE("works on row-major maps and expressions") {
  const Eigen::MatrixXf M = loftq_test::structured(120, 90, 4);
  const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> R = M;
  TruncatedSVD<Eigen::MatrixXf> a(M, 5), b(R, 5);
  CHECK(a.singularValues().isApprox(b.singularValues(), 1e-5f));
  const SVDOptions ex{SVDMethod::exact};
  TruncatedSVD<Eigen::MatrixXf> c(M.transpose(), 5, ex), d(M, 5, ex), e(2.0f * R.block(0, 0, 120, 90), 5, ex);
  CHECK(d.singularValues().isApprox(c.singularValues(), 1e-5f));
  CHECK((2.0f * d.singularValues()).isApprox(e.singularValues(), 1e-5f));
}

TEST_CASE("rank = min(m, n) reconstructs the matrix") {
  const Eigen::MatrixXd M = loftq_test::gaussian(20, 12, 5).cast<double>();
  TruncatedSVD<Eigen::MatrixXd> s(M, 12);
  CHECK((M - s.matrixU() * s.singularValues().asDiagonal() * s.matrixV().transpose()).norm() < 1e-10);
}

TEST_CASE("bad arguments get typed errors") {
  const Eigen::MatrixXf M = loftq_test::gaussian(10, 6, 1);
  TruncatedSVD<Eigen::MatrixXf> s;
  CHECK_THROWS_AS(s.matrixU(), loftq::Error);  // not computed yet
  CHECK(s.info() == Eigen::InvalidInput);
  CHECK_THROWS_AS(s.compute(M, 0), loftq::Error);
  CHECK_THROWS_AS(s.compute(M, 7), loftq::Error);
  CHECK_THROWS_AS(s.compute(Eigen::MatrixXf(0, 0), 1), loftq::Error);
  CHECK_THROWS_AS(s.compute(M, 2, SVDOptions{}, Eigen::MatrixXf::Ones(5, 2)), loftq::Error);
  SVDOptions bad;
  bad.power_iterations = -1;
  CHECK_THROWS_AS(s.compute(M, 2, bad), loftq::Error);
}

TEST_CASE("skinny_gemm: every tile shape and column tail against a double-precision product") {
  for (Eigen::Index rows : {1, 2, 3, 4, 5, 7, 9})
    for (Eigen::Index w : {1, 7, 8, 16, 24, 29, 40, 72})
      for (Eigen::Index depth : {1, 17, 130}) {
        INFO(rows << " x " << depth << " times " << depth << " x " << w);
        const RowF a = loftq_test::gaussian(rows, depth, 7 + rows), x = loftq_test::gaussian(depth, w, 11 + w);
        const Eigen::MatrixXf ac = a;  // the same operand in column-major strides
        RowF out1(rows, w), out2(rows, w);
        loftq::detail::skinny_gemm(a.data(), depth, 1, x.data(), w, depth, rows, w, out1.data(), w);
        loftq::detail::skinny_gemm(ac.data(), 1, rows, x.data(), w, depth, rows, w, out2.data(), w);
        CHECK(within_sum_rounding(out1, a.cast<double>(), x.cast<double>(), depth));
        CHECK(out1 == out2);  // same t order whatever the strides
      }
}

TEST_CASE("skinny_gemm_t: every slice and row group against a double product; splits change no bits") {
  for (Eigen::Index rows : {1, 3, 4, 5, 9, 130})
    for (Eigen::Index w : {1, 7, 8, 16, 24, 29, 40, 72})
      for (Eigen::Index cols : {1, 6, 33}) {
        INFO("the transpose of " << rows << " x " << cols << " times " << rows << " x " << w);
        const RowF m = loftq_test::gaussian(rows, cols, 5 + rows), y = loftq_test::gaussian(rows, w, 13 + w);
        RowF out(cols, w), split(cols, w), viaT(cols, w);
        loftq::detail::skinny_gemm_t(m.data(), cols, rows, cols, y.data(), w, w, out.data(), w);
        CHECK(within_sum_rounding(out, m.cast<double>().transpose(), y.cast<double>(), rows));
        // Column ranges computed separately give the same bits.
        const Eigen::Index c1 = cols / 2;
        loftq::detail::skinny_gemm_t(m.data(), cols, rows, c1, y.data(), w, w, split.data(), w);
        loftq::detail::skinny_gemm_t(m.data() + c1, cols, rows, cols - c1, y.data(), w, w, split.data() + c1 * w, w);
        CHECK(split == out);
        // The same chain as skinny_gemm on M^T through strides: identical bits.
        loftq::detail::skinny_gemm(m.data(), 1, cols, y.data(), w, rows, cols, w, viaT.data(), w);
        CHECK(viaT == out);
      }
}

TEST_CASE("chunked_mul_t on row-major float: matches the exact product, same bits for 1, 2 and 3 threads") {
  const RowF M = loftq_test::structured(300, 170, 9);
  const Eigen::MatrixXf X = loftq_test::gaussian(300, 21, 4);
  Eigen::MatrixXf Z1, Z2, Z3;
  loftq::detail::chunked_mul_t(M, X, Z1, 1);
  loftq::detail::chunked_mul_t(M, X, Z2, 2);
  loftq::detail::chunked_mul_t(M, X, Z3, 3);
  CHECK(Z1 == Z2);
  CHECK(Z1 == Z3);
  REQUIRE(Z1.rows() == 170);
  REQUIRE(Z1.cols() == 21);
  const Eigen::MatrixXd exact = M.cast<double>().transpose() * X.cast<double>();
  CHECK((Z1.cast<double>() - exact).norm() <= 1e-6 * exact.norm());
  const RowF big = loftq_test::structured(310, 200, 2);
  Eigen::MatrixXf Zb;
  loftq::detail::chunked_mul_t(big.block(5, 7, 300, 170), X, Zb, 2);
  const Eigen::MatrixXd exact_b = big.block(5, 7, 300, 170).cast<double>().transpose() * X.cast<double>();
  CHECK((Zb.cast<double>() - exact_b).norm() <= 1e-6 * exact_b.norm());
}

TEST_CASE("chunked_mul on row-major float: matches Eigen's product, same bits for 1 and 2 threads") {
  const RowF M = loftq_test::structured(300, 170, 9);
  const Eigen::MatrixXf X = loftq_test::gaussian(170, 21, 3);
  Eigen::MatrixXf Y1, Y2;
  loftq::detail::chunked_mul(M, X, Y1, 1);
  loftq::detail::chunked_mul(M, X, Y2, 2);
  CHECK(Y1 == Y2);
  const Eigen::MatrixXd exact = M.cast<double>() * X.cast<double>();
  CHECK((Y1.cast<double>() - exact).norm() <= 1e-6 * exact.norm());
  // A block of a larger row-major matrix: the outer stride is not the width.
  const RowF big = loftq_test::structured(310, 200, 2);
  Eigen::MatrixXf Yb;
  loftq::detail::chunked_mul(big.block(5, 0, 300, 170), X, Yb, 2);
  const Eigen::MatrixXd exact_b = big.block(5, 0, 300, 170).cast<double>() * X.cast<double>();
  CHECK((Yb.cast<double>() - exact_b).norm() <= 1e-6 * exact_b.norm());
}
