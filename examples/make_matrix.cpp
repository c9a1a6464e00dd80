// Writes a realistic synthetic weight matrix (decaying spectrum, heavy tails,
// a few outlier input channels; see bench/support/matrices.hpp) to a .npy
// file, so the loftq tool can be tried and measured without a checkpoint:
//
//   make_matrix 4096 4096 W.npy [seed]
//   /usr/bin/time -v loftq init --input W.npy --output out

#include <loftq/io/npy.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "common/matrices.hpp"

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::fprintf(stderr, "usage: make_matrix ROWS COLS OUT.npy [SEED]\n");
    return 2;
  }
  const long m = std::strtol(argv[1], nullptr, 10), n = std::strtol(argv[2], nullptr, 10);
  const unsigned long long seed = argc == 5 ? std::strtoull(argv[4], nullptr, 10) : 0;
  if (m < 1 || n < 1) {
    std::fprintf(stderr, "make_matrix: ROWS and COLS must be positive integers\n");
    return 2;
  }
  try {
    loftq::io::write_npy(argv[3], loftq_common::realistic_matrix(m, n, seed));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_matrix: %s\n", e.what());
    return 1;
  }
  return 0;
}
