#pragma once
// How many threads a call runs on. Every options struct of the library has a
// `threads` field with the same meaning; results never depend on it
// (detail/parallel.hpp says how).

#include <Eigen/Core>

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

// Holds Eigen's own threading at 1 while alive and restores the caller's
// setting afterwards. Eigen's OpenMP GEMM picks its k-blocking from the
// thread count, which changes rounding; so while loftq runs, Eigen is held
// serial and loftq supplies the parallelism through fixed chunks. Code that
// wants Eigen products with the same bits for any thread count can do the same.
class EigenSerialScope {
 public:
  EigenSerialScope() {
#ifdef _OPENMP
    old_ = Eigen::nbThreads();
    was_default_ = old_ == omp_get_max_threads();
    Eigen::setNbThreads(1);
#endif
  }
  ~EigenSerialScope() {
#ifdef _OPENMP
    Eigen::setNbThreads(was_default_ ? 0 : old_);
#endif
  }
  EigenSerialScope(const EigenSerialScope&) = delete;
  EigenSerialScope& operator=(const EigenSerialScope&) = delete;

 private:
#ifdef _OPENMP
  int old_ = 1;
  bool was_default_ = true;
#endif
};

}  // namespace loftq
