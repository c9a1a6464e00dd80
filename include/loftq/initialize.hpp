#pragma once
// loftq::initialize: the LoftQ alternation, and the QLoRA-style baseline.
//
//   A_0 = B_0 = 0
//   for t = 1..T:  Q_t = q(W - A_{t-1} B_{t-1}^T);  A_t, B_t = SVD_r(W - Q_t)
//
// Buffers: besides W the loop holds one m x n residual R and three packed
// code sets (current, next and best), so a T-step run costs about 2.5x the
// input in memory at 4 bits (3.5x when W has to be copied into row-major
// order). The returned Q reuses R.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "detail/instances.hpp"
#include "detail/parallel.hpp"
#include "detail/rng.hpp"
#include "error.hpp"
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
  SVDOptions svd;                 // method, oversampling, power iterations, seed
  bool warm_start = true;         // seed each randomized SVD with the previous right basis
  // Power iterations once warm-started; -1: automatic, 0 when both sides of W
  // are >= kWarmNoPowerFrom, else 1 (svd.hpp has the measurements).
  int warm_power_iterations = -1;
  // Extra sketch columns once warm-started (svd.oversampling applies to cold
  // solves). The warm basis already carries the subspace: on realistic
  // 256^2-2048^2 matrices, r16 T5, NF2/NF4, 4 instead of 8 moved the final
  // error by at most 0.05% and saves a sixth of each warm SVD's GEMM work.
  Eigen::Index warm_oversampling = 4;
  // Power iterations for Start::svd's SVD of W; -1: svd.power_iterations.
  int start_power_iterations = -1;
  // The defaults go beyond the reference LoftQ (absmax, zero start, last
  // iterate): measured on realistic matrices and stories260K, NF2 error is
  // 0.55-0.83x and NF4 0.62-0.73x the reference's (bench/README.md). They are
  // chosen by what the fine-tuned model gets, not by that error: LoRA
  // fine-tuned on stories260K (examples/lm_finetune) ends closer to the
  // full-precision model from these defaults than from the reference or
  // QLoRA at 2, 3 and 4 bits, so they are the same for every bit width. Set
  // scale_search = false, start = Start::zero and keep_best = false for
  // the reference's results.
  Start start = Start::svd;
  bool scale_search = true;       // per-block squared-error-optimal scales <= absmax (same storage)
  bool warm_scale_search = true;  // after the first iteration, search each block's scale from its last choice
  bool keep_best = true;   // return the iterate with the lowest error; false: the last (reference)
  double tolerance = 0.0;  // stop once the relative improvement of the error falls below this; 0: never
  int threads = 0;         // 0: OpenMP's default; results do not depend on it
};

template <class Scalar>
struct Result {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  RowMatrix<Scalar> Q;  // dequantized, m x n
  Matrix A;             // m x r, U_r sqrt(S_r)
  Matrix B;             // n x r, V_r sqrt(S_r); W ~ Q + A B^T
  PackedMatrix packed;  // codes and scales of Q
  std::vector<double> history;  // ||W - Q_t - A_t B_t^T|| / ||W|| after each iteration t
  int best_iteration = 0;       // 1-based iteration whose iterate is returned
  double qlora_error = 0.0;     // ||W - q(W)|| / ||W||: the QLoRA-style baseline
  double error() const { return history.empty() ? 0.0 : history[static_cast<std::size_t>(best_iteration - 1)]; }
  Eigen::Index rank() const { return A.cols(); }
};

// PEFT's factors: lora_A (r x n), lora_B (m x r), with
// (lora_alpha / r) * lora_B * lora_A == A * B^T.
template <class Scalar>
struct PeftLora {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> lora_A, lora_B;
  double scaling = 1.0;  // lora_alpha / r, what PEFT multiplies by
};

namespace detail {

inline void check_options(const Options& o, Eigen::Index m, Eigen::Index n) {
  const Eigen::Index mn = std::min(m, n);
  detail::require(o.rank >= 1 && o.rank <= mn, Errc::invalid_argument,
          "rank " + std::to_string(o.rank) + " is outside 1.." + std::to_string(mn) + " for a " + std::to_string(m) +
              "x" + std::to_string(n) + " matrix");
  detail::require(o.iterations >= 1, Errc::invalid_argument,
          "iterations must be >= 1 (got " + std::to_string(o.iterations) + ")");
  detail::require(o.tolerance >= 0.0 && std::isfinite(o.tolerance), Errc::invalid_argument, "tolerance must be finite and >= 0");
  detail::require(o.warm_power_iterations >= -1, Errc::invalid_argument,
                  "warm_power_iterations must be >= 0, or -1 for automatic");
  detail::require(o.start_power_iterations >= -1, Errc::invalid_argument,
                  "start_power_iterations must be >= 0, or -1 for svd.power_iterations");
  detail::require(o.warm_oversampling >= 0, Errc::invalid_argument, "warm_oversampling must be >= 0");
}

inline int warm_power_iterations(const Options& o, Eigen::Index m, Eigen::Index n) {
  if (o.warm_power_iterations >= 0) return o.warm_power_iterations;
  return std::min(m, n) >= kWarmNoPowerFrom ? 0 : 1;
}

// The warm-started SVDs of the loop: cold's method and seed, with the warm
// power iterations and oversampling.
inline SVDOptions warm_svd_options(const Options& o, const SVDOptions& cold, Eigen::Index m, Eigen::Index n) {
  SVDOptions w = cold;
  w.power_iterations = warm_power_iterations(o, m, n);
  w.oversampling = o.warm_oversampling;
  return w;
}

// sum_i term(i) for i < n in double, in 8 interleaved partial sums (a fixed
// order, so deterministic) that the compiler can vectorize.
template <class F>
double interleaved_sum(std::int64_t n, F&& term) {
  double acc[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += term(i + k);
  for (int k = 0; i < n; ++i, ++k) acc[k] += term(i);
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

// interleaved_sum over the rows x n elements of a row-major range, as
// term(row, col): the same order and so the same bits as interleaved_sum of
// the flat range (data-aware sums then match data-free ones where the
// weights are all 1).
template <class F>
double interleaved_row_sum(Eigen::Index rows, Eigen::Index n, F&& term) {
  double acc[8] = {};
  if (n % 8 == 0) {
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < n; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += term(i, j + k);
  } else {
    // Element e of the flat range goes to partial sum e % 8, as in
    // interleaved_sum; the lane is carried across rows.
    int lane = 0;
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < n; ++j) {
        acc[lane] += term(i, j);
        lane = (lane + 1) & 7;
      }
  }
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

// sum (x_i - y_i)^2 in double.
template <class Scalar>
double squared_distance(const Scalar* x, const Scalar* y, std::int64_t n) {
  return interleaved_sum(n, [&](std::int64_t i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    return d * d;
  });
}

// Sum of squares in fixed chunks, added in chunk order: deterministic.
template <class F>
double chunked_sum(std::int64_t chunks, int threads, F&& part) {
  std::vector<double> parts(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(chunks, threads, [&](std::int64_t c) { parts[static_cast<std::size_t>(c)] = part(c); });
  double s = 0;
  for (double p : parts) s += p;
  return s;
}

template <class Scalar>
double squared_norm(const Scalar* x, std::int64_t N, int threads) {
  const std::int64_t chunk = 1 << 16, chunks = (N + chunk - 1) / chunk;
  return chunked_sum(chunks, threads, [&](std::int64_t c) {
    const std::int64_t b = c * chunk, e = std::min(N, b + chunk);
    return interleaved_sum(e - b, [&](std::int64_t i) {
      const double v = static_cast<double>(x[b + i]);
      return v * v;
    });
  });
}

// ||x - q(x)||^2 in double, written only to a per-chunk buffer that stays in
// cache: QLoRA's baseline error in one read-only pass over x. Chunks hold
// whole blocks, so each block is quantized exactly as quantize_flat would;
// for block sizes dividing 2^16 the sum is squared_norm's, bit for bit.
// Plain specs only (no column weights or warm fractions, which are indexed
// by global position).
template <class Scalar>
double quantization_squared_error(const Scalar* x, std::int64_t N, const QuantSpec& s, int threads) {
  require(!s.col_weights && !s.fractions, Errc::invalid_argument,
          "quantization_squared_error: column weights and warm fractions are not supported");
  return with_bits(s.bits, [&](auto Bits) {
    const BlockQuantizer<Scalar, decltype(Bits)::value> bq(s);
    const std::int64_t bs = s.block_size, span = std::max<std::int64_t>(1, (1 << 16) / bs) * bs;
    return chunked_sum((N + span - 1) / span, threads, [&](std::int64_t c) {
      const std::int64_t e0 = c * span, len = std::min(span, N - e0);
      std::vector<Scalar> d(static_cast<std::size_t>(len));  // x - q(x) for this chunk
      bq.run(x + e0, d.data(), nullptr, len, 0, (len + bs - 1) / bs, x + e0);
      return interleaved_sum(len, [&](std::int64_t i) {
        const double v = static_cast<double>(d[static_cast<std::size_t>(i)]);
        return v * v;
      });
    });
  });
}

// Rows per chunk of the residual sweeps: about 64K elements, so a chunk of
// P = A B^T stays in cache next to the rows of W and R it meets.
inline Eigen::Index residual_rows(Eigen::Index n) {
  return std::max<Eigen::Index>(1, std::min<Eigen::Index>(kRowChunk, (1 << 16) / n + 1));
}

// One pass over fixed row chunks of an m x n row-major R with P = A B^T
// formed a chunk at a time (so it stays in cache next to the rows of R it
// meets): returns the sum, in chunk order, of per_chunk(r0, len, P chunk).
// Every residual sweep of the library is this loop with its own chunk body.
template <class Scalar, class MatA, class MatB, class F>
double residual_sweep(Eigen::Index m, Eigen::Index n, const MatA& A, const MatB& B, int threads, F&& per_chunk) {
  const Eigen::Index rows = residual_rows(n);
  const std::int64_t chunks = (m + rows - 1) / rows;
  return chunked_sum(chunks, threads, [&](std::int64_t c) {
    const Eigen::Index r0 = c * rows, len = std::min(rows, m - r0);
    RowMatrix<Scalar> P(len, n);
    P.noalias() = A.middleRows(r0, len) * B.transpose();
    return per_chunk(r0, len, static_cast<const Scalar*>(P.data()));
  });
}

// ||R - A B^T||^2 without touching R.
template <class Scalar, class MatA, class MatB>
double residual_squared_norm(const RowMatrix<Scalar>& R, const MatA& A, const MatB& B, int threads) {
  const Eigen::Index n = R.cols();
  return residual_sweep<Scalar>(R.rows(), n, A, B, threads, [&](Eigen::Index r0, Eigen::Index len, const Scalar* Pc) {
    return squared_distance(R.data() + r0 * n, Pc, static_cast<std::int64_t>(len) * n);
  });
}

// low_rank_step's default error term: ||R - P||^2 of a chunk.
struct PlainError {
  template <class Scalar>
  double operator()(const Scalar* R, const Scalar* P, Eigen::Index rows, Eigen::Index n) const {
    return squared_distance(R, P, static_cast<std::int64_t>(rows) * n);
  }
};

// With P = A B^T, one pass over row chunks that returns err(R chunk, P
// chunk) summed (by default ||R - P||^2). With update it also leaves
// R := W - P, the next matrix to quantize; given `next` it goes on to
// quantize that chunk while it is still in cache, leaving R := W - q(W - P)
// and the codes in *next (zeroed by the caller). Fusing the two saves a full
// read and write of W and R per LoftQ iteration. A chunk can only be
// quantized alone when its element range starts on a block and byte
// boundary; otherwise the quantization runs as its own pass after the sweep.
// Each block's result depends only on its own input, so the output is
// bit-identical either way.
template <class Scalar, class MatA, class MatB, class Err = PlainError>
double low_rank_step(const Scalar* Wp, RowMatrix<Scalar>& R, const MatA& A, const MatB& B, int threads,
                     bool update = true, PackedMatrix* next = nullptr, const QuantSpec* spec = nullptr,
                     const Err& err = Err{}) {
  const Eigen::Index m = R.rows(), n = R.cols(), rows = residual_rows(n);
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  const bool quantize = update && next && spec;
  const bool fused = quantize && (static_cast<std::int64_t>(rows) * n) % std::lcm<std::int64_t>(spec->block_size, 8) == 0;
  auto sweep = [&](auto&& quantize_chunk) {
    return residual_sweep<Scalar>(m, n, A, B, threads, [&](Eigen::Index r0, Eigen::Index len, const Scalar* Pc) {
      Scalar* Rc = R.data() + r0 * n;
      const Scalar* Wc = Wp + r0 * n;
      const double s = err(static_cast<const Scalar*>(Rc), Pc, len, n);
      if (update)
        for (Eigen::Index i = 0; i < len * n; ++i) Rc[i] = Wc[i] - Pc[i];
      quantize_chunk(static_cast<std::int64_t>(r0) * n, static_cast<std::int64_t>(r0 + len) * n);
      return s;
    });
  };
  if (!fused) {
    const double s = sweep([](std::int64_t, std::int64_t) {});
    if (quantize) quantize_flat(R.data(), R.data(), next, N, *spec, threads, Wp);
    return s;
  }
  return with_bits(spec->bits, [&](auto Bits) {
    const BlockQuantizer<Scalar, decltype(Bits)::value> bq(*spec);
    const std::int64_t bs = spec->block_size;
    return sweep([&](std::int64_t e0, std::int64_t e1) {
      bq.run(R.data(), R.data(), next, N, e0 / bs, (e1 + bs - 1) / bs, Wp);
    });
  });
}

inline double relative(double sq, double norm_sq) { return norm_sq > 0 ? std::sqrt(sq / norm_sq) : 0.0; }

// The alternation on a validated row-major m x n W. It depends only on the
// scalar type, so a program can compile it once (LOFTQ_EXTERN_TEMPLATES,
// detail/instances.hpp) however many matrix types it passes to initialize.
template <class Scalar>
Result<Scalar> initialize_rowmajor(const Scalar* Wp, Eigen::Index m, Eigen::Index n, QuantSpec spec,
                                   const Options& opt) {
  using Matrix = typename Result<Scalar>::Matrix;
  const Eigen::Index r = opt.rank;
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  const int threads = opt.threads;
  const QuantSpec spec_in = spec;
  spec.search = opt.scale_search;
  detail::QuantSpec baseline_spec = spec;  // QLoRA's q(W): plain absmax
  baseline_spec.search = false;
  // Iterations quantize slowly changing residuals, so each block's search
  // starts from the fraction of absmax it chose last time.
  std::vector<float> fractions;
  if (spec.search && opt.warm_scale_search) {
    fractions.assign(static_cast<std::size_t>((N + spec.block_size - 1) / spec.block_size), 0.0f);
    spec.fractions = fractions.data();
  }
  EigenSerialScope serial;
  Eigen::Map<const RowMatrix<Scalar>> W(Wp, m, n);
  const double w2 = squared_norm(Wp, N, threads);

  SVDOptions svd_cold = opt.svd;
  svd_cold.threads = threads;
  const SVDOptions svd_warm = warm_svd_options(opt, svd_cold, m, n);

  Result<Scalar> res;
  RowMatrix<Scalar> R;  // the residual W - A B^T that the next Q quantizes
  detail::resize_large(R, m, n);  // its first sweep writes every element
  Matrix A, B, V;           // V: the previous right basis (rank + oversampling columns), for warm starts
  TruncatedSVD<Matrix> svd;
  SVDOptions svd_start = svd_cold;
  if (opt.start_power_iterations >= 0) svd_start.power_iterations = opt.start_power_iterations;
  auto low_rank = [&](const auto& M, bool warm, const SVDOptions& cold) {
    if (warm && opt.warm_start && opt.svd.method == SVDMethod::randomized)
      svd.compute(M, r, svd_warm, V);
    else
      svd.compute(M, r, cold);
    detail::require(svd.info() == Eigen::Success, Errc::non_finite, "initialize: the SVD produced non-finite values");
    const auto sq = svd.singularValues().cwiseSqrt();
    A = svd.matrixU() * sq.asDiagonal();
    B = svd.matrixV() * sq.asDiagonal();
    V = svd.rightBasis();
  };

  // cur holds Q_t while the sweep after the SVD already writes Q_{t+1} into
  // next; best keeps the lowest-error iterate's codes.
  PackedMatrix cur = detail::make_packed(m, n, spec), next = detail::make_packed(m, n, spec),
               best = detail::make_packed(m, n, spec);
  bool have_factors = false;
  if (opt.start == Start::svd) {
    low_rank(W, false, svd_start);
    // R := W - Q_1, Q_1 = q(W - A_0 B_0^T). R holds nothing yet, so the
    // error term is skipped.
    detail::low_rank_step(Wp, R, A, B, threads, true, &cur, &spec,
                          [](const Scalar*, const Scalar*, Eigen::Index, Eigen::Index) { return 0.0; });
    have_factors = true;
  } else {
    detail::quantize_flat(Wp, R.data(), &cur, N, spec, threads, Wp);  // R := W - Q_1
  }

  Matrix bestA, bestB;
  double best_err = std::numeric_limits<double>::infinity();
  for (int t = 1; t <= opt.iterations; ++t) {
    if (t == 1 && opt.start == Start::zero && !spec.search)
      res.qlora_error = detail::relative(detail::squared_norm(R.data(), N, threads), w2);
    low_rank(R, have_factors, svd_cold);
    have_factors = true;
    // The error of iterate t, and (unless it is the last) R := W - Q_{t+1}
    // with Q_{t+1} = q(W - A_t B_t^T) in next, in one sweep.
    const bool more = t < opt.iterations;
    if (more) std::fill(next.codes.begin(), next.codes.end(), std::uint8_t{0});
    const double e = detail::relative(
        detail::low_rank_step(Wp, R, A, B, threads, more, more ? &next : nullptr, &spec), w2);
    res.history.push_back(e);
    if (!opt.keep_best || e < best_err || t == 1) {
      best_err = e;
      res.best_iteration = t;
      std::swap(cur, best);
      bestA = A;
      bestB = B;
    }
    std::swap(cur, next);
    if (opt.tolerance > 0 && t > 1) {
      const double prev = res.history[res.history.size() - 2];
      if (prev <= 0 || (prev - e) / prev < opt.tolerance) break;
    }
  }
  if (opt.start != Start::zero || spec.search) {
    // The baseline is QLoRA's absmax q(W), which this configuration never computes.
    res.qlora_error = detail::relative(detail::quantization_squared_error(Wp, N, baseline_spec, threads), w2);
  }
  detail::dequantize_flat(best, R.data(), threads);
  res.Q = std::move(R);
  res.A = std::move(bestA);
  res.B = std::move(bestB);
  res.packed = std::move(best);
  if (opt.keep_best && opt.start == Start::svd && res.error() > res.qlora_error) {
    // The SVD start can lose to plain q(W) when a few huge outliers dominate
    // W: the factors then carry them at float precision, while absmax stores
    // them exactly as block scales. The zero start is never worse than
    // q(W), so it is the fallback in that (rare) case.
    Options zero = opt;
    zero.start = Start::zero;
    auto alt = initialize_rowmajor(Wp, m, n, spec_in, zero);
    if (alt.error() < res.error()) return alt;
  }
  return res;
}

}  // namespace detail

template <class Derived, class Q>
Result<typename Derived::Scalar> initialize(const Eigen::MatrixBase<Derived>& W_in, const Q& quantizer,
                                            const Options& opt = {}) {
  detail::RowMajorView<Derived> view(W_in);
  detail::check_weights(W_in, view.data(), opt.threads, "initialize");
  detail::check_options(opt, W_in.rows(), W_in.cols());
  return detail::initialize_rowmajor(view.data(), W_in.rows(), W_in.cols(), detail::spec_of(quantizer), opt);
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

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT Result<float> initialize_rowmajor<float>(const float*, Eigen::Index, Eigen::Index, QuantSpec,
                                                              const Options&);
LOFTQ_INSTANCE_DOUBLE Result<double> initialize_rowmajor<double>(const double*, Eigen::Index, Eigen::Index, QuantSpec,
                                                                 const Options&);
LOFTQ_INSTANCE_FLOAT double quantization_squared_error<float>(const float*, std::int64_t, const QuantSpec&, int);
LOFTQ_INSTANCE_DOUBLE double quantization_squared_error<double>(const double*, std::int64_t, const QuantSpec&, int);
}  // namespace detail
}  // namespace loftq
#endif
