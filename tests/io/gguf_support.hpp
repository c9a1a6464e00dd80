#pragma once
// The GGUF tests' shared pieces: a temporary file, and a header assembled
// field by field so that each field can be broken (test_gguf.cpp,
// test_gguf_hostile.cpp).
#include <loftq/error.hpp>
#include <loftq/io/gguf.hpp>

#include "common/gguf_layout.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <unistd.h>

namespace gguf_test {

namespace gio = loftq::io;
namespace gl = gguf_layout;

struct TempFile {
  std::string path;
  TempFile() {
    char tmpl[] = "/tmp/loftq-test-gguf-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = tmpl;
  }
  ~TempFile() { ::unlink(path.c_str()); }
  void write(const std::vector<unsigned char>& b) const {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
};

// The header of a file, assembled field by field so each can be broken.
struct Raw {
  std::vector<unsigned char> b;
  void u32(std::uint64_t v) { gl::Builder::put(b, v, 4); }
  void u64(std::uint64_t v) { gl::Builder::put(b, v, 8); }
  void str(const std::string& s) { gl::Builder::put_str(b, s); }
  void head(std::uint64_t nt, std::uint64_t nkv, std::uint32_t version = 3) {
    b = {'G', 'G', 'U', 'F'};
    u32(version);
    u64(nt);
    u64(nkv);
  }
  void tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t off) {
    str(name);
    u32(ne.size());
    for (auto e : ne) u64(e);
    u32(type);
    u64(off);
  }
  void pad(std::size_t a = 32) { b.resize((b.size() + a - 1) / a * a, 0); }
  void data(std::size_t n) { b.resize(b.size() + n, 0x11); }
};

// Opens bytes as a GGUF file; returns the Errc of the failure, or 0.
int open_code(const std::vector<unsigned char>& bytes) {
  static const TempFile f;
  f.write(bytes);
  try {
    gio::GgufFile g(f.path);
    return 0;
  } catch (const loftq::Error& e) {
    return static_cast<int>(e.code());
  }
}
const int kParse = static_cast<int>(loftq::Errc::parse_error), kUnsup = static_cast<int>(loftq::Errc::unsupported);

// One F32 tensor "t" of 8 elements after `kvs`.
std::vector<unsigned char> one_tensor(const std::function<void(Raw&)>& kvs, std::uint64_t nkv) {
  Raw r;
  r.head(1, nkv);
  kvs(r);
  r.tensor("t", {8}, 0, 0);
  r.pad();
  r.data(32);
  return r.b;
}

}  // namespace gguf_test
