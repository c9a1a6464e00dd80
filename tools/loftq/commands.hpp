#pragma once
// The commands. Each returns the exit status of a success and throws
// InputError, Interrupted or loftq::Error otherwise (main.cpp maps them).

#include "options.hpp"

#include <loftq/finite.hpp>
#include <loftq/error.hpp>
#include <loftq/options.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loftq_cli {

// Sets OpenMP's thread count when --threads was given.
inline void apply_threads(int threads) {
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
#else
  (void)threads;
#endif
}

// Whether Q, A and B are all finite. Eigen's allFinite() is a scalar loop,
// about 0.1 s on a 4096x11008 Q; this scan vectorizes and uses the worker threads.
inline bool result_finite(const loftq::Result<float>& r, int threads) {
  auto finite = [&](const auto& M) {
    return loftq::all_finite(M.data(), static_cast<std::int64_t>(M.size()), threads);
  };
  return finite(r.Q) && finite(r.A) && finite(r.B);
}

inline loftq::Error not_finite_result() { return loftq::Error(loftq::Errc::non_finite, "the result is not finite"); }

// The message for a numeric failure of the library on W. When W's magnitude
// alone explains it (its squares, summed along a row or column as the SVD
// and the error norms do, exceed the float32 range), the message says so
// instead of naming the step that happened to overflow first.
template <class Matrix>
std::string numeric_failure(const loftq::Error& e, const Matrix& W) {
  if (e.code() != loftq::Errc::non_finite || W.size() == 0) return e.what();
  const double big = static_cast<double>(W.cwiseAbs().maxCoeff());
  // An Inf or NaN in the input is the input's fault, not an overflow of sums.
  if (!std::isfinite(big)) return "the input holds a non-finite value (Inf or NaN)";
  const double n = static_cast<double>(std::max(W.rows(), W.cols()));
  const double limit = std::sqrt(static_cast<double>(std::numeric_limits<float>::max()) / n);
  if (!(big > limit)) return e.what();
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "the input magnitude overflows float32 arithmetic: max |w| = %.3g is above %.3g, where sums of %.0f "
                "squares exceed the float32 maximum 3.4e38; scale the weights down",
                big, limit, n);
  return buf;
}

int run_init(const Args& a);       // cmd_init.cpp
int run_model(const Args& a);      // cmd_model.cpp (every input and output format)
int run_merge(const Args& a);      // cmd_merge.cpp
int run_calibrate(const Args& a);  // cmd_calibrate.cpp

}  // namespace loftq_cli
