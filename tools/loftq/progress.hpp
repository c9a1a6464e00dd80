#pragma once
// The progress line of `loftq model`.

#include <chrono>
#include <cstddef>
#include <string>

namespace loftq_cli {

// A progress line on stderr: redrawn in place on a terminal, one line per
// finished tensor otherwise.
class Progress {
 public:
  Progress(std::size_t total, bool quiet);
  void update(std::size_t done, const std::string& current);

 private:
  std::size_t total_;
  bool quiet_, tty_;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace loftq_cli
