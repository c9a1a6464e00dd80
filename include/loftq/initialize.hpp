#pragma once
// loftq::initialize: the LoftQ alternation, and the QLoRA-style baseline.
//
//   A_0 = B_0 = 0
//   for t = 1..T:  Q_t = q(W - A_{t-1} B_{t-1}^T);  A_t, B_t = SVD_r(W - Q_t)
//
// Buffers: besides W the loop holds one m x n residual R and three packed
// code sets (current, next and best), so a T-step run costs about 2.5x the
// input in memory at 4 bits (3.5x when W has to be copied into row-major
// order). The returned Q reuses R. A Workspace (workspace.hpp) keeps these
// buffers from one call to the next.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>

#include "detail/alternation.hpp"
#include "detail/instances.hpp"
#include "detail/matrix_view.hpp"
#include "detail/reduce.hpp"
#include "detail/residual.hpp"
#include "detail/rng.hpp"
#include "error.hpp"
#include "options.hpp"
#include "packed.hpp"
#include "quantizer.hpp"
#include "workspace.hpp"

namespace loftq {

namespace detail {

// The public overloads' checks, then the alternation.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize_data_free(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                                      const Options& opt, Workspace<typename Derived::Scalar>* ws) {
  RowMajorView<Derived> view(W_in);
  check_weights(W_in, view.data(), opt.threads, "initialize");
  check_options(opt, W_in.rows(), W_in.cols());
  return initialize_rowmajor(view.data(), W_in.rows(), W_in.cols(), spec_of(quantizer), opt, ws);
}

}  // namespace detail

// PEFT's factors: lora_A (r x n), lora_B (m x r), with
// (lora_alpha / r) * lora_B * lora_A == A * B^T.
template <class Scalar>
struct PeftLora {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> lora_A, lora_B;
  double scaling = 1.0;  // lora_alpha / r, what PEFT multiplies by
};

// LoftQ on W (m x n: any dense float or double expression, any layout) with
// the given quantizer: W ~ Q + A B^T. Bit-identical for any Options::threads.
// The loop itself is detail::Alternation (detail/alternation.hpp).
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const Options& opt = {}) {
  return detail::initialize_data_free(W_in, quantizer, opt, static_cast<Workspace<typename Derived::Scalar>*>(nullptr));
}

// The same, reusing the buffers of `ws` (workspace.hpp) from call to call, so
// a sequence of matrices does not fault in fresh pages for each: the result
// is the same, bit for bit.
template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const Options& opt, Workspace<typename Derived::Scalar>& ws) {
  return detail::initialize_data_free(W_in, quantizer, opt, &ws);
}

// The QLoRA-style baseline: Q = q(W), A = 0 and B drawn like PEFT's default
// lora_A init (Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(n), 1/sqrt(n))),
// so A B^T = 0 and training starts from Q.
template <class Derived, class Q>
Result<typename Derived::Scalar> qlora_init(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const Options& opt = {}) {
  using Scalar = typename Derived::Scalar;
  const Eigen::Index m = W_in.rows(), n = W_in.cols(), r = opt.rank;
  detail::RowMajorView<Derived> view(W_in);
  detail::check_weights(W_in, view.data(), opt.threads, "qlora_init");
  detail::check_options(opt, m, n);
  const detail::QuantSpec spec = detail::spec_of(quantizer);
  const std::int64_t N = static_cast<std::int64_t>(m) * n;

  Result<Scalar> res;
  res.packed = detail::make_packed(m, n, spec);
  detail::resize_large(res.Q, m, n);
  detail::quantize_flat(view.data(), res.Q.data(), &res.packed, N, spec, opt.threads);
  const double w2 = detail::squared_norm(view.data(), N, opt.threads);
  res.qlora_error = detail::relative(detail::quantization_squared_error(view.data(), N, spec, opt.threads), w2);
  res.history = {res.qlora_error};
  res.best_iteration = 1;
  res.A = Result<Scalar>::Matrix::Zero(m, r);
  res.B.resize(n, r);
  detail::SplitMix64 rng(opt.svd.seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(n));
  // Filled in lora_A's (r x n, row-major) element order, as torch does.
  for (Eigen::Index i = 0; i < r; ++i)
    for (Eigen::Index j = 0; j < n; ++j) res.B(j, i) = static_cast<Scalar>((2 * rng.uniform() - 1) * bound);
  return res;
}

// Split A B^T into PEFT's lora_A / lora_B so that PEFT's forward pass,
// which multiplies by lora_alpha / r, reproduces it exactly in exact
// arithmetic. The factor sqrt(r / lora_alpha) goes to both sides, keeping
// LoftQ's even sqrt(S) balance. PEFT's own LoftQ skips this (peft #1982).
template <class Scalar>
PeftLora<Scalar> to_peft(const Result<Scalar>& res, double lora_alpha) {
  detail::require(std::isfinite(lora_alpha) && lora_alpha > 0, Errc::invalid_argument,
                  "lora_alpha must be positive and finite");
  const double r = static_cast<double>(res.A.cols());
  detail::require(r >= 1, Errc::invalid_argument, "to_peft: the result has no factors");
  PeftLora<Scalar> p;
  p.scaling = lora_alpha / r;
  const Scalar c = static_cast<Scalar>(std::sqrt(r / lora_alpha));
  p.lora_A = res.B.transpose() * c;
  p.lora_B = res.A * c;
  return p;
}

}  // namespace loftq
