// Times loftq::initialize (default Options: NF4, rank 16) on an m x n
// realistic matrix: prints one line "seconds <t>" per repetition, then the
// kernels the run dispatched to. Usage: dispatch_consumer [m n reps]
#include <loftq/loftq.hpp>

#if __has_include(<loftq/simd.hpp>)
#include <loftq/simd.hpp>
#define SIMD_PATH loftq::simd_path()
#else
#define SIMD_PATH "chosen at compile time"
#endif

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "common/matrices.hpp"

int main(int argc, char** argv) {
  const Eigen::Index m = argc > 2 ? std::atol(argv[1]) : 4096, n = argc > 2 ? std::atol(argv[2]) : 4096;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 1;
  const loftq_common::RowMatrixXf W = loftq_common::realistic_matrix(m, n, 7);
  double err = 0;
  for (int k = 0; k < reps; ++k) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = loftq::initialize(W, loftq::NormalFloat<4>{}, loftq::Options{});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    err = r.error();
    std::printf("seconds %.4f\n", s);
  }
  std::printf("error %.6f simd %s\n", err, SIMD_PATH);
  return 0;
}
