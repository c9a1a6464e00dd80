#pragma once
// Shared by the .npy tests: images assembled byte by byte (not by the writer
// under test), file helpers and error capture.

#include "loftq/io/npy.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace npy_test {

using loftq::Errc;
using loftq::io::NpyArray;
using loftq::io::parse_npy;
using Bytes = std::vector<unsigned char>;
namespace fs = std::filesystem;

template <class F>
std::optional<loftq::Error> error_of(F&& f) {
  try {
    f();
  } catch (const loftq::Error& e) {
    return e;
  }
  return std::nullopt;
}

bool contains(const std::string& s, const std::string& needle) { return s.find(needle) != std::string::npos; }

#define NPY_CHECK_ERRC(expr, errc)                                            \
  do {                                                                        \
    auto npy_err_ = error_of([&] { (void)(expr); });                          \
    REQUIRE_MESSAGE(npy_err_.has_value(), "no loftq::Error from " #expr);     \
    CHECK_MESSAGE(npy_err_->code() == (errc), std::string(npy_err_->what())); \
  } while (0)

// Magic, version, header-length field and header text exactly as given: the
// caller controls padding and the declared length.
inline Bytes raw_image(int major, const std::string& header, std::size_t declared_len, const Bytes& data) {
  Bytes b = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), 0};
  b.push_back(static_cast<unsigned char>(declared_len & 0xff));
  b.push_back(static_cast<unsigned char>((declared_len >> 8) & 0xff));
  if (major >= 2) {
    b.push_back(static_cast<unsigned char>((declared_len >> 16) & 0xff));
    b.push_back(static_cast<unsigned char>((declared_len >> 24) & 0xff));
  }
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

// A well-formed image: header padded with spaces and ended by '\n' so the data
// starts on a 64-byte boundary, as numpy writes it.
inline Bytes image(const std::string& dict, const Bytes& data, int major = 1) {
  const std::size_t prefix = major >= 2 ? 12 : 10;
  std::string h = dict;
  while ((prefix + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  return raw_image(major, h, h.size(), data);
}

inline std::string dict(const std::string& descr, bool fortran, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
}

inline Bytes f32le(const std::vector<float>& v) {
  Bytes b;
  for (float f : v) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    for (int k = 0; k < 4; ++k) b.push_back(static_cast<unsigned char>(u >> (8 * k)));
  }
  return b;
}

inline Bytes f64le(const std::vector<double>& v) {
  Bytes b;
  for (double d : v) {
    std::uint64_t u;
    std::memcpy(&u, &d, 8);
    for (int k = 0; k < 8; ++k) b.push_back(static_cast<unsigned char>(u >> (8 * k)));
  }
  return b;
}

inline Bytes reversed_items(Bytes b, std::size_t itemsize) {
  for (std::size_t k = 0; k + itemsize <= b.size(); k += itemsize) {
    std::reverse(b.begin() + static_cast<std::ptrdiff_t>(k), b.begin() + static_cast<std::ptrdiff_t>(k + itemsize));
  }
  return b;
}

NpyArray parse(const Bytes& b) { return parse_npy(b.data(), b.size()); }

inline std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A private directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() / ("loftq_npy_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

inline void write_file(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(out.good());
}

}  // namespace npy_test
