// The cost of reading hostile JSON: safetensors headers and the strict JSON
// used for index files are parsed in time linear in their size, whatever their
// shape, and are refused (or accepted) with the right Errc. Each case also has
// a wall-clock bound, generous on purpose: it only has to catch a quadratic
// parser, which takes minutes here (with nlohmann's callback DOM parser, 1 MB
// of sibling empty objects under distinct keys was not done after 90 s, and
// 60,000 valid tensors not after 13 minutes, on a loaded 2-core machine).
#include <doctest/doctest.h>

#include <loftq/io/safetensors.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <unistd.h>

#include "../support/scratch_dir.hpp"
#include "../support/time_bound.hpp"

// Its own namespace: the test program compiles this file with others as one
// unit (tests/io/CMakeLists.txt).
namespace test_header_cost {

namespace st = loftq::io;

namespace {

std::string path_of(const std::string& name) { return loftq_test::scratch_dir("header_cost") + "/" + name; }

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

void write_file(const std::string& path, const std::string& header, std::size_t data_bytes = 0) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  const std::string bytes = le64(header.size()) + header + std::string(data_bytes, '\0');
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Measured on a loaded 2-core machine: the whole file takes 1.3 s in a
// release build (no single parse above 0.3 s) and 6.4-12 s with ASan and UBSan
// (-O1), one parse there up to 5.7 s; the quadratic parser needed minutes for
// a single case.
const double kBoundSeconds = loftq_test::time_bound(5.0);
using loftq_test::seconds_since;

// Opens the file, returning the error code (nullopt when it opens), and
// checks the time taken.
std::optional<loftq::Errc> open_code(const std::string& name, const std::string& header, std::size_t data_bytes = 0,
                                     std::size_t* tensors = nullptr) {
  const std::string p = path_of(name);
  write_file(p, header, data_bytes);
  const auto t0 = std::chrono::steady_clock::now();
  std::optional<loftq::Errc> code;
  try {
    st::SafetensorsFile f(p);
    if (tensors) *tensors = f.tensors().size();
  } catch (const loftq::Error& e) {
    code = e.code();
  }
  const double s = seconds_since(t0);
  CAPTURE(name);
  CAPTURE(header.size());
  CHECK(s < kBoundSeconds);
  ::unlink(p.c_str());
  return code;
}

// `{"__metadata__":{"a":{"a":...{}...}}}` about `bytes` long.
std::string nested_objects(std::size_t bytes) {
  std::string h = "{\"__metadata__\":";
  std::size_t levels = 0;
  for (; h.size() + 5 * levels < bytes; ++levels) h += "{\"a\":";
  h += "{}";
  h.append(levels, '}');
  return h + "}";
}

// `prefix` + `item,item,...,item` + `suffix`, about `bytes` long.
std::string repeated(const std::string& prefix, const std::string& item, const std::string& suffix, std::size_t bytes) {
  std::string h = prefix + item;
  h.reserve(bytes + suffix.size() + item.size() + 1);
  while (h.size() < bytes) h += "," + item;
  return h + suffix;
}

}  // namespace

TEST_CASE("deeply nested headers are refused in linear time") {
  for (std::size_t mb : {1, 4}) {
    CAPTURE(mb);
    const std::size_t n = mb << 20;
    CHECK(open_code("nested.safetensors", nested_objects(n)) == loftq::Errc::parse_error);
    // Nesting beyond the depth limit outside __metadata__ too, objects and arrays.
    std::string objs;
    for (std::size_t i = 0; objs.size() < n; ++i) objs += "{\"a\":";
    CHECK(open_code("nested2.safetensors", objs) == loftq::Errc::parse_error);
    CHECK(open_code("nested3.safetensors", std::string(n, '[') + std::string(n, ']')) == loftq::Errc::parse_error);
  }
  // At the depth limit but refused by the schema: metadata values are strings.
  CHECK(open_code("depth8.safetensors", R"({"__metadata__":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{}}}}}}}}})") ==
        loftq::Errc::parse_error);
}

TEST_CASE("wide headers of empty containers are refused in linear time") {
  for (std::size_t mb : {1, 4}) {
    CAPTURE(mb);
    const std::size_t n = mb << 20;
    // Distinct keys: a duplicate would stop any strict parser early.
    std::string sib = R"({"__metadata__":{)";
    for (std::size_t k = 0; sib.size() < n; ++k) sib += (k ? ",\"" : "\"") + std::to_string(k) + "\":{}";
    CHECK(open_code("siblings.safetensors", sib + "}}") == loftq::Errc::parse_error);
    CHECK(open_code("siblings2.safetensors", repeated(R"({"__metadata__":{"x":{})", R"("y":{})", "}}", n)) ==
          loftq::Errc::parse_error);
    CHECK(open_code("flat.safetensors", repeated(R"({"__metadata__":[)", "[]", "]}", n)) == loftq::Errc::parse_error);
    CHECK(open_code("flatshape.safetensors", repeated(R"({"a":{"dtype":"F32","data_offsets":[0,0],"shape":[)", "[]",
                                                      "]}}", n)) == loftq::Errc::parse_error);
    CHECK(open_code("flattop.safetensors", repeated("[", "[]", "]", n)) == loftq::Errc::parse_error);
    // Schema-valid up to a missing brace at the very end: the whole text is
    // lexed and every metadata string kept before the error.
    std::string h = R"({"__metadata__":{)";
    for (std::size_t k = 0; h.size() < n; ++k) h += (k ? ",\"" : "\"") + std::to_string(k) + "\":\"v\"";
    CHECK(open_code("lastbyte.safetensors", h + "}") == loftq::Errc::parse_error);
    CHECK(open_code("metadata.safetensors", h + "}}") == std::nullopt);
  }
}

TEST_CASE("60,000 zero-size tensors open in linear time") {
  std::string h = R"({"__metadata__":{"format":"pt"})";
  for (int i = 0; i < 60000; ++i)
    h += ",\"model.layers." + std::to_string(i) + R"(.weight":{"dtype":"F32","shape":[0,4096],"data_offsets":[0,0]})";
  h += "}";
  std::size_t count = 0;
  CHECK(open_code("zero.safetensors", h, 0, &count) == std::nullopt);
  CHECK(count == 60000);
  // The same with one duplicate name at the end.
  h.back() = ',';
  h += R"("model.layers.0.weight":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})";
  CHECK(open_code("zerodup.safetensors", h) == loftq::Errc::parse_error);
}

TEST_CASE("strict JSON (index files): linear time, depth and duplicate keys") {
  auto parse = [](const std::string& text) {
    return st::detail::parse_json_strict(text.data(), text.data() + text.size(), "test");
  };
  auto code_of = [&](const std::string& text) {
    const auto t0 = std::chrono::steady_clock::now();
    std::optional<loftq::Errc> code;
    try {
      parse(text);
    } catch (const loftq::Error& e) {
      code = e.code();
    }
    CHECK(seconds_since(t0) < kBoundSeconds);
    return code;
  };
  const std::size_t n = 4u << 20;
  // Valid and wide: built in full, in linear time.
  const std::string flat = repeated(R"({"metadata":{"x":[)", "[]", "]}}", n);
  CHECK(code_of(flat) == std::nullopt);
  const std::string small = repeated(R"({"metadata":{"x":[)", "[]", "]}}", 1u << 20);
  CHECK(parse(small)["metadata"]["x"].size() == (small.size() - 20) / 3);
  CHECK(code_of(repeated(R"({"metadata":{"x":{})", R"("y":{})", "}}", n)) == loftq::Errc::parse_error);  // duplicate
  std::string sib = R"({"m":{)";
  for (std::size_t k = 0; sib.size() < n; ++k) sib += (k ? ",\"" : "\"") + std::to_string(k) + "\":{}";
  CHECK(code_of(sib + "}}") == std::nullopt);
  CHECK(code_of(nested_objects(n)) == loftq::Errc::parse_error);
  // Depth: 8 levels below the top are allowed, the 9th is refused.
  CHECK(code_of(std::string(9, '[') + std::string(9, ']')) == std::nullopt);
  CHECK(code_of(std::string(10, '[') + std::string(10, ']')) == loftq::Errc::parse_error);
  CHECK(code_of(std::string(9, '[') + "1" + std::string(9, ']')) == loftq::Errc::parse_error);
  CHECK(code_of(R"({"a":{"b":1,"b":2}})") == loftq::Errc::parse_error);
  CHECK(code_of(R"({"a":1} )") == std::nullopt);
  CHECK(code_of(R"({"a":1} x)") == loftq::Errc::parse_error);
  CHECK(code_of(std::string("{\"a\":1}\0x", 9)) == loftq::Errc::parse_error);
  CHECK(code_of("\xEF\xBB\xBF{\"a\":1}") == loftq::Errc::parse_error);
}

}  // namespace test_header_cost
