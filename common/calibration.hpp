#pragma once
// Synthetic calibration inputs for data-aware LoftQ (bench_data_aware and
// tests/test_data_aware.cpp). Support code for the project's own programs, not
// part of the loftq API: namespace loftq_common, may change at any time.
//
//   CalibrationSource src(n, seed);        one layer's input distribution
//   RowMatrixXf X = src.sample(N, s);      N samples (rows) x n channels
//
// The distribution imitates transformer activations at a linear layer's
// input: channels are correlated through a few shared latent factors, and a
// small share of channels ("outlier channels", as in LLM.int8() and
// SmoothQuant) has a standard deviation 10-30x the rest. A source fixes the
// distribution (factor loadings, outlier channels and their scales); sample()
// draws fresh rows from it, so a second seed gives a held-out set from the
// same layer. Deterministic for any thread count, with the same fixed engine
// and Box-Muller as matrices.hpp.

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "common/matrices.hpp"

namespace loftq_common {

struct CalibrationSpec {
  Index factors = 8;                              // shared latent factors (channel correlation)
  double factor_energy = 0.5;                     // share of a typical channel's variance carried by the factors
  double outlier_fraction = 0.01;                 // share of channels with a large standard deviation...
  double outlier_min = 10.0, outlier_max = 30.0;  // ...by a factor drawn uniformly from this range
};

class CalibrationSource {
 public:
  CalibrationSource(Index n, std::uint64_t seed, const CalibrationSpec& spec = {})
      : n_(n), spec_(spec), scale_(Eigen::VectorXf::Ones(n)) {
    const Index k = std::max<Index>(1, spec.factors);
    loadings_.resize(k, n);
    detail::Normal g(detail::stream_seed(seed, 0xca11b0u));
    // N(0, 1/k) loadings: each channel's factor part has unit variance on average.
    const double sk = std::sqrt(spec.factor_energy / static_cast<double>(k));
    for (Index i = 0; i < k; ++i)
      for (Index j = 0; j < n; ++j) loadings_(i, j) = static_cast<float>(g() * sk);
    std::mt19937_64 pick(detail::stream_seed(seed, 0x07a11e75u));
    detail::outlier_channels(n, spec.outlier_fraction, spec.outlier_min, spec.outlier_max, pick,
                             [&](Index j, float factor) {
                               scale_(j) = factor;
                               outliers_.push_back(j);
                             });
    std::sort(outliers_.begin(), outliers_.end());
  }

  // N x n samples: x = scale .* (f L + sqrt(1 - factor_energy) g), f ~ N(0, I_k), g ~ N(0, I_n).
  RowMatrixXf sample(Index N, std::uint64_t sample_seed) const {
    RowMatrixXf X(N, n_);
    if (N <= 0 || n_ <= 0) return X;
    loftq::EigenSerialScope serial;
    const Index k = loadings_.rows();
    const float noise = static_cast<float>(std::sqrt(std::max(0.0, 1.0 - spec_.factor_energy)));
    constexpr Index kRows = 256;
    detail::for_chunks((N + kRows - 1) / kRows, [&](Index c) {
      const Index r0 = c * kRows, len = std::min(kRows, N - r0);
      detail::Normal g(detail::stream_seed(sample_seed, 0x5a3b1e00u + static_cast<std::uint64_t>(c)));
      Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> F(len, k);
      for (Index i = 0; i < len; ++i)
        for (Index j = 0; j < k; ++j) F(i, j) = static_cast<float>(g());
      X.middleRows(r0, len).noalias() = F * loadings_;
      for (Index i = r0; i < r0 + len; ++i)
        for (Index j = 0; j < n_; ++j) X(i, j) = scale_(j) * (X(i, j) + noise * static_cast<float>(g()));
    });
    return X;
  }

  Index features() const { return n_; }
  const std::vector<Index>& outlier_channels() const { return outliers_; }

 private:
  Index n_;
  CalibrationSpec spec_;
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> loadings_;  // k x n
  Eigen::VectorXf scale_;
  std::vector<Index> outliers_;
};

}  // namespace loftq_common
