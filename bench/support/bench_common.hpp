#pragma once
// Shared helpers for the Google Benchmark suites (not part of the loftq API).

#include <benchmark/benchmark.h>

#include <loftq/loftq.hpp>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/matrices.hpp"

namespace loftq_bench {

// The realistic matrices (common/matrices.hpp) under the benchmarks' namespace.
using namespace loftq_common;  // NOLINT(google-build-using-namespace)

// One realistic matrix per (m, n, seed), generated on first use and kept for
// the whole run, so setup is not timed and not repeated across benchmarks.
inline const RowMatrixXf& cached_matrix(Index m, Index n, std::uint64_t seed = 1) {
  static std::map<std::tuple<Index, Index, std::uint64_t>, std::unique_ptr<RowMatrixXf>> cache;
  auto& slot = cache[std::make_tuple(m, n, seed)];
  if (!slot) slot = std::make_unique<RowMatrixXf>(realistic_matrix(m, n, seed));
  return *slot;
}

inline std::string shape(Index m, Index n) { return std::to_string(m) + "x" + std::to_string(n); }

// The error counters every initialize benchmark reports.
inline void report_errors(benchmark::State& state, double rel_err, double qlora_err) {
  state.counters["rel_err"] = rel_err;
  state.counters["qlora_err"] = qlora_err;
  state.counters["reduction_pct"] = qlora_err > 0 ? 100.0 * (1.0 - rel_err / qlora_err) : 0.0;
}

inline int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// main() for a suite: registers its benchmarks, then runs what the flags select.
template <class Register>
int run_suite(int argc, char** argv, Register&& register_benchmarks) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("loftq_version", std::to_string(LOFTQ_VERSION_MAJOR) + "." +
                                                   std::to_string(LOFTQ_VERSION_MINOR) + "." +
                                                   std::to_string(LOFTQ_VERSION_PATCH));
  benchmark::AddCustomContext("omp_max_threads", std::to_string(default_threads()));
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  register_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace loftq_bench
