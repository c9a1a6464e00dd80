#pragma once
// The safetensors header: parsed and validated as hostile input (every rule
// listed at the top of loftq/io/safetensors.hpp), giving the TensorInfo of
// each tensor. TensorInfo is part of safetensors.hpp's API.

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "loftq/error.hpp"
#include "loftq/io/detail/dtypes.hpp"
#include "loftq/io/detail/strict_json.hpp"

namespace loftq {
namespace io {

// Header length cap: the reference implementation uses 100 MB as well.
constexpr std::uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets within the data section
  std::uint64_t numel = 1;
  std::uint64_t nbytes() const { return end - begin; }
};

namespace detail {

// Parses the header of the `size` bytes at `base` (the whole file, named
// `path` in messages): the data section's offset, the tensors in data-section
// order, their index by name and the __metadata__ strings.
inline void parse_header(const unsigned char* base, std::uint64_t size, const std::string& path,
                         std::uint64_t& data_offset, std::vector<TensorInfo>& tensors,
                         std::map<std::string, std::size_t>& index, std::map<std::string, std::string>& metadata) {
  auto bad = [&](const std::string& msg) { ::loftq::detail::fail(Errc::parse_error, path + ": " + msg); };
  auto json_u64_or_bad = [&](const nlohmann::json& v, const std::string& what) -> std::uint64_t {
    try {
      return json_u64(v, what);
    } catch (const Error& e) {
      bad(e.what());
    }
    return 0;
  };
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8)
    bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
        " bytes)");
  if (n > kMaxHeaderBytes) bad("header length " + std::to_string(n) + " exceeds the limit of " +
                               std::to_string(kMaxHeaderBytes) + " bytes");
  if (n < 2) bad("header length " + std::to_string(n) + " is too small for a JSON object");
  data_offset = 8 + n;
  const std::uint64_t data_size = size - data_offset;
  const char* hb = reinterpret_cast<const char*>(base + 8);
  const nlohmann::json h = detail::parse_json_strict(hb, hb + n, path + ": header");
  if (!h.is_object()) bad("header is not a JSON object");

  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) bad("__metadata__ entry '" + m.key() + "' is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tw = "tensor '" + name + "'";
    if (name.empty()) bad("a tensor has an empty name");
    if (!v.is_object()) bad(tw + ": entry is not an object");
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets") bad(tw + ": unknown key '" + k.key() + "'");
    const auto d = v.find("dtype"), s = v.find("shape"), o = v.find("data_offsets");
    if (d == v.end() || s == v.end() || o == v.end()) bad(tw + ": needs dtype, shape and data_offsets");
    TensorInfo t;
    t.name = name;
    if (!d->is_string()) bad(tw + ": dtype is not a string");
    if (!parse_dtype(d->get<std::string>(), t.dtype))
      ::loftq::detail::fail(Errc::unsupported, path + ": " + tw + ": unsupported dtype '" + d->get<std::string>() + "'");
    if (!s->is_array()) bad(tw + ": shape is not an array");
    if (s->size() > 64) bad(tw + ": shape has " + std::to_string(s->size()) + " dimensions");
    std::uint64_t numel = 1;
    for (const auto& dim : *s) {
      const std::uint64_t x = json_u64_or_bad(dim, tw + ": shape entry");
      t.shape.push_back(x);
      if (detail::mul_overflows(numel, x, numel)) bad(tw + ": shape element count overflows");
    }
    t.numel = numel;
    std::uint64_t expect = 0;
    if (detail::mul_overflows(numel, dtype_size(t.dtype), expect)) bad(tw + ": byte count overflows");
    if (!o->is_array() || o->size() != 2) bad(tw + ": data_offsets is not a [begin, end] pair");
    t.begin = json_u64_or_bad((*o)[0], tw + ": data_offsets begin");
    t.end = json_u64_or_bad((*o)[1], tw + ": data_offsets end");
    if (t.end < t.begin) bad(tw + ": data_offsets end " + std::to_string(t.end) + " < begin " + std::to_string(t.begin));
    if (t.end > data_size)
      bad(tw + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
          ") run past the data section (" + std::to_string(data_size) + " bytes; file truncated?)");
    if (t.end - t.begin != expect)
      bad(tw + ": holds " + std::to_string(t.end - t.begin) + " bytes but dtype " + dtype_name(t.dtype) +
          " and its shape need " + std::to_string(expect));
    tensors.push_back(std::move(t));
  }
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t pos = 0;
  for (const TensorInfo& t : tensors) {
    if (t.begin < pos) bad("tensor '" + t.name + "': data_offsets overlap another tensor");
    if (t.begin > pos) bad("tensor '" + t.name + "': gap in the data section before offset " + std::to_string(t.begin));
    pos = t.end;
  }
  if (pos != data_size)
    bad("data section has " + std::to_string(data_size) + " bytes but the tensors cover " + std::to_string(pos));
  for (std::size_t i = 0; i < tensors.size(); ++i) index[tensors[i].name] = i;
}

}  // namespace detail
}  // namespace io
}  // namespace loftq
