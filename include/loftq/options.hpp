#pragma once
// The settings and the result of loftq::initialize, shared by the data-free
// (initialize.hpp) and the data-aware (data_aware.hpp) overloads.

#include <atomic>
#include <Eigen/Core>
#include <cstddef>
#include <vector>

#include "packed.hpp"
#include "quantizer.hpp"
#include "svd.hpp"

namespace loftq {

enum class Start {
  zero,  // LoftQ's start: A = B = 0, so the first Q is q(W)
  svd,   // start from the top-r SVD of W (QPiSSA): the first Q is q(W - SVD_r(W)); with
         // keep_best, falls back to the zero start if the result is worse than q(W)
};

struct Options {
  Eigen::Index rank = 16;
  int iterations = 5;
  SVDOptions svd;          // method, oversampling, power iterations, seed
  bool warm_start = true;  // seed each randomized SVD with the previous right basis
  // Power iterations once warm-started; -1: automatic, 0 when both sides of W
  // are >= kWarmNoPowerFrom, else 1 (svd.hpp has the measurements).
  int warm_power_iterations = -1;
  // Extra sketch columns once warm-started (svd.oversampling applies to cold
  // solves). The warm basis already carries the subspace, and 4 instead of 8
  // saves a sixth of each warm SVD's GEMM work at rank 16.
  Eigen::Index warm_oversampling = 4;
  // Power iterations for Start::svd's SVD of W; -1: svd.power_iterations.
  int start_power_iterations = -1;
  // The defaults go beyond the reference LoftQ (absmax, zero start, last
  // iterate), chosen by what a fine-tuned model gets rather than by the
  // matrix error; measurements in docs/results.md. Set scale_search = false,
  // start = Start::zero and keep_best = false for the reference's results.
  Start start = Start::svd;
  bool scale_search = true;       // per-block squared-error-optimal scales <= absmax (same storage)
  bool warm_scale_search = true;  // after the first iteration, search each block's scale from its last choice
  bool keep_best = true;          // return the iterate with the lowest error; false: the last (reference)
  double tolerance = 0.0;         // stop once the relative improvement of the error falls below this; 0: never
  int threads = 0;                // 0: OpenMP's default; results do not depend on it
  // Cooperative cancellation: when *cancel becomes true (from any thread, or
  // a signal handler: a lock-free atomic store is async-signal-safe), the
  // call throws Error(Errc::cancelled) at its next step boundary, a sweep or
  // an SVD apart (about 0.1-0.3 s at 4096x4096 with the randomized SVD; an
  // exact SVD is one step). nullptr: never. The flag is only read.
  const std::atomic<bool>* cancel = nullptr;
};

template <class Scalar>
struct Result {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  RowMatrix<Scalar> Q;          // dequantized, m x n
  Matrix A;                     // m x r, U_r sqrt(S_r)
  Matrix B;                     // n x r, V_r sqrt(S_r); W ~ Q + A B^T
  PackedMatrix packed;          // codes and scales of Q
  std::vector<double> history;  // ||W - Q_t - A_t B_t^T|| / ||W|| after each iteration t
  int best_iteration = 0;       // 1-based iteration whose iterate is returned
  double qlora_error = 0.0;     // ||W - q(W)|| / ||W||: the QLoRA-style baseline
  double error() const { return history.empty() ? 0.0 : history[static_cast<std::size_t>(best_iteration - 1)]; }
  Eigen::Index rank() const { return A.cols(); }
};

}  // namespace loftq
