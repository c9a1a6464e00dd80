#pragma once
// The tool's failure kinds and how they leave the process.

#include <string>

namespace loftq_cli {

constexpr int kExitOk = 0;
constexpr int kExitBadInput = 1;
constexpr int kExitUsage = 2;
constexpr int kExitInterrupted = 130;

// A command line the tool cannot run (exit 2).
struct UsageError {
  std::string msg;
};

// Input or output the tool refuses, or a failure while running (exit 1).
struct InputError {
  std::string msg;
};

// SIGINT, SIGTERM or SIGHUP arrived while output was being staged (exit 130).
struct Interrupted {};

// Messages go to stderr as exactly one line.
inline std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

}  // namespace loftq_cli
