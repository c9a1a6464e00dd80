#pragma once
// Shared by the calibration statistics tests: a scratch directory, seeded
// statistics, and checks on the error a call throws.
#include <doctest/doctest.h>

#include <loftq/error.hpp>
#include <loftq/input_statistics.hpp>

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../support/scratch_dir.hpp"

namespace calib_test {

// What the calibration tests name unqualified, with `using namespace calib_test`.
using loftq::Errc;
using loftq::InputStatistics;
using loftq::StatsMode;
using loftq_test::scratch_dir;

// Samples with unequal channel scales (so the diagonal is not flat), summed.
inline loftq::InputStatistics sample_stats(Eigen::Index n, Eigen::Index tokens, loftq::StatsMode mode,
                                           std::uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  Eigen::MatrixXd X(tokens, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < tokens; ++i) X(i, j) = u(g) * (1.0 + static_cast<double>(j % 5));
  loftq::InputStatistics s(n, mode);
  s.add(X);
  return s;
}

inline std::vector<unsigned char> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}
inline void put_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Runs f, which must throw loftq::Error with `code` and a message holding
// every string of `parts` (the file, the tensor, ...).
inline void expect_error(const std::function<void()>& f, loftq::Errc code, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const loftq::Error& e) {
    CHECK_MESSAGE(e.code() == code, e.what());
    for (const std::string& p : parts)
      CHECK_MESSAGE(std::string(e.what()).find(p) != std::string::npos, e.what(), " lacks ", p);
    return;
  }
  FAIL("no loftq::Error thrown");
}

// No temporary left next to the outputs.
inline bool no_temporaries(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return false;
  return true;
}

}  // namespace calib_test
