#pragma once
// Test helpers: seeded matrices, the stories260K weights, and the check that
// two LoftQ results are the same bit for bit.

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <loftq/error.hpp>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/llama2c.hpp"

namespace loftq_test {

inline Eigen::MatrixXf gaussian(Eigen::Index m, Eigen::Index n, std::uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Eigen::MatrixXf W(m, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < m; ++i) {
      // Box-Muller by hand: std::normal_distribution differs across libraries.
      const double a = u(g) + 1e-300, b = u(g);
      W(i, j) = static_cast<float>(sd * std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b));
    }
  return W;
}

// A matrix with a decaying spectrum plus noise, the regime where a low-rank
// correction can help.
inline Eigen::MatrixXf structured(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  const Eigen::Index k = std::min<Eigen::Index>(32, std::min(m, n));
  Eigen::MatrixXf U = gaussian(m, k, seed), V = gaussian(n, k, seed + 1);
  for (Eigen::Index i = 0; i < k; ++i) U.col(i) *= 1.0f / static_cast<float>(1 + i);
  return (U * V.transpose()) / std::sqrt(static_cast<float>(n)) + 0.3f * gaussian(m, n, seed + 2);
}

inline std::string shared_data(const char* file) { return std::string(LOFTQ_SHARED_DATA_DIR) + "/" + file; }

// The 36 weight matrices of llama2.c's stories260K, read by the project's one
// llama2.c reader (common/llama2c.hpp documents the format). Empty when the
// file is absent.
inline std::vector<lm::NamedMatrix> stories260k() {
  const std::string path = shared_data("stories260K.bin");
  if (!std::ifstream(path, std::ios::binary)) return {};
  return lm::named_matrices(lm::read_checkpoint(path));
}

// Samples with correlated channels (a shared factor) and a few loud ones, so
// that the Gram matrix H is far from diagonal and far from a multiple of I.
inline Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> correlated_samples(Eigen::Index N,
                                                                                                Eigen::Index n,
                                                                                                std::uint64_t seed) {
  const Eigen::MatrixXf G = gaussian(N, n, seed), f = gaussian(N, 1, seed + 1);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> X =
      G + f * Eigen::RowVectorXf::LinSpaced(n, -1.0f, 2.0f);
  for (Eigen::Index j = 0; j < n; j += 7) X.col(j) *= 6.0f;
  return X;
}

// The loftq::Errc that f() throws, or Errc(0) when it throws nothing.
template <class F>
loftq::Errc code_of(F&& f) {
  try {
    f();
  } catch (const loftq::Error& e) {
    return e.code();
  }
  return static_cast<loftq::Errc>(0);
}

// Two loftq::Result<S> (or any type with the same members) are identical:
// every output bit, the history and the baseline. Reported as bools, so a
// failure does not print whole matrices.
template <class R>
void check_identical(const R& a, const R& b) {
  CHECK((a.Q.array() == b.Q.array()).all());
  CHECK((a.A.array() == b.A.array()).all());
  CHECK((a.B.array() == b.B.array()).all());
  CHECK(a.history == b.history);
  CHECK(a.best_iteration == b.best_iteration);
  CHECK(a.qlora_error == b.qlora_error);
  CHECK(a.packed.codes == b.packed.codes);
  CHECK(a.packed.scales == b.packed.scales);
}

}  // namespace loftq_test
