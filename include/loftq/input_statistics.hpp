#pragma once
// InputStatistics: the second moments of a layer's inputs, which data-aware
// LoftQ (data_aware.hpp) minimizes the output error under.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "detail/instances.hpp"
#include "detail/parallel.hpp"
#include "error.hpp"

namespace loftq {

enum class StatsMode {
  full,      // the whole Gram matrix H (n x n doubles): exact output error
  diagonal,  // only diag(H) (n doubles): treats input channels as uncorrelated
};

class InputStatistics;

namespace detail {
struct StatsAccess;
constexpr Eigen::Index kStatsBlock = 128;    // Gram columns per task
constexpr Eigen::Index kSampleChunk = 1024;  // samples widened to double at a time

// Samples already in double for add_together: the first `rows` rows of *X
// (a row per sample, stats->features() columns) go to *stats.
struct WidenedSamples {
  InputStatistics* stats;
  const Eigen::MatrixXd* X;
  Eigen::Index rows;
};
template <class Parts = std::vector<WidenedSamples>>
void add_together(const Parts& parts, int threads);
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
      accumulate({{this, &Xd, len}}, threads);
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
  template <class Parts>
  friend void detail::add_together(const Parts&, int);

  void require_samples(const char* what) const {
    detail::require(count_ > 0, Errc::invalid_argument,
                    std::string("InputStatistics::") + what + ": no samples have been added");
  }

  // Fixed column blocks of every part's statistics, each summed by one task:
  // the result does not depend on the thread count, nor on which parts are
  // added together. Full mode computes the lower triangle only. Blocks shrink
  // towards the right edge of the triangle and parts differ in width, so the
  // blocks are ordered by cost and taken alternately from the front and the
  // back of that order, which balances OpenMP's contiguous static split.
  // (Handing them out dynamically, largest first, measured about 10% slower
  // on a 11008-wide update.)
  template <class Parts = std::vector<detail::WidenedSamples>>
  static void accumulate(const Parts& parts, int threads) {
    struct Task {
      std::size_t part;
      Eigen::Index c0, w;
      double cost;
    };
    std::vector<Task> tasks;
    for (std::size_t p = 0; p < parts.size(); ++p) {
      const InputStatistics& s = *parts[p].stats;
      for (Eigen::Index c0 = 0; c0 < s.n_; c0 += detail::kStatsBlock) {
        const Eigen::Index w = std::min(detail::kStatsBlock, s.n_ - c0);
        const double depth = s.mode_ == StatsMode::full ? static_cast<double>(s.n_ - c0) : 1.0;
        tasks.push_back({p, c0, w, depth * static_cast<double>(w) * static_cast<double>(parts[p].rows)});
      }
    }
    std::stable_sort(tasks.begin(), tasks.end(), [](const Task& a, const Task& b) { return a.cost > b.cost; });
    const std::int64_t nt = static_cast<std::int64_t>(tasks.size());
    detail::parallel_for(nt, threads, [&](std::int64_t i) {
      const Task& t = tasks[static_cast<std::size_t>(i % 2 == 0 ? i / 2 : nt - 1 - i / 2)];
      InputStatistics& s = *parts[t.part].stats;
      const auto X = parts[t.part].X->topRows(parts[t.part].rows);
      if (s.mode_ == StatsMode::full)
        s.sum_.block(t.c0, t.c0, s.n_ - t.c0, t.w).noalias() +=
            X.rightCols(s.n_ - t.c0).transpose() * X.middleCols(t.c0, t.w);
      else
        s.diag_.segment(t.c0, t.w) += X.middleCols(t.c0, t.w).colwise().squaredNorm().transpose();
    });
  }

  Eigen::Index n_;
  StatsMode mode_;
  std::int64_t count_ = 0;
  Eigen::MatrixXd sum_;   // full: sum of x x^T, lower triangle
  Eigen::VectorXd diag_;  // diagonal: sum of x_j^2
};

namespace detail {

// Adds samples already widened to double to several statistics in one
// parallel pass over all their column blocks: the sums equal separate add()
// calls of the same samples, bit for bit, for any thread count, but inputs of
// different widths share the threads (one add() of a narrow input has fewer
// blocks than threads). Every part is checked before any sum changes.
template <class Parts>
void add_together(const Parts& parts, int threads) {
  for (const WidenedSamples& p : parts) {
    require(p.stats && p.X && p.rows >= 1 && p.rows <= p.X->rows() && p.X->cols() == p.stats->features(),
            Errc::invalid_argument, "InputStatistics: samples do not fit the statistics");
    const auto X = p.X->topRows(p.rows);
    // Below 1e100 a square is under 1e200 (add()'s bound); NaN fails the comparison too.
    if (!(X.array().abs() <= 1e100).all()) {
      require(X.allFinite(), Errc::non_finite, "InputStatistics::add: the batch contains NaN or Inf");
      throw Error(Errc::invalid_argument, "InputStatistics::add: a sample exceeds 1e100 in magnitude");
    }
  }
  EigenSerialScope serial;
  InputStatistics::accumulate(parts, threads);
  for (const WidenedSamples& p : parts) p.stats->count_ += static_cast<std::int64_t>(p.rows);
}

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

// The accumulation is a template only so that a unit that does not add
// samples does not instantiate its GEMM (Eigen's products, in double), which
// it would for an inline function's body whether called or not.
#ifdef LOFTQ_INSTANCES
namespace loftq {
LOFTQ_INSTANCE_DOUBLE void InputStatistics::accumulate<std::vector<detail::WidenedSamples>>(
    const std::vector<detail::WidenedSamples>&, int);
namespace detail {
LOFTQ_INSTANCE_DOUBLE void add_together<std::vector<WidenedSamples>>(const std::vector<WidenedSamples>&, int);
}  // namespace detail
}  // namespace loftq
#endif
