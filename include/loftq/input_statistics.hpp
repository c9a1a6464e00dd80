#pragma once
// InputStatistics: the second moments of a layer's inputs, which data-aware
// LoftQ (data_aware.hpp) minimizes the output error under.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "detail/parallel.hpp"
#include "error.hpp"

namespace loftq {

enum class StatsMode {
  full,      // the whole Gram matrix H (n x n doubles): exact output error
  diagonal,  // only diag(H) (n doubles): treats input channels as uncorrelated
};

namespace detail {
struct StatsAccess;
constexpr Eigen::Index kStatsBlock = 128;    // Gram columns per task
constexpr Eigen::Index kSampleChunk = 1024;  // samples widened to double at a time
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
    if constexpr (!(Derived::Flags & Eigen::DirectAccessBit)) {
      // The checks and the sums read X several times; an expression such as
      // Random() or a product would give each read different values or
      // recompute it, so it is evaluated once here.
      const typename Derived::PlainObject plain = X;
      return add(plain, threads);
    }
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
    detail::require(
        other.n_ == n_, Errc::invalid_argument,
        "InputStatistics::merge: " + std::to_string(other.n_) + " features, expected " + std::to_string(n_));
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

  // The diagonal statistics of the same samples: a full one's diagonal sums
  // (what llama.cpp's imatrix holds), or a copy of a diagonal one. n doubles
  // where the full sums take n^2.
  InputStatistics diagonal_statistics() const {
    InputStatistics d(n_, StatsMode::diagonal);
    d.diag_ = mode_ == StatsMode::full ? Eigen::VectorXd(sum_.diagonal()) : diag_;
    d.count_ = count_;
    return d;
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

namespace detail {

struct StatsAccess {
  static const Eigen::MatrixXd& sums(const InputStatistics& s) { return s.sum_; }
  static const Eigen::VectorXd& diagonal_sums(const InputStatistics& s) { return s.diag_; }
  // Statistics from stored sums (the file readers of io/statistics.hpp, which
  // validate them first): `sums` is sum x x^T (lower triangle used) or the
  // vector of sum x_j^2, over `count` >= 1 samples.
  static InputStatistics restore(Eigen::MatrixXd sums, std::int64_t count) {
    require(sums.rows() >= 1 && sums.rows() == sums.cols() && count >= 1, Errc::invalid_argument,
            "InputStatistics: stored sums must be square over at least one sample");
    InputStatistics s(sums.rows(), StatsMode::full);
    s.sum_ = std::move(sums);
    s.count_ = count;
    return s;
  }
  static InputStatistics restore(Eigen::VectorXd sums, std::int64_t count) {
    require(sums.size() >= 1 && count >= 1, Errc::invalid_argument,
            "InputStatistics: stored sums must be over at least one sample");
    InputStatistics s(sums.size(), StatsMode::diagonal);
    s.diag_ = std::move(sums);
    s.count_ = count;
    return s;
  }
};

}  // namespace detail
}  // namespace loftq
