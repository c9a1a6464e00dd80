#pragma once
// TruncatedSVD: the top-k singular triplets of a dense matrix, Eigen style.
//
//   loftq::TruncatedSVD<Eigen::MatrixXf> svd(M, 16);
//   svd.matrixU();  svd.singularValues();  svd.matrixV();  svd.info();
//
// exact:      Eigen's BDCSVD, truncated. O(m n min(m, n)).
// randomized: Halko-Martinsson-Tropp subspace iteration: a Gaussian (or
//             warm-started) block of k + p columns, q power iterations with QR
//             re-orthonormalization, then a small SVD. O(m n (k + p) (2q + 2)).
//             Deterministic for a given seed, whatever the thread count.

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/instances.hpp"
#include "detail/range_finder.hpp"
#include "detail/rng.hpp"
#include "error.hpp"

namespace loftq {

enum class SVDMethod { exact, randomized };

// Defaults from measurement (LoftQ on realistic 1024^2 and 2048^2 matrices,
// NF2/NF4, rank 16, T=5, final error relative to the exact SVD): p=8, q=3 cold
// and q=1 warm lands within 0.11% of exact at 18% less GEMM work than p=16,
// q=2, which was within 0.13%.
//
// Warm starts in initialize pass on the whole k-column right basis
// (rightBasis()), so the LoftQ iterations continue one subspace iteration on a
// slowly changing residual. Then q=0 warm, two GEMM passes per iteration
// instead of four, is within 0.09% (NF2) and 0.004% (NF4) of exact at 1024^2
// and 0.001% at 2048^2. Below that it drifts: 0.35-0.67% at 512^2, 512x384
// and 768x512 against 0.15-0.24% for q=1. Options::warm_power_iterations
// therefore defaults to q=0 only when both sides are >= kWarmNoPowerFrom.
constexpr Eigen::Index kWarmNoPowerFrom = 1024;

struct SVDOptions {
  SVDMethod method = SVDMethod::randomized;
  Eigen::Index oversampling = 8;  // extra columns in the randomized range finder
  int power_iterations = 3;       // subspace iterations from a cold start
  std::uint64_t seed = 0;
  int threads = 0;  // 0: OpenMP's default
};

inline const char* to_string(SVDMethod m) { return m == SVDMethod::exact ? "exact" : "randomized"; }

template <class MatrixType_>
class TruncatedSVD {
 public:
  using MatrixType = MatrixType_;
  using Scalar = typename MatrixType::Scalar;
  using DenseMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using SingularValuesType = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  TruncatedSVD() = default;
  template <class Derived>
  TruncatedSVD(const Eigen::MatrixBase<Derived>& M, Eigen::Index rank, const SVDOptions& opts = {}) {
    compute(M, rank, opts);
  }

  template <class Derived>
  TruncatedSVD& compute(const Eigen::MatrixBase<Derived>& M, Eigen::Index rank, const SVDOptions& opts = {}) {
    return compute_impl(M.derived(), rank, opts, static_cast<const DenseMatrix*>(nullptr));
  }

  // Warm start: the columns of `start` (n x j, any j) seed the range finder
  // for the right singular subspace; with j < k the rest is Gaussian. Ignored
  // by the exact method.
  template <class Derived, class DerivedV>
  TruncatedSVD& compute(const Eigen::MatrixBase<Derived>& M, Eigen::Index rank, const SVDOptions& opts,
                        const Eigen::MatrixBase<DerivedV>& start) {
    detail::require(
        start.rows() == M.cols(), Errc::invalid_argument,
        "TruncatedSVD: warm start has " + std::to_string(start.rows()) + " rows, expected " + std::to_string(M.cols()));
    const DenseMatrix s = start.template cast<Scalar>();
    return compute_impl(M.derived(), rank, opts, &s);
  }

  const DenseMatrix& matrixU() const { return checked(U_); }
  const DenseMatrix& matrixV() const { return checked(V_); }
  const SingularValuesType& singularValues() const { return checked(S_); }
  // All k = rank + oversampling approximate right singular vectors the
  // randomized method ended with (matrixV() for exact), ordered by singular
  // value. As a warm start for a nearby matrix they carry the oversampling
  // directions forward too, so repeated solves act as one continued subspace
  // iteration instead of restarting the extra columns from noise.
  const DenseMatrix& rightBasis() const { return checked(basis_); }
  Eigen::ComputationInfo info() const { return info_; }
  Eigen::Index rank() const { return S_.size(); }

 private:
  template <class T>
  const T& checked(const T& x) const {
    detail::require(computed_, Errc::invalid_argument, "TruncatedSVD: compute() has not been called");
    return x;
  }

  template <class Derived>
  TruncatedSVD& compute_impl(const Derived& M, Eigen::Index rank, const SVDOptions& opts, const DenseMatrix* start) {
    const Eigen::Index m = M.rows(), n = M.cols(), mn = std::min(m, n);
    detail::require(m > 0 && n > 0, Errc::invalid_argument, "TruncatedSVD: the matrix is empty");
    detail::require(rank >= 1 && rank <= mn, Errc::invalid_argument,
                    "TruncatedSVD: rank " + std::to_string(rank) + " is outside 1.." + std::to_string(mn) + " for a " +
                        std::to_string(m) + "x" + std::to_string(n) + " matrix");
    detail::require(opts.oversampling >= 0 && opts.power_iterations >= 0, Errc::invalid_argument,
                    "TruncatedSVD: oversampling and power_iterations must be >= 0");
    detail::EigenSerialScope serial;
    const Eigen::Index k = std::min(rank + opts.oversampling, mn);
    // When the sketch would cover the whole space the exact method is both
    // cheaper and better.
    if (opts.method == SVDMethod::exact || 2 * k >= mn)
      exact(M, rank);
    else
      randomized(M, rank, k, opts, start);
    info_ = (U_.allFinite() && V_.allFinite() && S_.allFinite()) ? Eigen::Success : Eigen::NumericalIssue;
    computed_ = true;
    return *this;
  }

  template <class Derived>
  void exact(const Derived& M, Eigen::Index rank) {
    Eigen::BDCSVD<DenseMatrix> svd(DenseMatrix(M), Eigen::ComputeThinU | Eigen::ComputeThinV);
    U_ = svd.matrixU().leftCols(rank);
    V_ = svd.matrixV().leftCols(rank);
    S_ = svd.singularValues().head(rank);
    basis_ = V_;
  }

  template <class Derived>
  void randomized(const Derived& M, Eigen::Index rank, Eigen::Index k, const SVDOptions& opts,
                  const DenseMatrix* start) {
    const Eigen::Index n = M.cols();
    DenseMatrix Omega(n, k);
    Eigen::Index from = 0;
    if (start) {
      from = std::min(k, start->cols());
      Omega.leftCols(from) = start->leftCols(from);
    }
    detail::SplitMix64 rng(opts.seed);
    for (Eigen::Index j = from; j < k; ++j)
      for (Eigen::Index i = 0; i < n; ++i) Omega(i, j) = static_cast<Scalar>(rng.normal());

    DenseMatrix Y, Z;
    detail::chunked_mul(M, Omega, Y, opts.threads);
    detail::orthonormalize(Y);
    for (int it = 0; it < opts.power_iterations; ++it) {
      detail::chunked_mul_t(M, Y, Z, opts.threads);
      detail::orthonormalize(Z);
      detail::chunked_mul(M, Z, Y, opts.threads);
      detail::orthonormalize(Y);
    }
    // M ~ Y Y^T M = Y (M^T Y)^T; the SVD of the n x k factor finishes it.
    detail::chunked_mul_t(M, Y, Z, opts.threads);
    Eigen::BDCSVD<DenseMatrix> small(Z, Eigen::ComputeThinU | Eigen::ComputeThinV);
    basis_ = small.matrixU();
    V_ = basis_.leftCols(rank);
    S_ = small.singularValues().head(rank);
    U_ = Y * small.matrixV().leftCols(rank);
  }

  DenseMatrix U_, V_, basis_;
  SingularValuesType S_;
  Eigen::ComputationInfo info_ = Eigen::InvalidInput;
  bool computed_ = false;
};

}  // namespace loftq

#ifdef LOFTQ_INSTANCES
LOFTQ_INSTANCE_FLOAT class Eigen::BDCSVD<Eigen::MatrixXf>;
LOFTQ_INSTANCE_DOUBLE class Eigen::BDCSVD<Eigen::MatrixXd>;
LOFTQ_INSTANCE_FLOAT class Eigen::HouseholderQR<Eigen::MatrixXf>;
LOFTQ_INSTANCE_DOUBLE class Eigen::HouseholderQR<Eigen::MatrixXd>;
#endif
