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

#include <Eigen/Core>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <string>

#include "detail/alternation.hpp"
#include "detail/instances.hpp"
#include "detail/matrix_view.hpp"
#include "detail/output_metric.hpp"
#include "error.hpp"
#include "initialize.hpp"  // the data-free overload, which the data-aware one extends
#include "input_statistics.hpp"
#include "options.hpp"
#include "quantizer.hpp"
#include "threads.hpp"
#include "workspace.hpp"

namespace loftq {

struct DataAwareOptions {
  // lambda in H + lambda * mean(diag H) * I. Measured on held-out inputs from
  // the same distribution (realistic 1024^2 weights, calibration inputs with
  // 1% outlier channels, rank 16, T = 5, zero start and absmax scales, full
  // statistics), held-out output error for lambda = 0.01 / 0.1 / 0.3 / 1:
  //   NF2, 2048 samples:                0.1815 / 0.1789 / 0.1789 / 0.1886
  //   NF4, 2048 samples:                0.0437 / 0.0436 / 0.0437 / 0.0461
  //   NF2, 128 samples (H rank-deficient): 0.1938 / 0.1918 / 0.1918 / 0.2004
  // 0.1 is at the minimum in all three. Used with full statistics.
  double damping = 0.1;
  // The same lambda with diagonal statistics (a llama.cpp imatrix). Without
  // the off-diagonal terms diag(H) is a cruder model of the outputs, and
  // pulling it further towards the weight error pays after fine-tuning:
  // lm_finetune (stories260K, rank 8, seed 0, 2 and 4 bits) ends lower with
  // lambda = 1 than with 0.1 on three of the four width-task pairs, where at
  // 0.1 the diagonal rows end above data-free LoftQ at 2 bits (the commands
  // and figures are in docs/results.md, "Data-aware LoftQ through the tool").
  double diagonal_damping = 1.0;

  // The lambda used with statistics of this mode.
  double damping_for(StatsMode mode) const { return mode == StatsMode::full ? damping : diagonal_damping; }
};

namespace detail {

// Re-splits A B^T as LoftQ's data-free result does: A = U sqrt(S), B = V sqrt(S)
// with U S V^T the SVD of A B^T, through QR factors of A and B (O((m + n) r^2),
// in double). The metric's fit balances A against F^T B instead, which leaves
// lora_A with large entries along input directions the calibration set barely
// excites; fine-tuning then starts from a skewed pair (LoRA's gradient flow
// conserves A^T A - B^T B). With full statistics lm_finetune ends lower with
// this split in 8 of its 12 width-rank-task cells and within 0.002 of the
// metric's split in the others (docs/results.md, "Data-aware LoftQ through
// the tool").
template <class Matrix>
void weight_balanced_factors(Matrix& A, Matrix& B) {
  using Scalar = typename Matrix::Scalar;
  const Eigen::Index r = A.cols();
  const Eigen::HouseholderQR<Eigen::MatrixXd> qa(A.template cast<double>()), qb(B.template cast<double>());
  const Eigen::MatrixXd Ra = qa.matrixQR().topRows(r).template triangularView<Eigen::Upper>();
  const Eigen::MatrixXd Rb = qb.matrixQR().topRows(r).template triangularView<Eigen::Upper>();
  const Eigen::JacobiSVD<Eigen::MatrixXd> svd(Ra * Rb.transpose(), Eigen::ComputeFullU | Eigen::ComputeFullV);
  const Eigen::VectorXd sq = svd.singularValues().cwiseSqrt();
  const Eigen::MatrixXd Ua = qa.householderQ() * Eigen::MatrixXd::Identity(A.rows(), r);
  const Eigen::MatrixXd Ub = qb.householderQ() * Eigen::MatrixXd::Identity(B.rows(), r);
  A = (Ua * (svd.matrixU() * sq.asDiagonal())).template cast<Scalar>();
  B = (Ub * (svd.matrixV() * sq.asDiagonal())).template cast<Scalar>();
}

// The data-aware alternation on a validated row-major m x n W; like the
// data-free initialize_rowmajor it depends only on the scalar type. ws: null,
// or the caller's workspace, which also holds the metric's m x n image.
template <class Scalar>
Result<Scalar> initialize_rowmajor(const Scalar* Wp, Eigen::Index m, Eigen::Index n, const QuantSpec& spec,
                                   const InputStatistics& stats, const Options& opt, const DataAwareOptions& da,
                                   Workspace<Scalar>* ws) {
  WorkspaceLease<Scalar> lease(ws);
  EigenSerialScope serial;
  // Both are checked, whichever the statistics use: a bad option is an error on any input.
  for (double lambda : {da.damping, da.diagonal_damping})
    require(std::isfinite(lambda) && lambda >= 0, Errc::invalid_argument,
            "data-aware initialize: damping must be finite and >= 0");
  OutputMetric<Scalar> metric(stats, da.damping_for(stats.mode()), opt.threads);
  struct ImageBack {  // on every way out, the image goes back to the workspace
    WorkspaceLease<Scalar>& lease;
    RowMatrix<Scalar>& image;
    ~ImageBack() { lease.give(std::move(image)); }
  } back{lease, metric.image()};
  lease.take(metric.image(), m, n);
  Result<Scalar> res = Alternation<Scalar, OutputMetric<Scalar>>(Wp, m, n, spec, opt, metric, lease).compute();
  weight_balanced_factors(res.A, res.B);
  return res;
}

// The public overloads' checks, then the alternation.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize_data_aware(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                                       const InputStatistics& stats, const Options& opt,
                                                       const DataAwareOptions& da,
                                                       Workspace<typename Derived::Scalar>* ws) {
  const Eigen::Index m = W_in.rows(), n = W_in.cols();
  RowMajorView<Derived> view(W_in);
  check_weights(W_in, view.data(), opt.threads, "data-aware initialize");
  check_options(opt, m, n);
  require(stats.features() == n, Errc::invalid_argument,
          "data-aware initialize: the statistics have " + std::to_string(stats.features()) + " features, but W has " +
              std::to_string(n) + " columns (in_features)");
  return initialize_rowmajor(view.data(), m, n, spec_of(quantizer), stats, opt, da, ws);
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
// keep_best, tolerance and the SVD start's fallback to the zero start use
// these errors; the other Options act as in the data-free loop. A and B are
// split as in the data-free Result: A = U sqrt(S), B = V sqrt(S) with U S V^T
// the SVD of A B^T (so A^T A = B^T B, diagonal, descending).
// Bit-identical for any Options::threads. With H = c I the result is the
// data-free initialize's: bit for bit when c is a power of two (then the
// scaled metric is exactly I), else up to rounding.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const InputStatistics& stats, const Options& opt = {},
                                            const DataAwareOptions& da = {}) {
  return detail::initialize_data_aware(W_in, quantizer, stats, opt, da,
                                       static_cast<Workspace<typename Derived::Scalar>*>(nullptr));
}

// The same, reusing the buffers of `ws` (workspace.hpp): the result is the
// same, bit for bit.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const InputStatistics& stats, const Options& opt,
                                            const DataAwareOptions& da, Workspace<typename Derived::Scalar>& ws) {
  return detail::initialize_data_aware(W_in, quantizer, stats, opt, da, &ws);
}

// The squared output error of an approximation W' of W over the inputs the
// statistics describe, tr(E H E^T) with E = W - W' and H = stats.gram()
// (diagonal statistics: H := diag(H)); i.e. ||X (W - W')^T||_F^2 / N over the
// N calibration samples X. Computed in double with Eigen held serial: the same
// bits for any thread count. Full statistics cost 2 m n^2 multiply-adds.
template <class DW, class DA>
double output_sq_error(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DA>& approx,
                       const InputStatistics& stats) {
  detail::require(W.rows() == approx.rows() && W.cols() == approx.cols(), Errc::invalid_argument,
                  "output_error: W and its approximation differ in shape");
  detail::require(stats.features() == W.cols(), Errc::invalid_argument,
                  "output_error: the statistics have " + std::to_string(stats.features()) + " features, but W has " +
                      std::to_string(W.cols()) + " columns (in_features)");
  EigenSerialScope serial;
  const Eigen::MatrixXd E = W.template cast<double>() - approx.template cast<double>();
  if (stats.mode() == StatsMode::full) return std::max(0.0, (E * stats.gram()).cwiseProduct(E).sum());
  const Eigen::RowVectorXd d = stats.diagonal().transpose();
  return (E.array().square().rowwise() * d.array()).sum();
}

// The relative output error sqrt(tr(E H E^T) / tr(W H W^T)), the measure
// data-aware initialize reports in Result::history, so that methods computed
// without the statistics (QLoRA, data-free LoftQ) can be compared with it.
template <class DW, class DA>
double output_error(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DA>& approx, const InputStatistics& stats) {
  const double num = output_sq_error(W, approx, stats);
  const double den = output_sq_error(W, W.Zero(W.rows(), W.cols()), stats);
  detail::require(den > 0, Errc::invalid_argument, "output_error: W has no output on the calibration inputs");
  return std::sqrt(num / den);
}

}  // namespace loftq

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT Result<float> initialize_rowmajor<float>(const float*, Eigen::Index, Eigen::Index,
                                                              const QuantSpec&, const InputStatistics&, const Options&,
                                                              const DataAwareOptions&, Workspace<float>*);
LOFTQ_INSTANCE_DOUBLE Result<double> initialize_rowmajor<double>(const double*, Eigen::Index, Eigen::Index,
                                                                 const QuantSpec&, const InputStatistics&,
                                                                 const Options&, const DataAwareOptions&,
                                                                 Workspace<double>*);
}  // namespace detail
}  // namespace loftq
#endif
