// loftq/io/gguf.hpp under hostile input: every defect a loftq::Error, reads
// linear in the file and inside each tensor.
#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include "common/gguf_layout.hpp"
#include "gguf_support.hpp"
#include "../support/time_bound.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace gio = loftq::io;
namespace gl = gguf_layout;
using namespace gguf_test;  // NOLINT(google-build-using-namespace): this test's own helpers

}  // namespace

TEST_CASE("hostile files: every defect is a loftq::Error") {
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string_array("k.arr", {"x", "yy"});
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  b.add_tensor("q", {64}, gl::Q8_0, std::vector<unsigned char>(68, 0));
  const std::vector<unsigned char> good = b.bytes();
  CHECK(open_code(good) == 0);
  SUBCASE("every truncation") {
    std::size_t last_ok = good.size();
    for (std::size_t n = 0; n < good.size(); ++n)
      if (open_code(std::vector<unsigned char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n))) == 0)
        last_ok = std::min(last_ok, n);
    // Only the final tensor's padding may go missing.
    CHECK(last_ok >= good.size() - 31);
  }
  SUBCASE("magic, version") {
    std::vector<unsigned char> v = good;
    v[0] = 'X';
    CHECK(open_code(v) == kParse);
    v = good;
    v[4] = 2;
    CHECK(open_code(v) == kUnsup);
  }
  SUBCASE("huge counts and lengths") {
    Raw r;
    r.head(0, std::uint64_t(1) << 62);
    CHECK(open_code(r.b) == kParse);
    r.head(0, loftq::io::kGgufMaxKVs + 1);  // more than the limit, though the file could hold them
    r.data(14 * (loftq::io::kGgufMaxKVs + 1));
    CHECK(open_code(r.b) == kParse);
    r.head(std::uint64_t(1) << 62, 0);
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.u64(std::uint64_t(-1));  // key length
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.str("k");
    r.u32(gl::T_ARRAY);
    r.u32(gl::T_U64);
    r.u64(std::uint64_t(1) << 61);
    r.data(64);
    CHECK(open_code(r.b) == kParse);
    r.head(0, 1);
    r.str("k");
    r.u32(gl::T_ARRAY);
    r.u32(gl::T_STRING);
    r.u64(3);
    r.str("a");
    r.u64(std::uint64_t(1) << 40);  // second string's length
    CHECK(open_code(r.b) == kParse);
  }
  SUBCASE("value types") {
    auto kv = [](std::uint32_t type, std::vector<unsigned char> value) {
      return one_tensor(
          [&](Raw& r) {
            r.str("k");
            r.u32(type);
            r.b.insert(r.b.end(), value.begin(), value.end());
          },
          1);
    };
    CHECK(open_code(kv(gl::T_U32, {1, 0, 0, 0})) == 0);
    CHECK(open_code(kv(13, {0, 0, 0, 0})) == kParse);
    CHECK(open_code(kv(gl::T_BOOL, {2})) == kParse);
    CHECK(open_code(kv(gl::T_ARRAY, {gl::T_ARRAY, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})) == kUnsup);
    CHECK(open_code(kv(gl::T_ARRAY, {77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})) == kParse);
    CHECK(open_code(kv(gl::T_ARRAY, {gl::T_BOOL, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 5})) == kParse);
  }
  SUBCASE("keys: empty, duplicate; alignment") {
    auto two = [](const std::string& k1, const std::string& k2) {
      return one_tensor(
          [&](Raw& r) {
            for (const auto& k : {k1, k2}) {
              r.str(k);
              r.u32(gl::T_U8);
              r.b.push_back(1);
            }
          },
          2);
    };
    CHECK(open_code(two("a", "b")) == 0);
    CHECK(open_code(two("a", "a")) == kParse);
    CHECK(open_code(two("", "b")) == kParse);
    auto align = [](std::uint32_t type, std::uint64_t v) {
      return one_tensor(
          [&](Raw& r) {
            r.str("general.alignment");
            r.u32(type);
            r.u32(v);
          },
          1);
    };
    CHECK(open_code(align(gl::T_U32, 32)) == 0);
    CHECK(open_code(align(gl::T_U32, 48)) == kParse);
    CHECK(open_code(align(gl::T_U32, 0)) == kParse);
    CHECK(open_code(align(gl::T_I32, 32)) == kParse);
  }
  SUBCASE("tensor infos") {
    auto file = [](const std::function<void(Raw&)>& infos, std::uint64_t nt, std::size_t data = 64) {
      Raw r;
      r.head(nt, 0);
      infos(r);
      r.pad();
      r.data(data);
      return r.b;
    };
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 0); }, 1)) == 0);
    CHECK(open_code(file([](Raw& r) { r.tensor("", {8}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor(std::string(64, 'n'), {8}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor(std::string(63, 'n'), {8}, 0, 0); }, 1)) == 0);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {1, 1, 1, 1, 1}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8, 0}, 0, 0); }, 1)) == kParse);
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {std::uint64_t(1) << 40, std::uint64_t(1) << 40}, 0, 0);
              },
              1)) == kParse);
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {std::uint64_t(1) << 62, 4}, 8, 0);
              },
              1)) == kParse);  // bytes overflow
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 99, 0); }, 1)) == kUnsup);
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {33}, 8, 0); }, 1)) == kParse);  // not whole Q8_0 blocks
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 1); }, 1)) == kParse);   // misaligned
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, 32); }, 1)) == kParse);  // a gap
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {8}, 0, 32);
                r.tensor("b", {8}, 0, 0);
              },
              2)) == kParse);  // out of order
    CHECK(open_code(file(
              [](Raw& r) {
                r.tensor("a", {8}, 0, 0);
                r.tensor("a", {8}, 0, 32);
              },
              2)) == kParse);                                                            // duplicate
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {64}, 0, 0); }, 1, 64)) == kParse);  // past the end
    CHECK(open_code(file([](Raw& r) { r.tensor("a", {8}, 0, std::uint64_t(-32)); }, 1)) == kParse);
  }
}

TEST_CASE("a long key of many strings reads in time linear in the file") {
  // A 1 MiB key holding 16,384 empty strings (a 1.2 MB file): the reader once
  // built an error message naming the key for every element, 16 GB of copies.
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_string_array(std::string(std::size_t(1) << 20, 'k'), std::vector<std::string>(16384));
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(open_code(b.bytes()) == 0);
  // Generous (a loaded machine, sanitizers); the quadratic reader took 21-34 s.
  CHECK(loftq_test::seconds_since(t0) < loftq_test::time_bound(5.0));
}

TEST_CASE("reads stay inside the tensor, and a file that changes is an error") {
  gl::Builder b;
  b.add_string("general.architecture", "llama");
  b.add_tensor("w", {32, 2}, gl::F32, std::vector<unsigned char>(256, 0));
  TempFile f;
  f.write(b.bytes());
  gio::GgufFile g(f.path);
  unsigned char buf[8];
  CHECK_THROWS_AS(g.read_bytes(g.tensors()[0], 250, 8, buf), loftq::Error);
  CHECK_THROWS_AS(g.read_bytes(g.tensors()[0], std::uint64_t(-1), 2, buf), loftq::Error);
  CHECK(g.read_matrix(g.tensors()[0]).rows() == 2);
  REQUIRE(::truncate(f.path.c_str(), 100) == 0);
  try {
    g.read_matrix(g.tensors()[0]);
    FAIL("no error");
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::io_error);
  }
}
