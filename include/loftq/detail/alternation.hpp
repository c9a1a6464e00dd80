#pragma once
// The LoftQ alternation, written once for every metric it minimizes in:
//
//   A_0 = B_0 = 0
//   for t = 1..T:  Q_t = q(W - A_{t-1} B_{t-1}^T)
//                  A_t, B_t = the best rank-r fit of W - Q_t in the metric
//
// Alternation<Scalar, Metric>::compute() runs named steps: start (Q_1),
// then per iteration fit (A_t, B_t), sweep (the error of iterate t and, in
// the same pass, Q_{t+1}) and record (history, keep-best, tolerance), then
// finish (the QLoRA baseline, the returned Q, the fallback from the SVD
// start). A Metric decides how errors are measured and what the SVD sees:
//
//   FrobeniusMetric (here)           ||X||_F: data-free LoftQ (initialize.hpp)
//   OutputMetric (output_metric.hpp) ||X F||_F with F F^T = H, the Gram matrix
//                                    of calibration inputs, full or diagonal
//                                    (data_aware.hpp)
//
// Its interface, for an m x n row-major X (W or the residual R):
//   name()                        the public function's name, for messages
//   weigh(spec)                   per-column weights for the scale search
//   prepare(X)                    called before squared_norm(X) and fit_input(X)
//   squared_norm(X)               ||X||^2 in the metric
//   fit_input(X)                  the matrix whose truncated SVD gives the factors
//   finish_factors(f)             maps the SVD's right factor back to B
//   step(W, R, f, next)           the squared error of R - A B^T; given next, also
//                                 R := W - q(W - A B^T), codes in next (requantize_residual)
//   quantization_squared_error(W, R, spec)   ||W - q(W)||^2; R is scratch

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../options.hpp"
#include "../packed.hpp"
#include "../svd.hpp"
#include "../workspace.hpp"
#include "block_quantizer.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "reduce.hpp"
#include "residual.hpp"

namespace loftq {
namespace detail {

inline void check_options(const Options& o, Eigen::Index m, Eigen::Index n) {
  const Eigen::Index mn = std::min(m, n);
  require(o.rank >= 1 && o.rank <= mn, Errc::invalid_argument,
          "rank " + std::to_string(o.rank) + " is outside 1.." + std::to_string(mn) + " for a " + std::to_string(m) +
              "x" + std::to_string(n) + " matrix");
  require(o.iterations >= 1, Errc::invalid_argument,
          "iterations must be >= 1 (got " + std::to_string(o.iterations) + ")");
  require(o.tolerance >= 0.0 && std::isfinite(o.tolerance), Errc::invalid_argument,
          "tolerance must be finite and >= 0");
  require(o.warm_power_iterations >= -1, Errc::invalid_argument,
          "warm_power_iterations must be >= 0, or -1 for automatic");
  require(o.start_power_iterations >= -1, Errc::invalid_argument,
          "start_power_iterations must be >= 0, or -1 for svd.power_iterations");
  require(o.warm_oversampling >= 0, Errc::invalid_argument, "warm_oversampling must be >= 0");
}

inline int warm_power_iterations(const Options& o, Eigen::Index m, Eigen::Index n) {
  if (o.warm_power_iterations >= 0) return o.warm_power_iterations;
  return std::min(m, n) >= kWarmNoPowerFrom ? 0 : 1;
}

// LoftQ's factors from a truncated SVD, sqrt(S) split evenly:
// A = U sqrt(S), B = V sqrt(S).
template <class SVD, class Matrix>
void balanced_factors(const SVD& svd, Matrix& A, Matrix& B) {
  const auto sq = svd.singularValues().cwiseSqrt();
  A = svd.matrixU() * sq.asDiagonal();
  B = svd.matrixV() * sq.asDiagonal();
}

// The factors of one iterate, W ~ Q + A B^T.
template <class Scalar>
struct Factors {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix A, B;
  Matrix BF;  // the SVD's V sqrt(S) before finish_factors maps it to B (output metric only)
  Matrix V;   // the SVD's whole right basis: the next iteration's warm start
};

// The plain Frobenius norm: data-free LoftQ.
template <class Scalar>
class FrobeniusMetric {
 public:
  explicit FrobeniusMetric(int threads) : threads_(threads) {}

  const char* name() const { return "initialize"; }
  void weigh(QuantSpec&) const {}
  template <class X>
  void prepare(const X&) const {}
  template <class X>
  double squared_norm(const X& x) const {
    return detail::squared_norm(x.data(), static_cast<std::int64_t>(x.size()), threads_);
  }
  template <class X>
  const X& fit_input(const X& x) const {
    return x;
  }
  void finish_factors(Factors<Scalar>&) const {}
  double step(const Scalar* Wp, RowMatrix<Scalar>& R, const Factors<Scalar>& f, const Requantize* next) const {
    return next ? requantize_residual(Wp, R, f.A, f.B, threads_, *next) : residual_error(R, f.A, f.B, threads_);
  }
  double quantization_squared_error(const Scalar* Wp, RowMatrix<Scalar>& R, const QuantSpec& plain) const {
    return detail::quantization_squared_error(Wp, static_cast<std::int64_t>(R.size()), plain, threads_);
  }

 private:
  int threads_;
};

// One LoftQ run on a validated row-major m x n W (options checked).
//
// What R holds, step by step:
//   start()          W - Q_1; Q_1's codes in cur_
//   fit(R)           unchanged, W - Q_t (the metric may keep an image of it)
//   sweep(), t < T   W - Q_{t+1}; Q_{t+1}'s codes in next_, which record()
//                    then makes cur_
//   sweep(), t = T   unchanged
//   finish()         scratch for the baseline, then the returned Q
// best_ holds the codes of the iterate to return, bestA_ / bestB_ its factors.
// R and the code sets come from the lease's workspace, if it has one, and
// what the Result does not take goes back to it.
template <class Scalar, class Metric>
class Alternation {
 public:
  Alternation(const Scalar* Wp, Eigen::Index m, Eigen::Index n, const QuantSpec& spec, const Options& opt,
              Metric& metric, WorkspaceLease<Scalar>& lease)
      : Wp_(Wp),
        W_(Wp, m, n),
        m_(m),
        n_(n),
        N_(static_cast<std::int64_t>(m) * n),
        opt_(opt),
        metric_(metric),
        spec_in_(spec),
        spec_(spec),
        lease_(lease),
        fractions_(lease.fractions(own_fractions_)) {
    spec_.search = opt.scale_search;
    plain_ = spec_;  // QLoRA's q(W): plain absmax, unweighted
    plain_.search = false;
    metric_.weigh(spec_);
    // Iterations quantize slowly changing residuals, so each block's search
    // starts from the fraction of absmax it chose last time.
    if (spec_.search && opt.warm_scale_search) {
      fractions_.assign(static_cast<std::size_t>((N_ + spec_.block_size - 1) / spec_.block_size), 0.0f);
      spec_.fractions = fractions_.data();
    }
    svd_cold_ = opt.svd;
    svd_cold_.threads = opt.threads;
    svd_warm_ = svd_cold_;
    svd_warm_.power_iterations = warm_power_iterations(opt, m, n);
    svd_warm_.oversampling = opt.warm_oversampling;
    svd_start_ = svd_cold_;
    if (opt.start_power_iterations >= 0) svd_start_.power_iterations = opt.start_power_iterations;
  }

  ~Alternation() {
    lease_.give(std::move(R_));
    for (PackedMatrix* p : {&cur_, &next_, &best_}) lease_.give(std::move(*p));
  }
  Alternation(const Alternation&) = delete;
  Alternation& operator=(const Alternation&) = delete;

  Result<Scalar> compute() {
    EigenSerialScope serial;
    metric_.prepare(W_);
    w2_ = metric_.squared_norm(W_);
    lease_.take(R_, m_, n_);  // start() writes every element
    lease_.take(cur_, m_, n_, spec_);
    lease_.take(next_, m_, n_, spec_);
    lease_.take(best_, m_, n_, spec_);
    check_cancel();
    start();
    for (int t = 1; t <= opt_.iterations; ++t) {
      check_cancel();
      metric_.prepare(R_);
      if (t == 1 && opt_.start == Start::zero && !spec_.search)  // R = W - q(W): the baseline comes for free
        res_.qlora_error = relative(metric_.squared_norm(R_), w2_);
      fit(R_, svd_cold_);
      check_cancel();
      const double e = relative(sweep(t < opt_.iterations), w2_);
      if (record(t, e)) break;
    }
    return finish();
  }

 private:
  void check_cancel() const {
    if (opt_.cancel && opt_.cancel->load(std::memory_order_relaxed)) fail(Errc::cancelled, "initialize: cancelled");
  }

  // Q_1 = q(W - A_0 B_0^T): with the zero start q(W); with the SVD start,
  // A_0, B_0 come from the metric's SVD of W.
  void start() {
    if (opt_.start == Start::svd) {
      fit(W_, svd_start_);
      check_cancel();
      requantize_residual(Wp_, R_, f_.A, f_.B, opt_.threads, Requantize{&cur_, &spec_}, NoError{});
    } else {
      quantize_flat(Wp_, R_.data(), &cur_, N_, spec_, opt_.threads, Wp_);
    }
  }

  // A, B: the rank-r fit of X in the metric. Once there are factors, a
  // randomized SVD warm-starts from the previous right basis with the warm
  // settings; otherwise it runs with `cold`.
  template <class X>
  void fit(const X& x, const SVDOptions& cold) {
    const auto& input = metric_.fit_input(x);
    if (have_factors_ && opt_.warm_start && opt_.svd.method == SVDMethod::randomized)
      svd_.compute(input, opt_.rank, svd_warm_, f_.V);
    else
      svd_.compute(input, opt_.rank, cold);
    require(svd_.info() == Eigen::Success, Errc::non_finite,
            std::string(metric_.name()) + ": the SVD produced non-finite values");
    balanced_factors(svd_, f_.A, f_.B);
    f_.V = svd_.rightBasis();
    metric_.finish_factors(f_);
    have_factors_ = true;
  }

  // The squared error of iterate t; unless it is the last, R := W - Q_{t+1}
  // with Q_{t+1} = q(W - A_t B_t^T) in next_, in the same pass.
  double sweep(bool more) {
    if (!more) return metric_.step(Wp_, R_, f_, nullptr);
    std::fill(next_.codes.begin(), next_.codes.end(), std::uint8_t{0});
    const Requantize into{&next_, &spec_};
    return metric_.step(Wp_, R_, f_, &into);
  }

  // Appends e to the history, keeps the iterate if it is the best (or, with
  // keep_best off, the latest), and advances next_ to cur_. Returns true
  // when the tolerance says to stop.
  bool record(int t, double e) {
    res_.history.push_back(e);
    if (!opt_.keep_best || e < best_err_ || t == 1) {
      best_err_ = e;
      res_.best_iteration = t;
      std::swap(cur_, best_);
      bestA_ = f_.A;
      bestB_ = f_.B;
    }
    std::swap(cur_, next_);
    if (opt_.tolerance > 0 && t > 1) {
      const double prev = res_.history[res_.history.size() - 2];
      if (prev <= 0 || (prev - e) / prev < opt_.tolerance) return true;
    }
    return false;
  }

  Result<Scalar> finish() {
    if (opt_.start != Start::zero || spec_.search)  // the loop never computed q(W) with plain absmax
      res_.qlora_error = relative(metric_.quantization_squared_error(Wp_, R_, plain_), w2_);
    dequantize_flat(best_, R_.data(), opt_.threads);
    res_.Q = std::move(R_);
    res_.A = std::move(bestA_);
    res_.B = std::move(bestB_);
    res_.packed = std::move(best_);
    if (opt_.keep_best && opt_.start == Start::svd && res_.error() > res_.qlora_error) {
      // The SVD start can lose to plain q(W) when a few huge outliers
      // dominate W: the factors then carry them at float precision, while
      // absmax stores them exactly as block scales. The zero start is never
      // worse than q(W), so it is the fallback in that (rare) case.
      Options zero = opt_;
      zero.start = Start::zero;
      Result<Scalar> alt = Alternation(Wp_, m_, n_, spec_in_, zero, metric_, lease_).compute();
      if (alt.error() < res_.error()) {
        lease_.give(std::move(res_.Q));
        lease_.give(std::move(res_.packed));
        return alt;
      }
    }
    return std::move(res_);
  }

  using Matrix = typename Result<Scalar>::Matrix;

  const Scalar* Wp_;
  Eigen::Map<const RowMatrix<Scalar>> W_;
  Eigen::Index m_, n_;
  std::int64_t N_;
  Options opt_;
  Metric& metric_;
  QuantSpec spec_in_, spec_, plain_;
  WorkspaceLease<Scalar>& lease_;
  std::vector<float> own_fractions_;  // without a workspace
  std::vector<float>& fractions_;
  SVDOptions svd_cold_, svd_warm_, svd_start_;
  double w2_ = 0;

  RowMatrix<Scalar> R_;
  TruncatedSVD<Matrix> svd_;
  Factors<Scalar> f_;
  bool have_factors_ = false;
  PackedMatrix cur_, next_, best_;
  Matrix bestA_, bestB_;
  double best_err_ = std::numeric_limits<double>::infinity();
  Result<Scalar> res_;
};

// The data-free alternation on a validated row-major W. It depends only on
// the scalar type, so a program can compile it once (LOFTQ_EXTERN_TEMPLATES,
// instances.hpp) however many matrix types it passes to initialize.
// ws: null, or the caller's workspace (workspace.hpp).
template <class Scalar>
Result<Scalar> initialize_rowmajor(const Scalar* Wp, Eigen::Index m, Eigen::Index n, const QuantSpec& spec,
                                   const Options& opt, Workspace<Scalar>* ws) {
  WorkspaceLease<Scalar> lease(ws);
  FrobeniusMetric<Scalar> metric(opt.threads);
  return Alternation<Scalar, FrobeniusMetric<Scalar>>(Wp, m, n, spec, opt, metric, lease).compute();
}

}  // namespace detail
}  // namespace loftq

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT Result<float> initialize_rowmajor<float>(const float*, Eigen::Index, Eigen::Index,
                                                              const QuantSpec&, const Options&, Workspace<float>*);
LOFTQ_INSTANCE_DOUBLE Result<double> initialize_rowmajor<double>(const double*, Eigen::Index, Eigen::Index,
                                                                 const QuantSpec&, const Options&, Workspace<double>*);
}  // namespace detail
}  // namespace loftq
#endif
