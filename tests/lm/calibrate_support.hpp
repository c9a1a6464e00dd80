// What the tests of the LM calibration and loaders (test_calibrate.cpp,
// test_load.cpp) share: the shared data, scratch directories, random token
// sequences and a bitwise comparison of two calibrations.
#pragma once

#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "common/lm/calibrate.hpp"

namespace calibrate_test {

namespace fs = std::filesystem;
using lm::Mat;

inline std::string shared(const std::string& name) { return std::string(LOFTQ_SHARED_DATA_DIR) + "/" + name; }
inline bool exists(const std::string& path) { return std::ifstream(path).good(); }

#define REQUIRE_STORIES()                                              \
  if (!exists(shared("stories260K.bin"))) {                            \
    MESSAGE("skipped: " << shared("stories260K.bin") << " is absent"); \
    return;                                                            \
  }

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("loftq_test_calibrate_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

inline std::vector<std::vector<int>> random_sequences(int vocab, const std::vector<int>& lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<std::vector<int>> seqs;
  for (int T : lengths) {
    std::vector<int> s(static_cast<std::size_t>(T));
    for (int& t : s) t = id(rng);
    seqs.push_back(s);
  }
  return seqs;
}

// Bitwise equality of two calibrations' sums.
inline void check_identical(const lm::Calibration& a, const lm::Calibration& b) {
  REQUIRE(a.inputs.size() == b.inputs.size());
  CHECK(a.tokens == b.tokens);
  for (std::size_t i = 0; i < a.inputs.size(); ++i) {
    const auto& x = a.inputs[i].stats;
    const auto& y = b.inputs[i].stats;
    CHECK(x.count() == y.count());
    if (x.mode() == loftq::StatsMode::full)
      CHECK(loftq::detail::StatsAccess::sums(x) == loftq::detail::StatsAccess::sums(y));
    else
      CHECK(loftq::detail::StatsAccess::diagonal_sums(x) == loftq::detail::StatsAccess::diagonal_sums(y));
  }
}

// Relative Frobenius difference of a from b.
inline double rel_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) { return (a - b).norm() / b.norm(); }

}  // namespace calibrate_test
