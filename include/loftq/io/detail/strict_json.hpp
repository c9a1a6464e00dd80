#pragma once
// JSON as hostile input: duplicate keys and deep nesting refused, integers
// checked, size arithmetic checked for overflow.

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "loftq/error.hpp"

namespace loftq {
namespace io {

namespace detail {

inline bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return true;
  out = a * b;
  return false;
}

// Parses JSON text, rejecting duplicate keys at any depth and nesting deeper
// than max_depth. `what` prefixes the messages.
inline nlohmann::json parse_json_strict(const char* begin, const char* end, const std::string& what,
                                        int max_depth = 8) {
  std::vector<std::set<std::string>> keys;
  std::string dup;
  int deepest = 0;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (depth > deepest) deepest = depth;
    if (depth > max_depth)
      ::loftq::detail::fail(Errc::parse_error, what + ": JSON nested deeper than " + std::to_string(max_depth));
    if (ev == E::object_start) {
      keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key) {
      if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get<std::string>()).second)
        ::loftq::detail::fail(Errc::parse_error, what + ": duplicate key '" + parsed.get<std::string>() + "'");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(begin, end, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON: " + e.what());
  }
}

inline std::uint64_t json_u64(const nlohmann::json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) {
    const std::int64_t x = v.get<std::int64_t>();
    ::loftq::detail::require(x >= 0, Errc::parse_error, what + " is negative");
    return static_cast<std::uint64_t>(x);
  }
  ::loftq::detail::fail(Errc::parse_error, what + " is not a non-negative integer");
}

}  // namespace detail

}  // namespace io
}  // namespace loftq
