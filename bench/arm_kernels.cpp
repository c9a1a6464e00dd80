// One loftq operation on a realistic_matrix, run once, for counting the
// instructions it executes under qemu-aarch64 (bench/arm_instructions.sh);
// no timing, since emulated time says nothing about real ARM hardware.
//
//   arm_kernels <op> <m> <n>
//
//   none        only builds the matrix (the baseline the script subtracts)
//   quantize    fake_quantize, NF4, absmax scales
//   search      fake_quantize, NF4, error-optimal scale search (LoftQ's
//   default) svd         TruncatedSVD, rank 16, the default randomized SVD
//   initialize  loftq::initialize with default Options (NF4, rank 16, T = 5)
//
// Prints a checksum of the result so the work cannot be optimized away, and
// the kernels the process chose (loftq::simd_path()).
#include <loftq/loftq.hpp>
#include <loftq/simd.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "common/matrices.hpp"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: arm_kernels none|quantize|search|svd|initialize m n\n");
    return 2;
  }
  const std::string op = argv[1];
  const Eigen::Index m = std::atol(argv[2]), n = std::atol(argv[3]);
  if (m < 16 || n < 16) {
    std::fprintf(stderr, "arm_kernels: m and n must be at least 16\n");
    return 2;
  }
  try {
    const loftq_common::RowMatrixXf W = loftq_common::realistic_matrix(m, n, 7);
    double check = 0;
    if (op == "none") {
      check = W.cast<double>().sum();
    } else if (op == "quantize" || op == "search") {
      loftq::QuantizeOptions opt;
      opt.scale_search = op == "search";
      check = loftq::fake_quantize(W, loftq::NormalFloat<4>{}, opt).cast<double>().sum();
    } else if (op == "svd") {
      const loftq::TruncatedSVD<Eigen::MatrixXf> svd(W, 16);
      check = svd.singularValues().cast<double>().sum();
    } else if (op == "initialize") {
      check = loftq::initialize(W, loftq::NormalFloat<4>{}, loftq::Options{}).error();
    } else {
      std::fprintf(stderr, "arm_kernels: unknown op '%s'\n", op.c_str());
      return 2;
    }
    std::printf("%s %ldx%ld check %.9g simd %s\n", op.c_str(), static_cast<long>(m), static_cast<long>(n), check,
                loftq::simd_path());
  } catch (const std::exception& e) {  // loftq::Error, std::bad_alloc
    std::fprintf(stderr, "arm_kernels: %s\n", e.what());
    return 1;
  }
  return 0;
}
