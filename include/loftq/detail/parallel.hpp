#pragma once
// Threading: all parallel work in loftq is split into chunks whose bounds do
// not depend on the thread count, and each chunk is computed serially. That is
// what makes results bit-identical for 1 and N threads. The one exception is
// a split whose bounds cannot change any bit: chunked_mul_t's column ranges,
// where every output element is a whole chain of its own.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <exception>

#include "../threads.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loftq {
namespace detail {

inline int resolve_threads(int requested) { return thread_count(requested); }

// Rows per task of the row-chunked loops: the range finder's products, and
// the residual sweeps (there capped to about 64K elements per chunk).
constexpr Eigen::Index kRowChunk = 128;

enum class Schedule { fixed, dynamic };

// f(c), an exception kept in err (the first one) instead of escaping an
// OpenMP region, which would terminate.
template <class F>
void run_chunk(F& f, std::int64_t c, std::exception_ptr& err) {
  try {
    f(c);
  } catch (...) {
#ifdef _OPENMP
#pragma omp critical(loftq_parallel_for_error)
#endif
    if (!err) err = std::current_exception();
  }
}

template <Schedule S, class F>
void parallel_chunks(std::int64_t chunks, int threads, F& f) {
#ifdef _OPENMP
  const int t = static_cast<int>(std::min<std::int64_t>(resolve_threads(threads), std::max<std::int64_t>(chunks, 1)));
  if (t > 1) {
    std::exception_ptr err;
    if constexpr (S == Schedule::dynamic) {
#pragma omp parallel for num_threads(t) schedule(dynamic, 1)
      for (std::int64_t c = 0; c < chunks; ++c) run_chunk(f, c, err);
    } else {
#pragma omp parallel for num_threads(t) schedule(static)
      for (std::int64_t c = 0; c < chunks; ++c) run_chunk(f, c, err);
    }
    if (err) std::rethrow_exception(err);
    return;
  }
#else
  (void)threads;
#endif
  for (std::int64_t c = 0; c < chunks; ++c) f(c);
}

// Runs f(c) for c in [0, chunks), thread i taking the i-th contiguous share.
// Exceptions are captured and rethrown on the calling thread.
template <class F>
void parallel_for(std::int64_t chunks, int threads, F&& f) {
  parallel_chunks<Schedule::fixed>(chunks, threads, f);
}

// As parallel_for, but chunks are handed out one at a time as threads free
// up: for chunks of unequal cost, which the caller orders largest first. Any
// thread may run any chunk, so it is only for chunks whose results do not
// depend on which thread or in which order they run (disjoint outputs).
template <class F>
void parallel_for_dynamic(std::int64_t chunks, int threads, F&& f) {
  parallel_chunks<Schedule::dynamic>(chunks, threads, f);
}

// Held by every entry point; public in threads.hpp.
using loftq::EigenSerialScope;

}  // namespace detail
}  // namespace loftq
