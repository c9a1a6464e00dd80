// Scratch files, seeded matrices, error codes and LoftQ results for the
// file-format tests of loftq/io (PEFT adapters, packed files, bitsandbytes).
#pragma once

#include <loftq/loftq.hpp>

#include <filesystem>
#include <optional>
#include <random>
#include <string>

#include "../support/scratch_dir.hpp"

namespace io_test {

namespace fs = std::filesystem;

inline std::string scratch(const std::string& name) { return loftq_test::scratch_dir("io") + "/" + name; }

inline Eigen::MatrixXf random_matrix(Eigen::Index m, Eigen::Index n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 1.0f);
  Eigen::MatrixXf W(m, n);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = g(rng);
  return W;
}

template <class F>
std::optional<loftq::Errc> error_code_of(F&& f) {
  try {
    f();
  } catch (const loftq::Error& e) {
    return e.code();
  }
  return std::nullopt;
}

inline loftq::Result<float> loftq_result(const Eigen::MatrixXf& W, int bits, Eigen::Index rank, bool double_quant) {
  loftq::Options opt;
  opt.rank = rank;
  opt.iterations = 2;
  loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits, 64, true);
  loftq::Result<float> r = loftq::initialize(W, q, opt);
  if (double_quant) loftq::double_quantize(W, r, opt);
  return r;
}

}  // namespace io_test
