#pragma once
// Double quantization of block scales (QLoRA, Dettmers et al. 2023, sec. 3):
// the fp32 absmax scales of a PackedMatrix are themselves quantized to 8 bits
// in blocks of 256 after subtracting their mean, which takes the scale
// overhead at block size 64 from 32/64 = 0.5 to (8 + 32/256)/64 = 0.127 bits
// per weight (NF4: 4.5 -> 4.127, NF2: 2.5 -> 2.127, plus 32 bits per matrix
// for the mean).
//
// Second-level grid: symmetric int8 absmax (levels mean + q * step,
// q in -127..127, step = max |s - mean| / 127 per block of 256 scales), not
// QLoRA's FP8. It bounds every scale's error by half a step, and recovery is
// exact in fp32 for every reader (packed.hpp, "Double-quantized scales"). The
// payload struct, DoubleQuantScales, lives in packed.hpp because PackedMatrix
// carries it and validate() checks it.
//
// Its effect on the error (under 1% at NF2 and NF4) is
// measured in docs/results.md, "Double-quantized scales". The grid matters
// more than the bit count: with outlier channels the block scales are
// skewed, so a linear grid around the mean is coarse for the many small
// ones. A log grid would fit them better but needs a reader-independent exp
// (or a stored table) to keep recovery bit-exact, so it is left as a
// follow-up.
//
// The factors should absorb the rounding of the scales: after double
// quantization, one more SVD of W - Q_dq (the second half of a LoftQ step with
// Q fixed) gives the best rank-r correction for the Q actually stored.
// double_quantize(W, result, opt) does that.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "detail/parallel.hpp"
#include "error.hpp"
#include "initialize.hpp"
#include "packed.hpp"
#include "quantizer.hpp"
#include "svd.hpp"

namespace loftq {

constexpr Eigen::Index kDoubleQuantBlock = 256;  // QLoRA's second-level block size

namespace detail {

// The smallest value >= x > 0 with at most 17 significant bits, no smaller
// than the least normal float: then 127 * step and q * step (|q| <= 127, 7 bits)
// fit the 24-bit fp32 significand exactly.
inline float dq_step(double x) {
  int e = 0;
  const double m = std::frexp(x, &e);  // x = m * 2^e, m in [0.5, 1)
  const double r = std::ldexp(std::ceil(std::ldexp(m, 17)), e - 17);
  return static_cast<float>(std::max(r, static_cast<double>(std::numeric_limits<float>::min())));
}

}  // namespace detail

// Quantizes non-negative fp32 scales: subtract their mean, then symmetric int8
// absmax in blocks of `block` scales. Every recovered scale is within half a
// step (absmax[k] / 127) of the original, plus the rounding of one fp32 add;
// except that a positive scale is never recovered as <= 0 (that would flip or
// zero its block), so a scale below half a step may be rounded up instead,
// by less than one step.
inline DoubleQuantScales double_quantize_scales(const std::vector<float>& scales,
                                                Eigen::Index block = kDoubleQuantBlock) {
  detail::require(!scales.empty(), Errc::invalid_argument, "double_quantize_scales: no scales");
  detail::require(block >= 1, Errc::invalid_argument,
                  "double_quantize_scales: block size must be >= 1 (got " + std::to_string(block) + ")");
  double sum = 0;
  for (std::size_t i = 0; i < scales.size(); ++i) {
    const float s = scales[i];
    if (!std::isfinite(s))
      detail::fail(Errc::non_finite, "double_quantize_scales: scale " + std::to_string(i) + " is not finite");
    if (s < 0.0f)
      detail::fail(Errc::invalid_argument, "double_quantize_scales: scale " + std::to_string(i) + " is negative");
    sum += s;
  }
  DoubleQuantScales D;
  D.block_size = block;
  D.mean = static_cast<float>(sum / static_cast<double>(scales.size()));
  D.codes.resize(scales.size());
  D.absmax.resize(D.num_blocks());
  const std::size_t bs = static_cast<std::size_t>(block);
  for (std::size_t k = 0; k < D.absmax.size(); ++k) {
    const std::size_t i0 = k * bs, i1 = std::min(scales.size(), i0 + bs);
    double amax = 0;
    for (std::size_t i = i0; i < i1; ++i)
      amax = std::max(amax, std::abs(static_cast<double>(scales[i]) - static_cast<double>(D.mean)));
    if (amax == 0) {  // every scale equals the mean
      D.absmax[k] = 0.0f;
      std::fill(D.codes.begin() + static_cast<std::ptrdiff_t>(i0), D.codes.begin() + static_cast<std::ptrdiff_t>(i1),
                std::uint8_t{128});
      continue;
    }
    const float step = detail::dq_step(amax / 127.0);
    const float a = 127.0f * step;
    detail::require(std::isfinite(a), Errc::invalid_argument, "double_quantize_scales: scales beyond the fp32 range");
    D.absmax[k] = a;
    for (std::size_t i = i0; i < i1; ++i) {
      const double dev = static_cast<double>(scales[i]) - static_cast<double>(D.mean);
      int q = static_cast<int>(std::lround(dev / static_cast<double>(step)));
      q = std::max(-127, std::min(127, q));
      auto decoded = [&](int c) { return D.mean + static_cast<float>(c) * step; };
      while (q < 127 && (decoded(q) < 0.0f || (scales[i] > 0.0f && decoded(q) <= 0.0f))) ++q;
      D.codes[i] = static_cast<std::uint8_t>(q + 128);
    }
  }
  return D;
}

// The scales a payload stands for (the formula in packed.hpp).
inline std::vector<float> recover_scales(const DoubleQuantScales& D) {
  detail::require(D.block_size >= 1 && D.absmax.size() == D.num_blocks(), Errc::invalid_argument,
                  "recover_scales: expected one absmax per " + std::to_string(D.block_size) + " codes");
  std::vector<float> s(D.codes.size());
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = D.scale(i);
  return s;
}

// P with double-quantized scales: `scales` replaced by the recovered values,
// the payload in scale_dq. The codes are kept, and they stay consistent with
// the new scales: a nonzero absmax block still holds a +-1 level, so the
// absmax of its dequantized values is the recovered scale and every element
// divides back to its own level; requantizing dequantize(P) gives P's codes.
inline PackedMatrix double_quantize(PackedMatrix P, Eigen::Index block = kDoubleQuantBlock) {
  detail::validate(P);
  detail::require(!P.double_quantized(), Errc::invalid_argument,
                  "double_quantize: the scales are already double-quantized");
  detail::require(P.scale_mode == ScaleMode::absmax, Errc::unsupported,
                  "double_quantize: only absmax scales can be double-quantized (min/max blocks carry two values)");
  P.scale_dq = double_quantize_scales(P.scales, block);
  P.scales = recover_scales(P.scale_dq);
  return P;
}

// What double quantization did to a LoftQ result (relative errors
// ||W - Q - A B^T|| / ||W||).
struct DoubleQuantEffect {
  double error_before = 0;   // the LoftQ result as it was
  double error_rounded = 0;  // with the double-quantized scales, the old factors
  double error_after = 0;    // what the result now holds (after the refit, if any)
  double bits_per_weight_before = 0, bits_per_weight_after = 0;
  bool refit_kept = false;  // the refit factors replaced the old ones
};

namespace detail {

// The part of a double quantization that does not depend on the scheme:
// `requantize` replaces r.packed's scales by the ones a reader recovers, then
// r.Q is dequantized again and, with `refit`, A, B are refit to W - Q_dq once
// (see double_quantize below).
template <class Derived, class Requantize>
DoubleQuantEffect replace_scales_and_refit(const Eigen::MatrixBase<Derived>& W_in, Result<typename Derived::Scalar>& r,
                                           const Options& opt, bool refit, const char* who, Requantize&& requantize) {
  using Scalar = typename Derived::Scalar;
  using Matrix = typename Result<Scalar>::Matrix;
  const Eigen::Index m = W_in.rows(), n = W_in.cols(), rank = r.A.cols();
  require(r.Q.rows() == m && r.Q.cols() == n && r.packed.rows == m && r.packed.cols == n, Errc::invalid_argument,
          std::string(who) + ": W is " + std::to_string(m) + "x" + std::to_string(n) + " but the result is for a " +
              std::to_string(r.Q.rows()) + "x" + std::to_string(r.Q.cols()) + " matrix");
  require(rank >= 1 && r.A.rows() == m && r.B.rows() == n && r.B.cols() == rank, Errc::invalid_argument,
          std::string(who) + ": the result has no consistent factors");
  const int threads = opt.threads;
  RowMajorView<Derived> view(W_in);
  check_weights(W_in, view.data(), threads, who);
  EigenSerialScope serial;
  const Scalar* Wp = view.data();
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  const double w2 = squared_norm(Wp, N, threads);

  DoubleQuantEffect eff;
  eff.error_before = r.error();
  eff.bits_per_weight_before = r.packed.bits_per_weight();
  requantize(r.packed);
  eff.bits_per_weight_after = r.packed.bits_per_weight();
  dequantize_flat(r.packed, r.Q.data(), threads);

  // R = W - Q_dq, the residual the factors approximate.
  RowMatrix<Scalar> R(m, n);
  {
    const Scalar* Q = r.Q.data();
    Scalar* Rp = R.data();
    parallel_for((N + 65535) / 65536, threads, [&](std::int64_t c) {
      const std::int64_t b = c * 65536, e = std::min(N, b + 65536);
      for (std::int64_t i = b; i < e; ++i) Rp[i] = Wp[i] - Q[i];
    });
  }
  auto residual_sq = [&](const Matrix& A, const Matrix& B) { return residual_error(R, A, B, threads); };
  const double rounded_sq = residual_sq(r.A, r.B);
  eff.error_rounded = relative(rounded_sq, w2);
  eff.error_after = eff.error_rounded;
  if (refit) {
    SVDOptions so = opt.svd;
    so.threads = threads;
    TruncatedSVD<Matrix> svd;
    if (opt.svd.method == SVDMethod::randomized && opt.warm_start) {
      so.power_iterations = warm_power_iterations(opt, m, n);
      svd.compute(R, rank, so, r.B);
    } else {
      svd.compute(R, rank, so);
    }
    require(svd.info() == Eigen::Success, Errc::non_finite, std::string(who) + ": the SVD produced non-finite values");
    Matrix A, B;
    balanced_factors(svd, A, B);
    const double refit_sq = residual_sq(A, B);
    if (refit_sq < rounded_sq) {
      r.A = std::move(A);
      r.B = std::move(B);
      eff.error_after = relative(refit_sq, w2);
      eff.refit_kept = true;
    }
  }
  r.history.push_back(eff.error_after);
  r.best_iteration = static_cast<int>(r.history.size());
  return eff;
}

}  // namespace detail

// Double-quantizes r.packed and updates r.Q to match; with `refit`, then
// recomputes A, B = SVD_r(W - Q_dq) once (randomized SVDs warm-start from the
// old B), keeping the refit factors only if they lower the error, which an
// exact SVD always does (Eckart-Young). r.history gains one entry, the new
// error, and best_iteration points at it, so r.error() stays the error of
// what r holds. W must be the matrix r was computed from; `opt` gives the SVD
// settings and threads (rank is r's).
template <class Derived>
DoubleQuantEffect double_quantize(const Eigen::MatrixBase<Derived>& W_in, Result<typename Derived::Scalar>& r,
                                  const Options& opt = {}, Eigen::Index block = kDoubleQuantBlock, bool refit = true) {
  return detail::replace_scales_and_refit(W_in, r, opt, refit, "double_quantize",
                                          [&](PackedMatrix& P) { P = double_quantize(std::move(P), block); });
}

}  // namespace loftq
