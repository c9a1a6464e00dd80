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

// Control characters as \xNN, so a name from a file (a tensor name, a path)
// cannot move the cursor, recolour the terminal or break a line.
inline std::string printable(const std::string& s) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

// Messages go to stderr as exactly one line: the tool's own line breaks
// become spaces, any other control character is escaped.
inline std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return printable(s);
}

}  // namespace loftq_cli
