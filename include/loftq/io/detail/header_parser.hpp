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
#include "loftq/io/dtype.hpp"
#include "loftq/io/tensor_info.hpp"
#include "loftq/io/detail/strict_json.hpp"

namespace loftq {
namespace io {

// Header length cap: the reference implementation uses 100 MB as well.
constexpr std::uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

namespace detail {

// The header's SAX handler: checks each event against the safetensors schema
// as it arrives and keeps only the tensor table and the metadata strings, so
// time is linear in the header and memory is bounded by what a valid header
// would hold. The first violation in document order is reported, except an
// unknown dtype: that is Errc::unsupported only for a header with no other
// defect (a malformed file is a parse_error whatever its dtypes), so it is
// kept in unsupported() until the caller has checked everything else.
class HeaderSax {
 public:
  using json = nlohmann::json;

  HeaderSax(const std::string& path, std::uint64_t data_size, std::vector<TensorInfo>& tensors,
            std::map<std::string, std::size_t>& index, std::map<std::string, std::string>& metadata)
      : path_(path),
        depth_(path + ": header", 8),
        data_size_(data_size),
        tensors_(tensors),
        index_(index),
        metadata_(metadata) {}

  bool null() { return scalar(Kind::other, nullptr); }
  bool boolean(bool) { return scalar(Kind::other, nullptr); }
  bool number_integer(json::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<std::uint64_t>(v));
    return scalar(Kind::negative, nullptr);
  }
  bool number_unsigned(json::number_unsigned_t v) {
    u_ = v;
    return scalar(Kind::u64, nullptr);
  }
  bool number_float(json::number_float_t, const json::string_t&) { return scalar(Kind::other, nullptr); }
  bool string(json::string_t& v) { return scalar(Kind::string, &v); }
  bool binary(json::binary_t&) { return scalar(Kind::other, nullptr); }

  bool start_object(std::size_t) {
    depth_.open();
    switch (at_) {
      case At::start:
        at_ = At::top;
        break;
      case At::top_value:
        at_ = in_metadata_ ? At::metadata : At::tensor;
        t_ = TensorInfo{};
        t_.name = key_;
        have_dtype_ = have_shape_ = have_offsets_ = unknown_dtype_ = false;
        break;
      default:
        scalar(Kind::container, nullptr);
    }
    return true;
  }
  bool start_array(std::size_t) {
    depth_.open();
    if (at_ == At::tensor_value && field_ == Field::shape) {
      at_ = At::shape;
      return true;
    }
    if (at_ == At::tensor_value && field_ == Field::offsets) {
      at_ = At::offsets;
      n_offsets_ = 0;
      return true;
    }
    return scalar(Kind::container, nullptr);
  }
  bool key(json::string_t& k) {
    depth_.check();
    if (at_ == At::top) {
      if (k == "__metadata__") {
        if (seen_metadata_) dup(k);
        seen_metadata_ = in_metadata_ = true;
      } else {
        in_metadata_ = false;
        if (k.empty()) bad("a tensor has an empty name");
        if (index_.count(k)) dup(k);
      }
      key_ = std::move(k);
      at_ = At::top_value;
    } else if (at_ == At::metadata) {
      if (metadata_.count(k)) dup(k);
      key_ = std::move(k);
      at_ = At::metadata_value;
    } else {  // At::tensor
      bool* have = nullptr;
      if (k == "dtype") {
        field_ = Field::dtype;
        have = &have_dtype_;
      } else if (k == "shape") {
        field_ = Field::shape;
        have = &have_shape_;
      } else if (k == "data_offsets") {
        field_ = Field::offsets;
        have = &have_offsets_;
      } else {
        bad(tw() + ": unknown key '" + k + "'");
      }
      if (*have) dup(k);
      *have = true;
      at_ = At::tensor_value;
    }
    return true;
  }
  bool end_array() {
    depth_.close();
    if (at_ == At::offsets && n_offsets_ != 2) bad(tw() + ": data_offsets is not a [begin, end] pair");
    at_ = At::tensor;  // only shape and data_offsets arrays are ever opened
    return true;
  }
  bool end_object() {
    depth_.close();
    if (at_ == At::tensor) finish_tensor();
    at_ = at_ == At::top ? At::done : At::top;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    bad(std::string("header: bad JSON: ") + e.what());
  }

  // The message for the first tensor of an unknown dtype, or empty.
  const std::string& unsupported() const { return unsupported_; }

 private:
  enum class At { start, top, top_value, metadata, metadata_value, tensor, tensor_value, shape, offsets, done };
  enum class Field { dtype, shape, offsets };
  enum class Kind { u64, negative, string, container, other };

  [[noreturn]] void bad(const std::string& msg) const { ::loftq::detail::fail(Errc::parse_error, path_ + ": " + msg); }
  [[noreturn]] void dup(const std::string& k) const { bad("header: duplicate key '" + k + "'"); }
  std::string tw() const { return "tensor '" + t_.name + "'"; }

  std::uint64_t entry(Kind kind, const std::string& what) const {
    if (kind == Kind::negative) bad(tw() + ": " + what + " is negative");
    if (kind != Kind::u64) bad(tw() + ": " + what + " is not a non-negative integer");
    return u_;
  }

  // Every value but the objects and arrays the schema opens ends up here.
  bool scalar(Kind kind, json::string_t* s) {
    depth_.check();
    switch (at_) {
      case At::start:
        bad("header is not a JSON object");
      case At::top_value:
        if (in_metadata_) bad("__metadata__ is not an object");
        t_.name = key_;
        bad(tw() + ": entry is not an object");
      case At::metadata_value:
        if (kind != Kind::string) bad("__metadata__ entry '" + key_ + "' is not a string");
        metadata_.emplace(std::move(key_), std::move(*s));
        at_ = At::metadata;
        return true;
      case At::tensor_value:
        if (field_ == Field::dtype) {
          if (kind != Kind::string) bad(tw() + ": dtype is not a string");
          if (!parse_dtype(*s, t_.dtype)) {
            unknown_dtype_ = true;
            if (unsupported_.empty()) unsupported_ = path_ + ": " + tw() + ": unsupported dtype '" + *s + "'";
          }
        } else if (field_ == Field::shape) {
          bad(tw() + ": shape is not an array");
        } else {
          bad(tw() + ": data_offsets is not a [begin, end] pair");
        }
        at_ = At::tensor;
        return true;
      case At::shape:
        if (t_.shape.size() == 64) bad(tw() + ": shape has more than 64 dimensions");
        t_.shape.push_back(entry(kind, "shape entry"));
        return true;
      case At::offsets:
        if (n_offsets_ == 0)
          t_.begin = entry(kind, "data_offsets begin");
        else if (n_offsets_ == 1)
          t_.end = entry(kind, "data_offsets end");
        else
          bad(tw() + ": data_offsets is not a [begin, end] pair");
        ++n_offsets_;
        return true;
      default:  // top, metadata, tensor, done: the lexer allows only keys or the end there
        bad("header: unexpected JSON value");
    }
  }

  void finish_tensor() {
    const std::string tw = this->tw();
    if (!have_dtype_ || !have_shape_ || !have_offsets_) bad(tw + ": needs dtype, shape and data_offsets");
    std::uint64_t numel = 1;
    for (std::uint64_t x : t_.shape)
      if (mul_overflows(numel, x, numel)) bad(tw + ": shape element count overflows");
    t_.numel = numel;
    std::uint64_t expect = 0;
    if (!unknown_dtype_ && mul_overflows(numel, dtype_size(t_.dtype), expect)) bad(tw + ": byte count overflows");
    if (t_.end < t_.begin)
      bad(tw + ": data_offsets end " + std::to_string(t_.end) + " < begin " + std::to_string(t_.begin));
    if (t_.end > data_size_)
      bad(tw + ": data_offsets [" + std::to_string(t_.begin) + ", " + std::to_string(t_.end) +
          ") run past the data section (" + std::to_string(data_size_) + " bytes; file truncated?)");
    if (!unknown_dtype_ && t_.end - t_.begin != expect)
      bad(tw + ": holds " + std::to_string(t_.end - t_.begin) + " bytes but dtype " + dtype_name(t_.dtype) +
          " and its shape need " + std::to_string(expect));
    index_.emplace(t_.name, tensors_.size());
    tensors_.push_back(std::move(t_));
  }

  const std::string& path_;
  DepthGuard depth_;
  std::uint64_t data_size_;
  std::vector<TensorInfo>& tensors_;
  std::map<std::string, std::size_t>& index_;  // during the parse: the names seen
  std::map<std::string, std::string>& metadata_;
  At at_ = At::start;
  Field field_ = Field::dtype;
  bool in_metadata_ = false, seen_metadata_ = false;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false, unknown_dtype_ = false;
  std::string unsupported_;
  int n_offsets_ = 0;
  std::uint64_t u_ = 0;
  std::string key_;
  TensorInfo t_;
};

// Parses the header of the `size` bytes at `base` (the whole file, named
// `path` in messages): the data section's offset, the tensors in data-section
// order, their index by name and the __metadata__ strings.
inline void parse_header(const unsigned char* base, std::uint64_t size, const std::string& path,
                         std::uint64_t& data_offset, std::vector<TensorInfo>& tensors,
                         std::map<std::string, std::size_t>& index, std::map<std::string, std::string>& metadata) {
  auto bad = [&](const std::string& msg) { ::loftq::detail::fail(Errc::parse_error, path + ": " + msg); };
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > size - 8)
    bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) + " bytes)");
  if (n > kMaxHeaderBytes)
    bad("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
  if (n < 2) bad("header length " + std::to_string(n) + " is too small for a JSON object");
  data_offset = 8 + n;
  const std::uint64_t data_size = size - data_offset;
  const char* hb = reinterpret_cast<const char*>(base + 8);
  HeaderSax sax(path, data_size, tensors, index, metadata);
  sax_parse_strict(hb, hb + n, sax, path + ": header");

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
  if (!sax.unsupported().empty()) ::loftq::detail::fail(Errc::unsupported, sax.unsupported());
  for (std::size_t i = 0; i < tensors.size(); ++i) index[tensors[i].name] = i;
}

}  // namespace detail
}  // namespace io
}  // namespace loftq
