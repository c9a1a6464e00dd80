#pragma once
// The output metric of data-aware LoftQ (data_aware.hpp has the derivation):
// ||X||_H^2 = tr(X H X^T) through a factor F with F F^T = Hd, the damped
// input Gram matrix, as a Metric of the alternation (alternation.hpp).

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../input_statistics.hpp"
#include "../packed.hpp"
#include "alternation.hpp"
#include "block_quantizer.hpp"
#include "instances.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "reduce.hpp"
#include "residual.hpp"

namespace loftq {
namespace detail {

constexpr Eigen::Index kMetricRows = 256;  // rows per task in products with the metric factor
constexpr Eigen::Index kSolveColumns = 8;  // right-hand sides per task in F^{-T} B

// In-place Cholesky factorization A = L L^T of the lower triangle of A (the
// strict upper triangle is scratch). Right-looking and blocked: per block
// column, a serial LLT of the diagonal block, then panel solves and trailing
// updates, one task per block row. Eigen's own LLT runs on one thread here
// (Eigen is held serial for determinism), and at n = 4096 that serial n^3 / 6
// took as long as two LoftQ iterations. Fixed blocks, so the result does not
// depend on the thread count. Returns false when A is not positive definite.
// A template (Matrix is Eigen::MatrixXd) only so that a unit that does not
// call it does not instantiate its LLT, triangular solve and GEMM, as an
// inline function's body would be whether called or not.
template <class Matrix>
bool cholesky_in_place(Matrix& A, int threads) {
  const Eigen::Index n = A.rows(), bs = kStatsBlock;
  for (Eigen::Index k0 = 0; k0 < n; k0 += bs) {
    const Eigen::Index kw = std::min(bs, n - k0), c0 = k0 + kw, rest = n - c0;
    Eigen::Ref<Matrix> Akk = A.block(k0, k0, kw, kw);
    Eigen::LLT<Eigen::Ref<Matrix>, Eigen::Lower> llt(Akk);
    if (llt.info() != Eigen::Success) return false;
    if (rest == 0) break;
    const std::int64_t rb = (rest + bs - 1) / bs;
    parallel_for(rb, threads, [&](std::int64_t t) {  // A_ik := A_ik L_kk^{-T}
      const Eigen::Index i0 = c0 + t * bs, iw = std::min(bs, n - i0);
      auto P = A.block(i0, k0, iw, kw);
      A.block(k0, k0, kw, kw)
          .template triangularView<Eigen::Lower>()
          .transpose()
          .template solveInPlace<Eigen::OnTheRight>(P);
    });
    parallel_for(rb, threads, [&](std::int64_t t) {  // A_ij -= A_ik A_jk^T for c0 <= j <= i
      // Block row b updates b + 1 blocks: alternate front and back to balance
      // OpenMP's contiguous static split.
      const std::int64_t b = t % 2 == 0 ? t / 2 : rb - 1 - t / 2;
      const Eigen::Index i0 = c0 + b * bs, iw = std::min(bs, n - i0), cw = i0 + iw - c0;
      A.block(i0, c0, iw, cw).noalias() -= A.block(i0, k0, iw, kw) * A.block(c0, k0, cw, kw).transpose();
    });
  }
  return true;
}

// The output metric ||X||_H^2 = tr(X H X^T) through a factor F with F F^T = Hd,
// the damped Gram matrix scaled to mean diagonal 1:
//   Hd = (H + lambda mean(diag H) I) / ((1 + lambda) mean(diag H)).
// The scaling changes no minimizer; it keeps every quantity O(1) and makes
// H = c I give Hd = I exactly, i.e. the data-free algorithm.
template <class Scalar>
class OutputMetric {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;

  OutputMetric(const InputStatistics& s, double damping, int threads = 0)
      : n_(s.features()), full_(s.mode() == StatsMode::full), threads_(threads) {
    require(s.count() > 0, Errc::invalid_argument, "data-aware initialize: the input statistics hold no samples");
    require(std::isfinite(damping) && damping >= 0, Errc::invalid_argument,
            "data-aware initialize: damping must be finite and >= 0");
    const double N = static_cast<double>(s.count());
    Eigen::VectorXd h = full_ ? Eigen::VectorXd(StatsAccess::sums(s).diagonal()) : StatsAccess::diagonal_sums(s);
    h /= N;
    const double mean = h.sum() / static_cast<double>(n_);
    // All-zero inputs give every Q zero output error. The relative error does
    // not depend on H's scale, and H = c I tends to H = 0 with c: take that
    // limit, which is the data-free algorithm with its weight error.
    const bool zero = !(mean > 0);
    lambda_ = zero ? 0.0 : damping;
    const double lm = zero ? 0.0 : damping * mean, den = zero ? 1.0 : (1.0 + damping) * mean;
    Eigen::VectorXd d(n_);  // diag(Hd)
    raw_w_.resize(n_);
    col_w_.resize(static_cast<std::size_t>(n_));
    for (Eigen::Index j = 0; j < n_; ++j) {
      d(j) = zero ? 1.0 : (h(j) + lm) / den;
      raw_w_(j) = zero ? 1.0 : h(j) / mean;
      col_w_[static_cast<std::size_t>(j)] = static_cast<float>(d(j));
    }
    if (full_) {
      Eigen::MatrixXd Hd = Eigen::MatrixXd::Zero(n_, n_);
      if (zero) {
        Hd.setIdentity();
      } else {
        const Eigen::MatrixXd& S = StatsAccess::sums(s);
        for (Eigen::Index j = 0; j < n_; ++j) {
          Hd(j, j) = d(j);
          for (Eigen::Index i = j + 1; i < n_; ++i) Hd(i, j) = S(i, j) / N / den;
        }
      }
      require(cholesky_in_place(Hd, threads) && Hd.allFinite(), Errc::invalid_argument,
              "data-aware initialize: the input Gram matrix is singular; use damping > 0");
      L_ = Matrix::Zero(n_, n_);
      L_.template triangularView<Eigen::Lower>() = Hd.cast<Scalar>();  // coefficient-wise: no n x n temporary
    } else {
      sqrt_d_.resize(n_);
      inv_sqrt_d_.resize(n_);
      for (Eigen::Index j = 0; j < n_; ++j) {
        sqrt_d_(j) = static_cast<Scalar>(std::sqrt(d(j)));
        // d = 0 needs damping 0 and a channel that never fires. Its column of
        // E F is zero, so B's row there does not matter; 0 keeps it finite.
        inv_sqrt_d_(j) = d(j) > 0 ? static_cast<Scalar>(1.0 / std::sqrt(d(j))) : Scalar(0);
      }
    }
  }

  bool full() const { return full_; }
  Eigen::Index features() const { return n_; }
  // diag(Hd), mean 1: the quantizer's per-column weights.
  const float* column_weights() const { return col_w_.data(); }
  // The storage of the image X F (m x n), which a workspace lends.
  RowMatrix<Scalar>& image() { return M_; }

  // M := X F for the row-major m x n matrix at x.
  void apply(const Scalar* x, Eigen::Index m, RowMatrix<Scalar>& M, int threads) const {
    Eigen::Map<const RowMatrix<Scalar>> X(x, m, n_);
    resize_large(M, m, n_);
    const std::int64_t chunks = (m + kMetricRows - 1) / kMetricRows;
    parallel_for(chunks, threads, [&](std::int64_t c) {
      const Eigen::Index r0 = c * kMetricRows, len = std::min(kMetricRows, m - r0);
      if (full_)
        M.middleRows(r0, len).noalias() = X.middleRows(r0, len) * L_.template triangularView<Eigen::Lower>();
      else
        M.middleRows(r0, len) = X.middleRows(r0, len) * sqrt_d_.asDiagonal();
    });
  }

  // B := F^{-T} B (B: n x r). Fixed groups of columns, each one serial
  // triangular solve, so the result does not depend on the thread count.
  void unapply_transposed(Matrix& B, int threads) const {
    if (!full_) {
      B = inv_sqrt_d_.asDiagonal() * B;
      return;
    }
    const Eigen::Index r = B.cols();
    const std::int64_t groups = (r + kSolveColumns - 1) / kSolveColumns;
    parallel_for(groups, threads, [&](std::int64_t g) {
      const Eigen::Index c0 = g * kSolveColumns, w = std::min(kSolveColumns, r - c0);
      auto block = B.middleCols(c0, w);
      L_.template triangularView<Eigen::Lower>().transpose().solveInPlace(block);
    });
  }

  // tr(X H X^T) / mean(diag H) from fx2 = ||X F||^2 and x2 = ||X||^2 (full
  // statistics). Undamped, this is the reported output error; by Hd's
  // definition H / mean(diag H) = (1 + lambda) Hd - lambda I.
  double combine(double fx2, double x2) const { return std::max(0.0, (1.0 + lambda_) * fx2 - lambda_ * x2); }

  // sum_ij x_ij^2 h_j / mean(diag H): the diagonal statistics' output error.
  double weighted_squared_norm(const Scalar* x, Eigen::Index m, int threads) const {
    const Eigen::Index rows = std::max<Eigen::Index>(1, (1 << 16) / n_);
    const std::int64_t chunks = (m + rows - 1) / rows;
    return chunked_sum(chunks, threads, [&](std::int64_t c) {
      const Eigen::Index r0 = c * rows, len = std::min(rows, m - r0);
      const Scalar* xc = x + r0 * n_;
      return interleaved_row_sum(len, n_, [&](Eigen::Index i, Eigen::Index j) {
        const double v = static_cast<double>(xc[i * n_ + j]);
        return v * v * raw_w_(j);
      });
    });
  }

  // The Metric interface of detail/alternation.hpp. prepare(X) leaves X's
  // image X F in M_, which the SVD then sees (fit_input), and which the full
  // statistics' norm needs.
  const char* name() const { return "data-aware initialize"; }
  // Errors in loud input channels cost more output error: the scale search
  // weighs them by diag(Hd).
  void weigh(QuantSpec& spec) const {
    spec.col_weights = column_weights();
    spec.cols = n_;
  }
  template <class X>
  void prepare(const X& x) {
    apply(x.data(), x.rows(), M_, threads_);
  }
  // ||X H^{1/2}||^2 / mean(diag H), H undamped; X prepared.
  template <class X>
  double squared_norm(const X& x) const {
    if (!full_) return weighted_squared_norm(x.data(), x.rows(), threads_);
    const std::int64_t N = static_cast<std::int64_t>(x.size());
    return combine(detail::squared_norm(M_.data(), N, threads_), detail::squared_norm(x.data(), N, threads_));
  }
  template <class X>
  const RowMatrix<Scalar>& fit_input(const X&) const {
    return M_;
  }
  // A BF^T is the best rank-r fit of M = E F, so A B^T with B = F^{-T} BF is
  // that of E in the metric.
  void finish_factors(Factors<Scalar>& f) const {
    f.BF = f.B;
    unapply_transposed(f.B, threads_);
    require(f.B.allFinite(), Errc::non_finite,
            "data-aware initialize: the factors are not finite (the input Gram matrix is too ill-conditioned; "
            "increase damping)");
  }
  // The output error of R - A B^T, R prepared. Full statistics combine
  // ||(R - A B^T) F||^2 = ||M - A BF^T||^2 with ||R - A B^T||^2; diagonal
  // statistics weigh each column of R - A B^T by h_j.
  double step(const Scalar* Wp, RowMatrix<Scalar>& R, const Factors<Scalar>& f, const Requantize* next) const {
    if (full_) {
      const double fx2 = residual_error(M_, f.A, f.BF, threads_);
      const double x2 =
          next ? requantize_residual(Wp, R, f.A, f.B, threads_, *next) : residual_error(R, f.A, f.B, threads_);
      return combine(fx2, x2);
    }
    auto weighted = [&](const Scalar* Rc, const Scalar* Pc, Eigen::Index len, Eigen::Index n) {
      return interleaved_row_sum(len, n, [&](Eigen::Index i, Eigen::Index j) {
        const double d = static_cast<double>(Rc[i * n + j]) - static_cast<double>(Pc[i * n + j]);
        return d * d * raw_w_(j);
      });
    };
    return next ? requantize_residual(Wp, R, f.A, f.B, threads_, *next, weighted)
                : residual_error(R, f.A, f.B, threads_, weighted);
  }
  // The output error of W - q(W), through R.
  double quantization_squared_error(const Scalar* Wp, RowMatrix<Scalar>& R, const QuantSpec& plain) {
    quantize_flat(Wp, R.data(), static_cast<PackedMatrix*>(nullptr), static_cast<std::int64_t>(R.size()), plain,
                  threads_, Wp);
    if (full_) prepare(R);  // only the full norm reads the image
    return squared_norm(R);
  }

 private:
  Eigen::Index n_;
  bool full_;
  int threads_;
  RowMatrix<Scalar> M_;  // the image X F of the last prepared X
  double lambda_ = 0;
  Matrix L_;                    // full: lower Cholesky factor of Hd
  Vector sqrt_d_, inv_sqrt_d_;  // diagonal: diag(Hd)^{+-1/2}
  Eigen::VectorXd raw_w_;       // h_j / mean(diag H), undamped
  std::vector<float> col_w_;    // diag(Hd)
};

}  // namespace detail
}  // namespace loftq

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_DOUBLE bool cholesky_in_place<Eigen::MatrixXd>(Eigen::MatrixXd&, int);
}  // namespace detail
}  // namespace loftq
#endif
