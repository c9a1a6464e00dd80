#pragma once
// How many threads a call runs on. Every options struct of the library has a
// `threads` field with the same meaning; results never depend on it
// (detail/parallel.hpp says how).

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loftq {

// The threads used for `threads = requested`: requested when > 0, otherwise
// OpenMP's default (OMP_NUM_THREADS, or the number of cores); always 1 in a
// build without OpenMP.
inline int thread_count(int requested = 0) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

}  // namespace loftq
