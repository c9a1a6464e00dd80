#pragma once
// The header SafetensorsWriter writes: every declared tensor with its byte
// range in declaration order, the metadata, padded so the data section starts
// 8-byte aligned. TensorDecl is part of loftq/io/safetensors.hpp's API.

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "loftq/error.hpp"
#include "loftq/io/detail/header_parser.hpp"
#include "loftq/io/dtype.hpp"
#include "loftq/io/detail/strict_json.hpp"

namespace loftq {
namespace io {

struct TensorDecl {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
};

namespace detail {

// A declared tensor's place in the data section, and how much of it is written.
struct Slot {
  std::uint64_t begin, bytes, written;
};

// The header text (without its 8-byte length); fills `slots` and sets
// `data_bytes` to the data section's size. Names must be unique, non-empty
// and not "__metadata__"; sizes must not overflow.
inline std::string make_header(const std::string& path, const std::vector<TensorDecl>& tensors,
                               const std::map<std::string, std::string>& metadata, std::map<std::string, Slot>& slots,
                               std::uint64_t& data_bytes) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::uint64_t pos = 0;
  for (const TensorDecl& t : tensors) {
    ::loftq::detail::require(!t.name.empty() && t.name != "__metadata__", Errc::invalid_argument,
                             path + ": bad tensor name '" + t.name + "'");
    ::loftq::detail::require(!slots.count(t.name), Errc::invalid_argument,
                             path + ": tensor '" + t.name + "' declared twice");
    std::uint64_t n = 1, bytes = 0;
    for (std::uint64_t d : t.shape)
      ::loftq::detail::require(!mul_overflows(n, d, n), Errc::invalid_argument, path + ": shape overflows");
    ::loftq::detail::require(!mul_overflows(n, dtype_size(t.dtype), bytes), Errc::invalid_argument,
                             path + ": shape overflows");
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {pos, pos + bytes}}};
    slots[t.name] = Slot{pos, bytes, 0};
    pos += bytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // 8-byte aligned data section
  // What no reader (this library's included) would open is not written.
  ::loftq::detail::require(header.size() <= kMaxHeaderBytes, Errc::invalid_argument,
                           path + ": a header of " + std::to_string(header.size()) + " bytes, over the limit of " +
                               std::to_string(kMaxHeaderBytes) + " bytes that safetensors readers apply");
  data_bytes = pos;
  return header;
}

// The size of the header make_header() writes for the same declarations
// (names unique), computed one entry at a time: an output's headers can be
// checked against kMaxHeaderBytes before any work without holding them.
inline std::uint64_t header_size(const std::vector<TensorDecl>& tensors,
                                 const std::map<std::string, std::string>& metadata) {
  // nlohmann's compact form: {"k":v,...}; each entry is dumped by the same serializer.
  std::uint64_t n = 2, pos = 0, entries = 0;
  auto entry = [&](const std::string& key, const nlohmann::json& value) {
    n += nlohmann::json(key).dump().size() + 1 + value.dump().size() + (entries++ > 0 ? 1 : 0);
  };
  if (!metadata.empty()) entry("__metadata__", nlohmann::json(metadata));
  for (const TensorDecl& t : tensors) {
    std::uint64_t e = 1, bytes = 0;
    for (std::uint64_t d : t.shape)
      ::loftq::detail::require(!mul_overflows(e, d, e), Errc::invalid_argument, t.name + ": shape overflows");
    ::loftq::detail::require(!mul_overflows(e, dtype_size(t.dtype), bytes), Errc::invalid_argument,
                             t.name + ": shape overflows");
    entry(t.name, {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {pos, pos + bytes}}});
    pos += bytes;
  }
  return (n + 7) / 8 * 8;
}

}  // namespace detail
}  // namespace io
}  // namespace loftq
