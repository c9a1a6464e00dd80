#pragma once
// Data-aware LoftQ: fit the layer's outputs rather than its weights.
//
// A linear layer computes Y = X W^T (W: m x n, out x in; X: N x n, one row
// per sample). With the input Gram matrix H = X^T X / N, the output error of
// an approximation W' of W is
//
//   ||X (W - W')^T||_F^2 / N = tr((W - W') H (W - W')^T) = ||(W - W') F||_F^2   for any F F^T = H,
//
// so the LoftQ alternation becomes
//
//   Q_t  = q(W - A B^T)                        block scales weighted by diag(H) when Options::scale_search
//   A, B = argmin_{rank r} ||(W - Q_t - A B^T) F||_F
//
// and the second step has a closed form (Eckart-Young after the change of
// variables Z = A B^T F, which F being invertible makes a bijection): with
// U S V^T the rank-r truncated SVD of (W - Q_t) F,
//
//   A = U sqrt(S),   B = F^{-T} V sqrt(S),   so that A B^T F = U S V^T.
//
// F is the Cholesky factor L of the damped Gram matrix (full statistics) or
// diag(H)^{1/2} (diagonal statistics). Damping adds lambda * mean(diag H) * I
// to H: it keeps F invertible when some input directions never occur in the
// calibration set, and it pulls the fit towards plain weight error there,
// which helps on inputs the calibration set did not show.
//
// Cost (bench_data_aware, 2 threads, rank 16, T = 5). Diagonal statistics add
// a few O(m n) passes per iteration: 1.0-1.25x the data-free time at 1024^2
// and 4096^2 (1.5x at 4096^2 NF4 with the weighted scale search). Full
// statistics form (W - Q_t) L every iteration, m n^2 / 2 multiply-adds, which
// is the floor for reporting the exact output error of an arbitrary Q_t
// (tr(E H E^T) of a dense E has no cheaper form); add W L, the baseline's
// (W - q(W)) L and one Cholesky factorization (n^3 / 6). That is 3-3.7x the
// data-free time at n = 1024 and 9-13x at n = 4096, where diagonal statistics
// are the practical choice.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/instances.hpp"
#include "detail/parallel.hpp"
#include "error.hpp"
#include "initialize.hpp"
#include "packed.hpp"
#include "quantizer.hpp"
#include "svd.hpp"

namespace loftq {

enum class StatsMode {
  full,      // the whole Gram matrix H (n x n doubles): exact output error
  diagonal,  // only diag(H) (n doubles): treats input channels as uncorrelated
};

namespace detail {
struct StatsAccess;
constexpr Eigen::Index kStatsBlock = 128;     // Gram columns per task
constexpr Eigen::Index kSampleChunk = 1024;   // samples widened to double at a time
constexpr Eigen::Index kMetricRows = 256;     // rows per task in products with the metric factor
constexpr Eigen::Index kSolveColumns = 8;     // right-hand sides per task in F^{-T} B
}  // namespace detail

// Accumulates the second moments of a layer's inputs, batch by batch, in
// double precision. add() is deterministic and independent of the thread
// count; splitting the same samples into different batches (or shards joined
// by merge()) changes only the rounding of the sums.
class InputStatistics {
 public:
  explicit InputStatistics(Eigen::Index features, StatsMode mode = StatsMode::full) : n_(features), mode_(mode) {
    detail::require(features >= 1, Errc::invalid_argument,
                    "InputStatistics: features must be >= 1 (got " + std::to_string(features) + ")");
    if (mode_ == StatsMode::full)
      sum_ = Eigen::MatrixXd::Zero(n_, n_);
    else
      diag_ = Eigen::VectorXd::Zero(n_);
  }

  // Adds a batch X (N_b x n, a row per sample, float or double, any layout).
  // The statistics are unchanged when this throws.
  template <class Derived>
  InputStatistics& add(const Eigen::MatrixBase<Derived>& X, int threads = 0) {
    using S = typename Derived::Scalar;
    static_assert(std::is_same<S, float>::value || std::is_same<S, double>::value,
                  "InputStatistics::add takes float or double samples");
    detail::require(X.rows() >= 1, Errc::invalid_argument, "InputStatistics::add: the batch has no samples");
    detail::require(X.cols() == n_, Errc::invalid_argument,
                    "InputStatistics::add: the batch has " + std::to_string(X.cols()) + " columns, expected " +
                        std::to_string(n_) + " (in_features)");
    detail::require(X.allFinite(), Errc::non_finite, "InputStatistics::add: the batch contains NaN or Inf");
    if constexpr (std::is_same<S, double>::value) {
      // Finite doubles can still overflow once squared and summed; below
      // 1e100 a square is under 1e200, so sums of 1e100 samples stay finite.
      detail::require(X.cwiseAbs().maxCoeff() <= 1e100, Errc::invalid_argument,
                      "InputStatistics::add: a sample exceeds 1e100 in magnitude");
    }
    detail::EigenSerialScope serial;
    Eigen::MatrixXd Xd;
    for (Eigen::Index s0 = 0; s0 < X.rows(); s0 += detail::kSampleChunk) {
      const Eigen::Index len = std::min(detail::kSampleChunk, X.rows() - s0);
      Xd = X.middleRows(s0, len).template cast<double>();
      accumulate(Xd, threads);
    }
    count_ += static_cast<std::int64_t>(X.rows());
    return *this;
  }

  // Adds another accumulator's samples (e.g. one collected on another shard).
  InputStatistics& merge(const InputStatistics& other) {
    detail::require(other.n_ == n_, Errc::invalid_argument,
                    "InputStatistics::merge: " + std::to_string(other.n_) + " features, expected " +
                        std::to_string(n_));
    detail::require(other.mode_ == mode_, Errc::invalid_argument, "InputStatistics::merge: the modes differ");
    if (mode_ == StatsMode::full)
      sum_ += other.sum_;
    else
      diag_ += other.diag_;
    count_ += other.count_;
    return *this;
  }

  std::int64_t count() const { return count_; }
  Eigen::Index features() const { return n_; }
  StatsMode mode() const { return mode_; }

  // H = X^T X / N over all samples added (full mode only).
  Eigen::MatrixXd gram() const {
    require_samples("gram");
    detail::require(mode_ == StatsMode::full, Errc::invalid_argument,
                    "InputStatistics::gram: diagonal statistics hold no off-diagonal entries");
    Eigen::MatrixXd H = sum_.selfadjointView<Eigen::Lower>();
    H /= static_cast<double>(count_);
    return H;
  }

  // diag(H): the mean square of each input channel.
  Eigen::VectorXd diagonal() const {
    require_samples("diagonal");
    return (mode_ == StatsMode::full ? Eigen::VectorXd(sum_.diagonal()) : diag_) / static_cast<double>(count_);
  }

 private:
  friend struct detail::StatsAccess;

  void require_samples(const char* what) const {
    detail::require(count_ > 0, Errc::invalid_argument,
                    std::string("InputStatistics::") + what + ": no samples have been added");
  }

  // Fixed column blocks, each summed by one task: the result does not depend
  // on the thread count. Full mode computes the lower triangle only.
  void accumulate(const Eigen::MatrixXd& Xd, int threads) {
    const Eigen::Index nb = (n_ + detail::kStatsBlock - 1) / detail::kStatsBlock;
    if (mode_ == StatsMode::full) {
      detail::parallel_for(nb, threads, [&](std::int64_t t) {
        // Blocks shrink towards the right edge of the triangle; alternating
        // front and back balances OpenMP's contiguous static split.
        const Eigen::Index b = t % 2 == 0 ? t / 2 : nb - 1 - t / 2;
        const Eigen::Index c0 = b * detail::kStatsBlock, w = std::min(detail::kStatsBlock, n_ - c0);
        sum_.block(c0, c0, n_ - c0, w).noalias() += Xd.rightCols(n_ - c0).transpose() * Xd.middleCols(c0, w);
      });
    } else {
      detail::parallel_for(nb, threads, [&](std::int64_t b) {
        const Eigen::Index c0 = b * detail::kStatsBlock, w = std::min(detail::kStatsBlock, n_ - c0);
        diag_.segment(c0, w) += Xd.middleCols(c0, w).colwise().squaredNorm().transpose();
      });
    }
  }

  Eigen::Index n_;
  StatsMode mode_;
  std::int64_t count_ = 0;
  Eigen::MatrixXd sum_;   // full: sum of x x^T, lower triangle
  Eigen::VectorXd diag_;  // diagonal: sum of x_j^2
};

struct DataAwareOptions {
  // lambda in H + lambda * mean(diag H) * I. Measured on held-out inputs from
  // the same distribution (realistic 1024^2 weights, calibration inputs with
  // 1% outlier channels, rank 16, T = 5, zero start and absmax scales, full
  // statistics), held-out output error for lambda = 0.01 / 0.1 / 0.3 / 1:
  //   NF2, 2048 samples:                0.1815 / 0.1789 / 0.1789 / 0.1886
  //   NF4, 2048 samples:                0.0437 / 0.0436 / 0.0437 / 0.0461
  //   NF2, 128 samples (H rank-deficient): 0.1938 / 0.1918 / 0.1918 / 0.2004
  // 0.1 is at the minimum in all three.
  double damping = 0.1;
};

namespace detail {

struct StatsAccess {
  static const Eigen::MatrixXd& sums(const InputStatistics& s) { return s.sum_; }
  static const Eigen::VectorXd& diagonal_sums(const InputStatistics& s) { return s.diag_; }
};

// In-place Cholesky factorization A = L L^T of the lower triangle of A (the
// strict upper triangle is scratch). Right-looking and blocked: per block
// column, a serial LLT of the diagonal block, then panel solves and trailing
// updates, one task per block row. Eigen's own LLT runs on one thread here
// (Eigen is held serial for determinism), and at n = 4096 that serial n^3 / 6
// took as long as two LoftQ iterations. Fixed blocks, so the result does not
// depend on the thread count. Returns false when A is not positive definite.
inline bool cholesky_in_place(Eigen::MatrixXd& A, int threads) {
  const Eigen::Index n = A.rows(), bs = kStatsBlock;
  for (Eigen::Index k0 = 0; k0 < n; k0 += bs) {
    const Eigen::Index kw = std::min(bs, n - k0), c0 = k0 + kw, rest = n - c0;
    Eigen::Ref<Eigen::MatrixXd> Akk = A.block(k0, k0, kw, kw);
    Eigen::LLT<Eigen::Ref<Eigen::MatrixXd>, Eigen::Lower> llt(Akk);
    if (llt.info() != Eigen::Success) return false;
    if (rest == 0) break;
    const std::int64_t rb = (rest + bs - 1) / bs;
    parallel_for(rb, threads, [&](std::int64_t t) {  // A_ik := A_ik L_kk^{-T}
      const Eigen::Index i0 = c0 + t * bs, iw = std::min(bs, n - i0);
      auto P = A.block(i0, k0, iw, kw);
      A.block(k0, k0, kw, kw).triangularView<Eigen::Lower>().transpose().solveInPlace<Eigen::OnTheRight>(P);
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
      : n_(s.features()), full_(s.mode() == StatsMode::full) {
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

  // ||R - A B^T||_H^2 / mean(diag H) for diagonal statistics, in the same pass
  // that leaves R := W - A B^T (R holds W - Q on entry).
  template <class MatA, class MatB>
  double low_rank_step(const Scalar* Wp, RowMatrix<Scalar>& R, const MatA& A, const MatB& B, int threads) const {
    return detail::low_rank_step(Wp, R, A, B, threads, true, nullptr, nullptr,
                                 [&](const Scalar* Rc, const Scalar* Pc, Eigen::Index len, Eigen::Index n) {
                                   return interleaved_row_sum(len, n, [&](Eigen::Index i, Eigen::Index j) {
                                     const double d = static_cast<double>(Rc[i * n + j]) - static_cast<double>(Pc[i * n + j]);
                                     return d * d * raw_w_(j);
                                   });
                                 });
  }

 private:
  Eigen::Index n_;
  bool full_;
  double lambda_ = 0;
  Matrix L_;                   // full: lower Cholesky factor of Hd
  Vector sqrt_d_, inv_sqrt_d_;  // diagonal: diag(Hd)^{+-1/2}
  Eigen::VectorXd raw_w_;      // h_j / mean(diag H), undamped
  std::vector<float> col_w_;   // diag(Hd)
};

// The low-rank step in the output metric, given M = E F for the residual E:
// A = U sqrt(S), BF = V sqrt(S) (A BF^T is the best rank-r fit of M, and so
// A B^T of E in the metric), B = F^{-T} BF. V is kept for warm starts.
template <class Scalar>
struct OutputFactors {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix A, B, BF, V;
};

template <class Scalar>
void output_low_rank(const OutputMetric<Scalar>& metric, const RowMatrix<Scalar>& M, Eigen::Index rank,
                     const SVDOptions& svd_opt, bool warm,
                     TruncatedSVD<typename OutputFactors<Scalar>::Matrix>& svd, OutputFactors<Scalar>& f) {
  if (warm)
    svd.compute(M, rank, svd_opt, f.V);
  else
    svd.compute(M, rank, svd_opt);
  require(svd.info() == Eigen::Success, Errc::non_finite, "data-aware initialize: the SVD produced non-finite values");
  const auto sq = svd.singularValues().cwiseSqrt();
  f.A = svd.matrixU() * sq.asDiagonal();
  f.BF = svd.matrixV() * sq.asDiagonal();
  f.V = svd.rightBasis();
  f.B = f.BF;
  metric.unapply_transposed(f.B, svd_opt.threads);
  require(f.B.allFinite(), Errc::non_finite,
          "data-aware initialize: the factors are not finite (the input Gram matrix is too ill-conditioned; "
          "increase damping)");
}

// The data-aware alternation on a validated row-major m x n W; like
// initialize_rowmajor it depends only on the scalar type.
template <class Scalar>
Result<Scalar> initialize_rowmajor(const Scalar* Wp, Eigen::Index m, Eigen::Index n, QuantSpec spec,
                                   const InputStatistics& stats, const Options& opt, const DataAwareOptions& da) {
  const Eigen::Index r = opt.rank;
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  const int threads = opt.threads;
  EigenSerialScope serial;
  const OutputMetric<Scalar> metric(stats, da.damping, threads);
  spec.search = opt.scale_search;
  detail::QuantSpec baseline_spec = spec;  // QLoRA's q(W): plain absmax
  baseline_spec.search = false;
  // Errors in loud input channels cost more output error: the search weighs
  // them by diag(Hd).
  spec.col_weights = metric.column_weights();
  spec.cols = n;
  // As in the data-free loop: each block's search starts from its last choice.
  std::vector<float> fractions;
  if (spec.search && opt.warm_scale_search) {
    fractions.assign(static_cast<std::size_t>((N + spec.block_size - 1) / spec.block_size), 0.0f);
    spec.fractions = fractions.data();
  }
  Eigen::Map<const RowMatrix<Scalar>> W(Wp, m, n);

  RowMatrix<Scalar> R;  // the residual W - A B^T that the next Q quantizes
  detail::resize_large(R, m, n);
  R = W;
  RowMatrix<Scalar> M;      // R F, what the SVD sees
  // Output error of the m x n matrix x; full statistics leave x F in M.
  auto output_sq = [&](const Scalar* x) {
    if (!metric.full()) return metric.weighted_squared_norm(x, m, threads);
    metric.apply(x, m, M, threads);
    return metric.combine(detail::squared_norm(M.data(), N, threads), detail::squared_norm(x, N, threads));
  };
  const double w2 = output_sq(Wp);

  SVDOptions svd_cold = opt.svd;
  svd_cold.threads = threads;
  const SVDOptions svd_warm = detail::warm_svd_options(opt, svd_cold, m, n);
  const bool warm_ok = opt.warm_start && opt.svd.method == SVDMethod::randomized;

  Result<Scalar> res;
  TruncatedSVD<typename Result<Scalar>::Matrix> svd;
  detail::OutputFactors<Scalar> f;
  SVDOptions svd_start = svd_cold;
  if (opt.start_power_iterations >= 0) svd_start.power_iterations = opt.start_power_iterations;
  // A, B from M = E F, where R holds E; leaves R := W - A B^T and returns
  // the output error of E - A B^T.
  auto low_rank = [&](bool warm, const SVDOptions& cold) {
    const bool w = warm && warm_ok;
    detail::output_low_rank(metric, M, r, w ? svd_warm : cold, w, svd, f);
    if (!metric.full()) return metric.low_rank_step(Wp, R, f.A, f.B, threads);
    const double fx2 = detail::residual_squared_norm(M, f.A, f.BF, threads);
    return metric.combine(fx2, detail::low_rank_step(Wp, R, f.A, f.B, threads));
  };
  // The output error of R, with R F left in M (what the SVD needs next).
  auto output_sq_of_residual = [&]() {
    metric.apply(R.data(), m, M, threads);
    if (!metric.full()) return metric.weighted_squared_norm(R.data(), m, threads);
    return metric.combine(detail::squared_norm(M.data(), N, threads), detail::squared_norm(R.data(), N, threads));
  };

  bool have_factors = false;
  if (opt.start == Start::svd) {
    // The H-weighted SVD of W; M already holds W F with full statistics.
    if (!metric.full()) metric.apply(Wp, m, M, threads);
    low_rank(false, svd_start);
    have_factors = true;
  }

  PackedMatrix cur = detail::make_packed(m, n, spec), best = detail::make_packed(m, n, spec);
  typename Result<Scalar>::Matrix bestA, bestB;
  double best_err = std::numeric_limits<double>::infinity();
  for (int t = 1; t <= opt.iterations; ++t) {
    std::fill(cur.codes.begin(), cur.codes.end(), std::uint8_t{0});
    detail::quantize_flat(R.data(), R.data(), &cur, N, spec, threads, Wp);  // R := W - Q_t
    const double q2 = output_sq_of_residual();                               // M := (W - Q_t) F
    if (t == 1 && opt.start == Start::zero && !spec.search) res.qlora_error = detail::relative(q2, w2);
    const double e = detail::relative(low_rank(have_factors, svd_cold), w2);  // R := W - A_t B_t^T
    have_factors = true;
    res.history.push_back(e);
    if (!opt.keep_best || e < best_err || t == 1) {
      best_err = e;
      res.best_iteration = t;
      std::swap(cur, best);
      bestA = f.A;
      bestB = f.B;
    }
    if (opt.tolerance > 0 && t > 1) {
      const double prev = res.history[res.history.size() - 2];
      if (prev <= 0 || (prev - e) / prev < opt.tolerance) break;
    }
  }
  if (opt.start != Start::zero || spec.search) {
    // The baseline is QLoRA's absmax q(W), which this configuration never computes.
    detail::quantize_flat(Wp, R.data(), static_cast<PackedMatrix*>(nullptr), N, baseline_spec, threads, Wp);
    res.qlora_error = detail::relative(output_sq_of_residual(), w2);
  }
  detail::dequantize_flat(best, R.data(), threads);
  res.Q = std::move(R);
  res.A = std::move(bestA);
  res.B = std::move(bestB);
  res.packed = std::move(best);
  return res;
}

}  // namespace detail

// LoftQ in the output metric of calibration statistics `stats`.
//
// Returns the same Result as the data-free initialize, W ~ Q + A B^T, with
// errors measured on the layer's outputs over the calibration inputs:
//   history[t]   ||(W - Q_t - A_t B_t^T) H^{1/2}||_F / ||W H^{1/2}||_F, H undamped
//                (full statistics: exact; diagonal statistics: with H := diag(H)),
//   qlora_error  ||(W - q(W)) H^{1/2}||_F / ||W H^{1/2}||_F, q QLoRA's plain
//                absmax quantizer (no scale search), as in the data-free Result.
// keep_best and tolerance use these errors; the other Options act as in the
// data-free loop. A and B are balanced in the metric: ||A e_j|| = ||F^T B e_j||.
// Bit-identical for any Options::threads. With H = c I the result is the
// data-free initialize's: bit for bit when c is a power of two (then the
// scaled metric is exactly I), else up to rounding.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const InputStatistics& stats, const Options& opt = {},
                                            const DataAwareOptions& da = {}) {
  const Eigen::Index m = W_in.rows(), n = W_in.cols();
  detail::RowMajorView<Derived> view(W_in);
  detail::check_weights(W_in, view.data(), opt.threads, "data-aware initialize");
  detail::check_options(opt, m, n);
  detail::require(stats.features() == n, Errc::invalid_argument,
                  "data-aware initialize: the statistics have " + std::to_string(stats.features()) +
                      " features, but W has " + std::to_string(n) + " columns (in_features)");
  return detail::initialize_rowmajor(view.data(), m, n, detail::spec_of(quantizer), stats, opt, da);
}

}  // namespace loftq

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT Result<float> initialize_rowmajor<float>(const float*, Eigen::Index, Eigen::Index, QuantSpec,
                                                              const InputStatistics&, const Options&,
                                                              const DataAwareOptions&);
LOFTQ_INSTANCE_DOUBLE Result<double> initialize_rowmajor<double>(const double*, Eigen::Index, Eigen::Index, QuantSpec,
                                                                 const InputStatistics&, const Options&,
                                                                 const DataAwareOptions&);
}  // namespace detail
}  // namespace loftq
#endif
