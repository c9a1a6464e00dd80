#pragma once
// JSON read strictly, as loftq reads a checkpoint's index: duplicate keys at
// any depth, nesting deeper than max_depth, NUL bytes and a leading BOM are
// refused (loftq::Error, Errc::parse_error) rather than silently resolved.
// `what` (a path) starts the messages.

#include "detail/strict_json.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace loftq {
namespace io {

inline nlohmann::json parse_json_strict(const std::string& text, const std::string& what, int max_depth = 8) {
  return detail::parse_json_strict(text, what, max_depth);
}

}  // namespace io
}  // namespace loftq
