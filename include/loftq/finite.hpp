#pragma once
// Whether an array holds only finite values. Eigen's allFinite() is a scalar
// loop (about 0.1 s on a 4096 x 11008 matrix); this scan vectorizes and runs
// on `threads` threads (0: OpenMP's default), with the same answer for any.

#include "detail/matrix_view.hpp"

#include <cstdint>

namespace loftq {

template <class Scalar>
bool all_finite(const Scalar* x, std::int64_t n, int threads = 0) {
  return detail::all_finite(x, n, threads);
}

}  // namespace loftq
