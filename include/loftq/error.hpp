#pragma once
// loftq::Error: the one exception type the library throws for bad input.
//
// Like nlohmann::json's exceptions, every error carries a stable id so callers
// (and the CLI's exit-code mapping) can branch on the kind without parsing text.

#include <stdexcept>
#include <string>

namespace loftq {

enum class Errc {
  invalid_argument = 1,  // an option or shape that cannot work (rank 0, empty W, ...)
  non_finite = 2,        // NaN or Inf where finite values are required
  unsupported = 3,       // a valid request this build does not support (bits, dtype)
  parse_error = 4,       // a malformed or truncated file
  io_error = 5,          // the OS refused a read or write
  cancelled = 6,         // Options::cancel was raised during the call
};

inline const char* errc_name(Errc e) noexcept {
  switch (e) {
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::non_finite:
      return "non_finite";
    case Errc::unsupported:
      return "unsupported";
    case Errc::parse_error:
      return "parse_error";
    case Errc::io_error:
      return "io_error";
    case Errc::cancelled:
      return "cancelled";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& what) : std::runtime_error(what), code_(code) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

namespace detail {
[[noreturn]] inline void fail(Errc code, const std::string& msg) { throw Error(code, msg); }
inline void require(bool ok, Errc code, const std::string& msg) {
  if (!ok) fail(code, msg);
}
}  // namespace detail

}  // namespace loftq
