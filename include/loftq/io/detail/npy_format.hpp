#pragma once
// The .npy format's internals behind io/npy.hpp: header limits and parsing,
// descr decoding, little-endian loads and stores, bounded stream reads and
// the atomic file write.

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "loftq/error.hpp"

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif

namespace loftq {
namespace io {
namespace detail {

// numpy's own limits: NPY_MAXDIMS is 64 in numpy 2, and it refuses headers
// beyond a few kB unless told otherwise; 1 MiB leaves ample room while still
// bounding the work on a hostile length field.
inline constexpr std::size_t kNpyMaxDims = 64;
inline constexpr std::size_t kNpyMaxHeaderLen = std::size_t(1) << 20;
inline constexpr unsigned char kNpyMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

// Header text comes from the file; keep messages one line and short even when
// it is binary junk.
inline std::string npy_printable(const char* p, std::size_t n, std::size_t max = 40) {
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(p[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (n > max) out += "...";
  return out;
}

[[noreturn]] inline void npy_fail(Errc code, const std::string& name, const std::string& msg) {
  loftq::detail::fail(code, "npy '" + name + "': " + msg);
}

inline std::string npy_shape_string(const std::vector<std::size_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

inline std::string npy_descr_string(char kind, int itemsize) {
  return std::string("<") + kind + std::to_string(itemsize);
}

struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<std::size_t> shape;
};

// A strict reader for the one Python literal numpy writes: a dict with the
// keys 'descr', 'fortran_order' and 'shape'.  Anything outside that grammar is
// a parse_error; we never evaluate Python.
class NpyHeaderParser {
 public:
  NpyHeaderParser(const char* p, std::size_t n, const std::string& name) : p_(p), n_(n), name_(name) {}

  NpyHeader parse() {
    NpyHeader h;
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_ws();
    expect('{');
    skip_ws();
    while (!peek_is('}')) {
      std::string key = parse_string("dict key");
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        mark(have_descr, key);
        if (peek_is('[')) {
          npy_fail(Errc::unsupported, name_, "structured dtypes (descr is a list) are not supported");
        }
        h.descr = parse_string("'descr' value");
      } else if (key == "fortran_order") {
        mark(have_fortran, key);
        h.fortran_order = parse_bool();
      } else if (key == "shape") {
        mark(have_shape, key);
        h.shape = parse_shape();
      } else {
        error("unknown header key '" + npy_printable(key.data(), key.size()) + "'");
      }
      skip_ws();
      if (peek_is(',')) {
        ++i_;
        skip_ws();
      } else if (!peek_is('}')) {
        error("expected ',' or '}' after the value of '" + key + "'");
      }
    }
    ++i_;  // the '}'
    skip_ws();
    // numpy pads with spaces and ends with '\n'; whitespace of any kind is fine.
    if (i_ != n_) error("unexpected text after the header dict");
    if (!have_descr) error("header has no 'descr' key");
    if (!have_fortran) error("header has no 'fortran_order' key");
    if (!have_shape) error("header has no 'shape' key");
    return h;
  }

 private:
  [[noreturn]] void error(const std::string& msg) const {
    npy_fail(Errc::parse_error, name_, "bad header at offset " + std::to_string(i_) + ": " + msg);
  }

  void mark(bool& seen, const std::string& key) const {
    if (seen) error("duplicate header key '" + key + "'");
    seen = true;
  }

  bool at_end() const { return i_ >= n_; }
  bool peek_is(char c) const { return i_ < n_ && p_[i_] == c; }

  void skip_ws() {
    while (i_ < n_ && (p_[i_] == ' ' || p_[i_] == '\t' || p_[i_] == '\n' || p_[i_] == '\r')) ++i_;
  }

  void expect(char c) {
    if (at_end()) error(std::string("expected '") + c + "' but the header ended");
    if (p_[i_] != c) {
      error(std::string("expected '") + c + "', found '" + npy_printable(p_ + i_, 1) + "'");
    }
    ++i_;
  }

  // No escapes: numpy never writes them into these keys or values, and
  // refusing them keeps the grammar trivially bounded.
  std::string parse_string(const char* what) {
    if (at_end() || (p_[i_] != '\'' && p_[i_] != '"')) error(std::string("expected a quoted ") + what);
    const char q = p_[i_++];
    const std::size_t start = i_;
    while (i_ < n_ && p_[i_] != q) {
      if (p_[i_] == '\\' || p_[i_] == '\n') error(std::string("unsupported character in ") + what);
      ++i_;
    }
    if (at_end()) error(std::string("unterminated ") + what);
    std::string s(p_ + start, i_ - start);
    ++i_;
    return s;
  }

  bool match_word(const char* w) {
    const std::size_t len = std::strlen(w);
    if (n_ - i_ < len || std::memcmp(p_ + i_, w, len) != 0) return false;
    // "Trueish" is a name, not True.
    if (i_ + len < n_) {
      const char c = p_[i_ + len];
      if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') return false;
    }
    i_ += len;
    return true;
  }

  bool parse_bool() {
    if (match_word("True")) return true;
    if (match_word("False")) return false;
    error("'fortran_order' must be True or False");
  }

  // A non-negative Python int literal that fits std::size_t.
  std::size_t parse_dim() {
    if (at_end() || !std::isdigit(static_cast<unsigned char>(p_[i_]))) {
      if (peek_is('-')) error("negative dimension in 'shape'");
      error("expected a non-negative integer in 'shape'");
    }
    const std::size_t start = i_;
    std::size_t v = 0;
    const std::size_t max = std::numeric_limits<std::size_t>::max();
    while (i_ < n_ && std::isdigit(static_cast<unsigned char>(p_[i_]))) {
      const std::size_t d = static_cast<std::size_t>(p_[i_] - '0');
      if (v > (max - d) / 10) error("dimension in 'shape' overflows size_t");
      v = v * 10 + d;
      ++i_;
    }
    // Python 3 itself rejects "05"; a file that numpy cannot read is not ours to guess at.
    if (i_ - start > 1 && p_[start] == '0') error("dimension with a leading zero in 'shape'");
    if (i_ < n_ && (std::isalpha(static_cast<unsigned char>(p_[i_])) || p_[i_] == '_' || p_[i_] == '.')) {
      error("dimension in 'shape' is not an integer");
    }
    return v;
  }

  std::vector<std::size_t> parse_shape() {
    std::vector<std::size_t> shape;
    expect('(');
    skip_ws();
    if (peek_is(')')) {
      ++i_;
      return shape;
    }
    bool trailing_comma = false;
    for (;;) {
      if (shape.size() == kNpyMaxDims) {
        error("'shape' has more than " + std::to_string(kNpyMaxDims) + " dimensions");
      }
      shape.push_back(parse_dim());
      skip_ws();
      if (peek_is(')')) {
        trailing_comma = false;
        break;
      }
      expect(',');
      skip_ws();
      if (peek_is(')')) {
        trailing_comma = true;
        break;
      }
    }
    ++i_;  // the ')'
    // In Python "(5)" is the int 5, not a tuple, and numpy rejects it.
    if (shape.size() == 1 && !trailing_comma) error("'shape' (n) is not a tuple; a 1-d shape is written (n,)");
    return shape;
  }

  const char* p_;
  std::size_t n_;
  std::size_t i_ = 0;
  const std::string& name_;
};

// descr -> (itemsize, big_endian).  Only float32/float64 get through, or,
// with `integers`, only int32/int64 (token ids).
inline void npy_decode_descr(const std::string& descr, const std::string& name, int& itemsize, bool& big_endian,
                             bool integers = false) {
  std::size_t i = 0;
  big_endian = false;
  if (!descr.empty() && (descr[0] == '<' || descr[0] == '>' || descr[0] == '=' || descr[0] == '|')) {
    // numpy itself writes '<' or '>' for floats; '=' (native) and '|' (not
    // applicable) only come from other writers, and we read them as little
    // endian because that is what every such writer we know runs on.
    big_endian = descr[0] == '>';
    i = 1;
  }
  const std::string rest = descr.substr(i);
  const char kind = integers ? 'i' : 'f';
  if (rest == std::string(1, kind) + "4") {
    itemsize = 4;
  } else if (rest == std::string(1, kind) + "8") {
    itemsize = 8;
  } else {
    npy_fail(Errc::unsupported, name,
             "unsupported dtype '" + npy_printable(descr.data(), descr.size()) +
                 (integers ? "' (only int32 '<i4' and int64 '<i8' are supported)"
                           : "' (only float32 '<f4' and float64 '<f8' are supported)"));
  }
}

inline std::uint32_t npy_load_u32le(const unsigned char* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24);
}

inline std::uint64_t npy_load_u64le(const unsigned char* p) {
  return std::uint64_t(npy_load_u32le(p)) | (std::uint64_t(npy_load_u32le(p + 4)) << 32);
}

// Decoding through integers makes the code independent of the host's byte
// order; on little-endian hosts the compiler turns it into a plain load.
template <class Src>
inline Src npy_load(const unsigned char* p) {
  static_assert(std::is_same<Src, float>::value || std::is_same<Src, double>::value, "");
  Src v;
  if constexpr (sizeof(Src) == 4) {
    const std::uint32_t u = npy_load_u32le(p);
    std::memcpy(&v, &u, 4);
  } else {
    const std::uint64_t u = npy_load_u64le(p);
    std::memcpy(&v, &u, 8);
  }
  return v;
}

inline void npy_store_f32le(unsigned char* p, float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  p[0] = static_cast<unsigned char>(u);
  p[1] = static_cast<unsigned char>(u >> 8);
  p[2] = static_cast<unsigned char>(u >> 16);
  p[3] = static_cast<unsigned char>(u >> 24);
}

// Converting a finite value that the target type cannot hold is undefined
// behaviour in C++, so it is refused rather than left to become Inf.
template <class To, class From>
inline bool npy_fits(From v) {
  if constexpr (std::is_floating_point<From>::value && std::is_floating_point<To>::value &&
                (std::numeric_limits<To>::max() < std::numeric_limits<From>::max())) {
    return !std::isfinite(v) || std::fabs(v) <= static_cast<From>(std::numeric_limits<To>::max());
  } else {
    return true;
  }
}

inline unsigned long npy_pid() {
#if defined(_WIN32)
  return static_cast<unsigned long>(_getpid());
#else
  return static_cast<unsigned long>(getpid());
#endif
}

inline std::string npy_errno_suffix(int e) { return e ? std::string(": ") + std::strerror(e) : std::string(); }

// Write to a sibling temp file, then rename over the target, so a reader never
// sees a half-written file and a failed write never clobbers a good one.  The
// counter keeps two threads of one process writing the same path apart.
inline void npy_write_atomic(const std::string& path, const unsigned char* bytes, std::size_t n) {
  static std::atomic<unsigned long> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(npy_pid()) + "." + std::to_string(counter.fetch_add(1));
  auto give_up = [&](const std::string& what, int e) {
    std::remove(tmp.c_str());
    loftq::detail::fail(Errc::io_error, "cannot write '" + path + "': " + what + npy_errno_suffix(e));
  };
  {
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out.is_open()) give_up("cannot create temporary file '" + tmp + "'", errno);
    // ofstream::write takes a signed count; write in chunks that surely fit.
    const std::size_t chunk = std::size_t(1) << 30;
    for (std::size_t off = 0; off < n && out; off += chunk) {
      const std::size_t len = std::min(chunk, n - off);
      out.write(reinterpret_cast<const char*>(bytes + off), static_cast<std::streamsize>(len));
    }
    out.flush();
    const bool wrote = static_cast<bool>(out);
    const int write_errno = errno;
    // Close before any removal (Windows cannot delete an open file).  Data
    // still buffered is only written here, so a full disk can surface now.
    out.close();
    if (!wrote) give_up("write failed", write_errno);
    if (out.fail()) give_up("closing the file failed", errno);
  }
  errno = 0;
  if (std::rename(tmp.c_str(), path.c_str()) != 0) give_up("rename from temporary file failed", errno);
}

// What the prefix and header of a .npy image say: where the data starts and
// how many bytes of it there must be.
struct NpyHead {
  NpyHeader header;
  int itemsize = 0;
  bool big_endian = false;
  std::size_t offset = 0;  // of the data: prefix + header length
  std::size_t need = 0;    // data bytes the shape and dtype call for
};

// Validates the prefix and header of the `size` bytes at `bytes` (which may
// stop anywhere after the header).
inline NpyHead npy_parse_head(const unsigned char* bytes, std::size_t size, const std::string& name,
                              bool integers = false) {
  if (bytes == nullptr && size != 0) npy_fail(Errc::invalid_argument, name, "null buffer");
  if (size < sizeof(kNpyMagic) + 2 || std::memcmp(bytes, kNpyMagic, sizeof(kNpyMagic)) != 0) {
    npy_fail(Errc::parse_error, name, "not an npy file (bad magic string)");
  }
  const unsigned major = bytes[6], minor = bytes[7];
  std::size_t prefix = 0, header_len = 0;
  if (major == 1 && minor == 0) {
    prefix = 10;
    if (size < prefix) npy_fail(Errc::parse_error, name, "truncated before the header length");
    header_len = std::size_t(bytes[8]) | (std::size_t(bytes[9]) << 8);
  } else if ((major == 2 || major == 3) && minor == 0) {
    prefix = 12;
    if (size < prefix) npy_fail(Errc::parse_error, name, "truncated before the header length");
    header_len = npy_load_u32le(bytes + 8);
  } else {
    npy_fail(Errc::unsupported, name,
             "unsupported npy format version " + std::to_string(major) + "." + std::to_string(minor));
  }
  if (header_len > kNpyMaxHeaderLen) {
    npy_fail(Errc::parse_error, name, "header length " + std::to_string(header_len) + " exceeds the 1 MiB limit");
  }
  if (header_len > size - prefix) {
    npy_fail(Errc::parse_error, name,
             "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                 std::to_string(size - prefix) + " bytes after the prefix)");
  }

  NpyHead out;
  out.header = NpyHeaderParser(reinterpret_cast<const char*>(bytes + prefix), header_len, name).parse();
  npy_decode_descr(out.header.descr, name, out.itemsize, out.big_endian, integers);
  const std::vector<std::size_t>& shape = out.header.shape;

  // Zero dims make the array empty however large the others are; only the
  // non-zero dims can overflow, and checking them all keeps the verdict
  // independent of their order.
  std::size_t count = 1;
  bool empty = false;
  for (std::size_t d : shape) {
    if (d == 0) {
      empty = true;
      continue;
    }
    if (count > std::numeric_limits<std::size_t>::max() / d) {
      npy_fail(Errc::parse_error, name, "shape " + npy_shape_string(shape) + " overflows size_t");
    }
    count *= d;
  }
  if (empty) count = 0;
  const std::size_t isz = static_cast<std::size_t>(out.itemsize);
  if (count > std::numeric_limits<std::size_t>::max() / isz) {
    npy_fail(Errc::parse_error, name, "shape " + npy_shape_string(shape) + " overflows size_t in bytes");
  }
  out.need = count * isz;
  out.offset = prefix + header_len;
  return out;
}

// Reads up to `n` bytes into `buf` (appended); fewer only at end of input.
inline std::size_t npy_read_upto(std::istream& in, std::vector<unsigned char>& buf, std::size_t n,
                                 const std::string& path) {
  // Grown a piece at a time, so a header promising more than the input holds
  // costs no more memory than the input.
  const std::size_t piece = std::size_t(16) << 20;
  std::size_t total = 0;
  while (total < n && in) {
    const std::size_t old = buf.size(), want = std::min(piece, n - total);
    buf.resize(old + want);
    in.read(reinterpret_cast<char*>(buf.data() + old), static_cast<std::streamsize>(want));
    const std::size_t got = static_cast<std::size_t>(in.gcount());
    buf.resize(old + got);
    total += got;
    if (in.bad()) {
      loftq::detail::fail(Errc::io_error, "read error on '" + path + "'" + npy_errno_suffix(errno));
    }
  }
  return total;
}

}  // namespace detail
}  // namespace io
}  // namespace loftq
