// InputStatistics (loftq/input_statistics.hpp): the Gram matrix and its
// diagonal against a direct computation, batching, sharding, threads, errors.
#include <doctest/doctest.h>

#include <loftq/input_statistics.hpp>

#include <limits>
#include <random>

#include "support.hpp"

using loftq::InputStatistics;
using loftq::StatsMode;
template <class S>
using RowMatrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

Eigen::MatrixXd gram_direct(const RowMatrix<float>& X) {
  const Eigen::MatrixXd Xd = X.cast<double>();
  return Xd.transpose() * Xd / static_cast<double>(X.rows());
}

}  // namespace

TEST_CASE("InputStatistics: H = X^T X / N, however the samples are batched or sharded") {
  const RowMatrix<float> X = loftq_test::correlated_samples(2500, 300, 1);  // > kSampleChunk rows, > 2 column blocks
  const Eigen::MatrixXd H = gram_direct(X);
  InputStatistics one(300);
  one.add(X);
  CHECK(one.count() == 2500);
  CHECK(one.features() == 300);
  CHECK((one.gram() - H).norm() <= 1e-12 * H.norm());
  CHECK(one.gram().isApprox(one.gram().transpose(), 0.0));

  InputStatistics batched(300), a(300), b(300);
  batched.add(X.topRows(1)).add(X.middleRows(1, 999)).add(X.bottomRows(1500));
  a.add(X.topRows(700));
  b.add(X.bottomRows(1800));
  a.merge(b);
  CHECK(batched.count() == 2500);
  CHECK(a.count() == 2500);
  CHECK((batched.gram() - H).norm() <= 1e-12 * H.norm());
  CHECK((a.gram() - H).norm() <= 1e-12 * H.norm());
  // Any layout and scalar type of the batch.
  InputStatistics col(300);
  col.add(Eigen::MatrixXd(X.cast<double>()));
  CHECK((col.gram() - H).norm() <= 1e-12 * H.norm());

  InputStatistics diag(300, StatsMode::diagonal), diag_parts(300, StatsMode::diagonal);
  diag.add(X);
  diag_parts.add(X.topRows(1234));
  InputStatistics rest(300, StatsMode::diagonal);
  rest.add(X.bottomRows(1266));
  diag_parts.merge(rest);
  CHECK((diag.diagonal() - H.diagonal()).norm() <= 1e-12 * H.diagonal().norm());
  CHECK((diag_parts.diagonal() - H.diagonal()).norm() <= 1e-12 * H.diagonal().norm());
  CHECK((one.diagonal() - one.gram().diagonal()).norm() == 0.0);
  CHECK(diag.mode() == StatsMode::diagonal);
}

TEST_CASE("InputStatistics: bit-identical for 1 and 2 threads") {
  const RowMatrix<float> X = loftq_test::correlated_samples(1500, 700, 2);
  for (StatsMode mode : {StatsMode::full, StatsMode::diagonal}) {
    InputStatistics s1(700, mode), s2(700, mode);
    s1.add(X, 1);
    s2.add(X, 2);
    CHECK(s1.diagonal() == s2.diagonal());
    if (mode == StatsMode::full) CHECK(s1.gram() == s2.gram());
  }
}

TEST_CASE("InputStatistics: bad input gets a typed error and leaves the statistics unchanged") {
  InputStatistics s(8);
  CHECK(loftq_test::code_of([&] { s.gram(); }) == loftq::Errc::invalid_argument);  // no samples yet
  CHECK(loftq_test::code_of([&] { s.diagonal(); }) == loftq::Errc::invalid_argument);
  CHECK(loftq_test::code_of([&] { s.add(RowMatrix<float>(0, 8)); }) == loftq::Errc::invalid_argument);
  CHECK(loftq_test::code_of([&] { s.add(RowMatrix<float>::Ones(3, 7)); }) == loftq::Errc::invalid_argument);
  RowMatrix<float> X = RowMatrix<float>::Ones(5, 8);
  s.add(X);
  const Eigen::MatrixXd before = s.gram();
  X(4, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK(loftq_test::code_of([&] { s.add(X); }) == loftq::Errc::non_finite);
  X(4, 3) = std::numeric_limits<float>::infinity();
  CHECK(loftq_test::code_of([&] { s.add(X); }) == loftq::Errc::non_finite);
  Eigen::MatrixXd big = Eigen::MatrixXd::Ones(2, 8);
  big(1, 1) = 1e200;  // finite, but its square is not
  CHECK(loftq_test::code_of([&] { s.add(big); }) == loftq::Errc::invalid_argument);
  CHECK(s.count() == 5);
  CHECK(s.gram() == before);
  CHECK(loftq_test::code_of([&] { s.merge(InputStatistics(9)); }) == loftq::Errc::invalid_argument);
  CHECK(loftq_test::code_of([&] { s.merge(InputStatistics(8, StatsMode::diagonal)); }) ==
        loftq::Errc::invalid_argument);
  CHECK(loftq_test::code_of([&] { InputStatistics(0); }) == loftq::Errc::invalid_argument);
  InputStatistics d(8, StatsMode::diagonal);
  d.add(X.topRows(4));
  CHECK(loftq_test::code_of([&] { d.gram(); }) == loftq::Errc::invalid_argument);
}

TEST_CASE("InputStatistics: an expression is evaluated once, as its plain value") {
  // Eigen's Random() draws anew at each evaluation; the statistics must be
  // those of one draw, the same as adding that draw as a plain matrix.
  std::srand(7);
  InputStatistics from_expr(16);
  from_expr.add(Eigen::MatrixXf::Random(40, 16));
  std::srand(7);
  const Eigen::MatrixXf drawn = Eigen::MatrixXf::Random(40, 16);
  InputStatistics from_plain(16);
  from_plain.add(drawn);
  CHECK(from_expr.count() == 40);
  CHECK(from_expr.gram() == from_plain.gram());

  // A product: the same statistics as its evaluated value.
  const Eigen::MatrixXd M = Eigen::MatrixXd::Identity(16, 16) * 0.5;
  InputStatistics prod(16), eval(16);
  prod.add(drawn.cast<double>() * M);
  eval.add(Eigen::MatrixXd(drawn.cast<double>() * M));
  CHECK(prod.gram() == eval.gram());
}

TEST_CASE("InputStatistics: diagonal_statistics keeps the diagonal sums and the count") {
  std::mt19937 rng(11);
  std::normal_distribution<double> g(0.0, 1.0);
  Eigen::MatrixXd X(37, 9);
  for (Eigen::Index i = 0; i < X.size(); ++i) X.data()[i] = g(rng);
  loftq::InputStatistics full(9, loftq::StatsMode::full);
  full.add(X);
  const loftq::InputStatistics d = full.diagonal_statistics();
  CHECK(d.mode() == loftq::StatsMode::diagonal);
  CHECK(d.count() == 37);
  CHECK(d.features() == 9);
  // The full sums' own diagonal, bit for bit: X^T X's diagonal from the same GEMM.
  CHECK(d.diagonal() == full.diagonal());
  // Against the sums of squares formed here in double.
  for (Eigen::Index j = 0; j < 9; ++j)
    CHECK(d.diagonal()(j) == doctest::Approx(X.col(j).squaredNorm() / 37).epsilon(1e-12));
  // A diagonal one's copy is itself.
  loftq::InputStatistics diag(9, loftq::StatsMode::diagonal);
  diag.add(X);
  CHECK(diag.diagonal_statistics().diagonal() == diag.diagonal());
  CHECK_THROWS_AS(d.gram(), loftq::Error);
}

TEST_CASE("add_together: the same sums as separate add() calls, bit for bit, for any thread count") {
  // Widths below one column block, across several, and in both modes: the
  // tasks of all parts share one pass, each block still summed by one task.
  const Eigen::MatrixXd A = loftq_test::correlated_samples(600, 70, 3).cast<double>();
  const Eigen::MatrixXd B = loftq_test::correlated_samples(600, 300, 4).cast<double>();
  const Eigen::MatrixXd C = loftq_test::correlated_samples(600, 260, 5).cast<double>();
  for (int threads : {1, 2}) {
    InputStatistics a(70), b(300), c(260, StatsMode::diagonal);
    InputStatistics ra(70), rb(300), rc(260, StatsMode::diagonal);
    // Two passes: the first 450 rows, then the remaining 150 (the rows past
    // `rows` in a part are not read).
    loftq::detail::add_together({{&a, &A, 450}, {&b, &B, 450}, {&c, &C, 450}}, threads);
    const Eigen::MatrixXd A2 = A.bottomRows(150), B2 = B.bottomRows(150), C2 = C.bottomRows(150);
    loftq::detail::add_together({{&a, &A2, 150}, {&b, &B2, 150}, {&c, &C2, 150}}, threads);
    ra.add(A.topRows(450), 1).add(A2, 1);
    rb.add(B.topRows(450), 1).add(B2, 1);
    rc.add(C.topRows(450), 1).add(C2, 1);
    CHECK(a.count() == 600);
    CHECK(c.count() == 600);
    CHECK(a.gram() == ra.gram());
    CHECK(b.gram() == rb.gram());
    CHECK(c.diagonal() == rc.diagonal());
    // And the sums themselves, against a direct product.
    CHECK((b.gram() - B.transpose() * B / 600.0).norm() <= 1e-12 * b.gram().norm());
  }
  // A bad part leaves every statistic unchanged.
  InputStatistics a(70), b(300);
  Eigen::MatrixXd bad = B;
  bad(5, 7) = std::numeric_limits<double>::infinity();
  CHECK(loftq_test::code_of([&] {
          loftq::detail::add_together({{&a, &A, 600}, {&b, &bad, 600}}, 2);
        }) == loftq::Errc::non_finite);
  bad(5, 7) = 1e200;
  CHECK(loftq_test::code_of([&] {
          loftq::detail::add_together({{&a, &A, 600}, {&b, &bad, 600}}, 2);
        }) == loftq::Errc::invalid_argument);
  CHECK(loftq_test::code_of([&] {
          loftq::detail::add_together({{&a, &B, 600}}, 2);
        }) == loftq::Errc::invalid_argument);  // 300 columns for 70 features
  CHECK(loftq_test::code_of([&] { loftq::detail::add_together({{&a, &A, 601}}, 2); }) == loftq::Errc::invalid_argument);
  CHECK(a.count() == 0);
  CHECK(b.count() == 0);
}
