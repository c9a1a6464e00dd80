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

// The nesting bound for a model's config.json, wherever it is read (the tool's
// `model`/`merge` and the LM loader of `calibrate`): real configurations nest a
// few levels (rope_scaling, quantization_config, task_specific_params); the
// bound keeps every tree built from one, copied and serialized, shallow.
inline constexpr int kConfigJsonDepth = 64;

inline nlohmann::json parse_json_strict(const std::string& text, const std::string& what, int max_depth = 8) {
  return detail::parse_json_strict(text, what, max_depth);
}

}  // namespace io
}  // namespace loftq
