#pragma once
// JSON as hostile input: duplicate keys and deep nesting refused, NUL bytes
// and a byte-order mark refused, integers checked, size arithmetic checked for
// overflow. Parsing goes through nlohmann's SAX interface, so its cost is
// linear in the text: the callback DOM parser rescans a container's elements
// each time a child container closes (quadratic in the sibling count) and
// builds every value before a callback can refuse it.

#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
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

// Refuses what nlohmann's lexer would silently accept: a leading UTF-8 BOM
// (skipped) and a NUL byte (taken as the end of the input, so whatever
// follows it would never be looked at).
inline void check_json_text(const char* begin, const char* end, const std::string& what) {
  const std::size_t n = static_cast<std::size_t>(end - begin);
  if (n >= 3 && static_cast<unsigned char>(begin[0]) == 0xEF && static_cast<unsigned char>(begin[1]) == 0xBB &&
      static_cast<unsigned char>(begin[2]) == 0xBF)
    ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON: starts with a UTF-8 byte-order mark");
  if (const void* z = std::memchr(begin, '\0', n))
    ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON: NUL byte at offset " +
                                                 std::to_string(static_cast<const char*>(z) - begin));
}

// Depth bookkeeping for the SAX handlers, the rule the reader has always
// applied: a container may open inside at most max_depth open containers, and
// a key or value may appear inside at most max_depth, so a container at depth
// max_depth (the top level is depth 0) must be empty.
class DepthGuard {
 public:
  DepthGuard(std::string what, int max_depth) : what_(std::move(what)), max_depth_(max_depth) {}
  void open() {
    check();
    ++open_;
  }
  void close() { --open_; }
  void check() const {
    if (open_ > max_depth_)
      ::loftq::detail::fail(Errc::parse_error, what_ + ": JSON nested deeper than " + std::to_string(max_depth_));
  }
  const std::string& what() const { return what_; }

 private:
  std::string what_;
  int max_depth_;
  int open_ = 0;
};

// Runs `sax` over [begin, end): the whole text must be one JSON value (trailing
// whitespace allowed). Errors from the lexer become Errc::parse_error; the
// handler throws its own loftq::Error to stop at the first violation.
template <class Sax>
void sax_parse_strict(const char* begin, const char* end, Sax& sax, const std::string& what) {
  check_json_text(begin, end, what);
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(begin, end, &sax, nlohmann::json::input_format_t::json, /*strict=*/true,
                                   /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON: " + e.what());
  }
  if (!ok) ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON");
}

// Builds a DOM while checking depth and duplicate keys as the events arrive.
class StrictDomSax {
 public:
  using json = nlohmann::json;
  StrictDomSax(json& root, const std::string& what, int max_depth) : root_(root), depth_(what, max_depth) {}

  bool null() { return add(nullptr); }
  bool boolean(bool v) { return add(v); }
  bool number_integer(json::number_integer_t v) { return add(v); }
  bool number_unsigned(json::number_unsigned_t v) { return add(v); }
  bool number_float(json::number_float_t v, const json::string_t&) { return add(v); }
  bool string(json::string_t& v) { return add(std::move(v)); }
  bool binary(json::binary_t&) { ::loftq::detail::fail(Errc::parse_error, depth_.what() + ": bad JSON: binary value"); }
  bool start_object(std::size_t) {
    depth_.open();
    stack_.push_back(place(json::object()));
    return true;
  }
  bool key(json::string_t& k) {
    depth_.check();
    json& obj = *stack_.back();
    // std::map-backed objects: the lookup is logarithmic, no side set needed.
    if (obj.contains(k)) ::loftq::detail::fail(Errc::parse_error, depth_.what() + ": duplicate key '" + k + "'");
    slot_ = &obj[std::move(k)];
    return true;
  }
  bool end_object() {
    depth_.close();
    stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) {
    depth_.open();
    stack_.push_back(place(json::array()));
    return true;
  }
  bool end_array() {
    depth_.close();
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    ::loftq::detail::fail(Errc::parse_error, depth_.what() + ": bad JSON: " + e.what());
  }

 private:
  template <class V>
  bool add(V&& v) {
    depth_.check();
    place(json(std::forward<V>(v)));
    return true;
  }
  // Puts a value where the grammar says it goes; the returned pointer stays
  // valid while it is open, since nothing is added to its parent meanwhile.
  json* place(json v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return &root_;
    }
    json& top = *stack_.back();
    if (top.is_array()) {
      top.get_ref<json::array_t&>().push_back(std::move(v));
      return &top.get_ref<json::array_t&>().back();
    }
    *slot_ = std::move(v);
    return slot_;
  }

  json& root_;
  DepthGuard depth_;
  std::vector<json*> stack_;
  json* slot_ = nullptr;
};

// Parses JSON text, rejecting duplicate keys at any depth, nesting deeper
// than max_depth, NUL bytes and a leading BOM. `what` prefixes the messages.
inline nlohmann::json parse_json_strict(const char* begin, const char* end, const std::string& what,
                                        int max_depth = 8) {
  nlohmann::json out;
  StrictDomSax sax(out, what, max_depth);
  sax_parse_strict(begin, end, sax, what);
  return out;
}

inline nlohmann::json parse_json_strict(const std::string& text, const std::string& what, int max_depth = 8) {
  return parse_json_strict(text.data(), text.data() + text.size(), what, max_depth);
}

}  // namespace detail

}  // namespace io
}  // namespace loftq
