#pragma once
// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// The parser is meant to face untrusted bytes (it is a fuzzing target), so it
// checks every length against the input before it reads or allocates, and
// every failure is a loftq::Error, never a crash.  Only float32 and float64
// arrays are accepted: that is all a weight matrix can be, and refusing the
// rest early keeps the byte-order handling to two item sizes.

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

#include <Eigen/Core>

#include "loftq/error.hpp"

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif

namespace loftq {
namespace io {

// One parsed .npy array.  `data` holds the payload in little-endian byte
// order (swapped already if the file was big endian), in the file's element
// order: C order unless `fortran_order`.
struct NpyArray {
  std::vector<std::size_t> shape;  // empty for a 0-d array (one element)
  bool fortran_order = false;
  char kind = 'f';   // always 'f' after parse_npy
  int itemsize = 4;  // 4 or 8 after parse_npy
  std::vector<unsigned char> data;

  // Product of the dims; parse_npy has already proved it cannot overflow.
  std::size_t element_count() const noexcept {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;
    return n;
  }
};

template <class Scalar>
using NpyMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

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
  NpyHeaderParser(const char* p, std::size_t n, const std::string& name)
      : p_(p), n_(n), name_(name) {}

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
          npy_fail(Errc::unsupported, name_,
                   "structured dtypes (descr is a list) are not supported");
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
    npy_fail(Errc::parse_error, name_,
             "bad header at offset " + std::to_string(i_) + ": " + msg);
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

// descr -> (itemsize, big_endian).  Only float32/float64 get through.
inline void npy_decode_descr(const std::string& descr, const std::string& name, int& itemsize,
                             bool& big_endian) {
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
  if (rest == "f4") {
    itemsize = 4;
  } else if (rest == "f8") {
    itemsize = 8;
  } else {
    npy_fail(Errc::unsupported, name,
             "unsupported dtype '" + npy_printable(descr.data(), descr.size()) +
                 "' (only float32 '<f4' and float64 '<f8' are supported)");
  }
}

inline std::uint32_t npy_load_u32le(const unsigned char* p) {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
         (std::uint32_t(p[3]) << 24);
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

template <class Scalar, class Src>
inline void npy_fill(NpyMatrix<Scalar>& M, const NpyArray& a, const std::string& name) {
  const Eigen::Index rows = M.rows(), cols = M.cols();
  // An empty array may still declare ~2^62 rows: looping over them would
  // spin for years without touching an element.
  if (rows == 0 || cols == 0) return;
  const unsigned char* base = a.data.data();
  for (Eigen::Index i = 0; i < rows; ++i) {
    for (Eigen::Index j = 0; j < cols; ++j) {
      const std::size_t k = a.fortran_order ? static_cast<std::size_t>(j * rows + i)
                                            : static_cast<std::size_t>(i * cols + j);
      const Src v = npy_load<Src>(base + k * sizeof(Src));
      if (!npy_fits<Scalar>(v)) {
        npy_fail(Errc::non_finite, name,
                 "element (" + std::to_string(i) + ", " + std::to_string(j) +
                     ") is out of range for the target float type");
      }
      M(i, j) = static_cast<Scalar>(v);
    }
  }
}

inline unsigned long npy_pid() {
#if defined(_WIN32)
  return static_cast<unsigned long>(_getpid());
#else
  return static_cast<unsigned long>(getpid());
#endif
}

inline std::string npy_errno_suffix(int e) {
  return e ? std::string(": ") + std::strerror(e) : std::string();
}

// Write to a sibling temp file, then rename over the target, so a reader never
// sees a half-written file and a failed write never clobbers a good one.  The
// counter keeps two threads of one process writing the same path apart.
inline void npy_write_atomic(const std::string& path, const unsigned char* bytes, std::size_t n) {
  static std::atomic<unsigned long> counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(npy_pid()) + "." +
                          std::to_string(counter.fetch_add(1));
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

}  // namespace detail

namespace detail {

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
inline NpyHead npy_parse_head(const unsigned char* bytes, std::size_t size, const std::string& name) {
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
    npy_fail(Errc::parse_error, name,
             "header length " + std::to_string(header_len) + " exceeds the 1 MiB limit");
  }
  if (header_len > size - prefix) {
    npy_fail(Errc::parse_error, name,
             "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                 std::to_string(size - prefix) + " bytes after the prefix)");
  }

  NpyHead out;
  out.header = NpyHeaderParser(reinterpret_cast<const char*>(bytes + prefix), header_len, name).parse();
  npy_decode_descr(out.header.descr, name, out.itemsize, out.big_endian);
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

// Parses a complete .npy image.  Safe on arbitrary bytes: every failure is a
// loftq::Error (parse_error for malformed input, unsupported for valid files
// of a dtype other than float32/float64).  `name` only labels messages.
inline NpyArray parse_npy(const unsigned char* bytes, std::size_t size,
                          const std::string& name = "<memory>") {
  using detail::npy_fail;
  detail::NpyHead h = detail::npy_parse_head(bytes, size, name);
  const std::size_t need = h.need, offset = h.offset;
  const std::size_t have = size - offset;
  if (have < need) {
    npy_fail(Errc::parse_error, name,
             "truncated data: shape " + detail::npy_shape_string(h.header.shape) + " needs " + std::to_string(need) +
                 " bytes, file has " + std::to_string(have));
  }
  if (have > need) {
    npy_fail(Errc::parse_error, name,
             std::to_string(have - need) + " trailing bytes after the data (expected " + std::to_string(need) +
                 " bytes, file has " + std::to_string(have) + ")");
  }

  NpyArray a;
  a.shape = std::move(h.header.shape);
  a.fortran_order = h.header.fortran_order;
  a.kind = 'f';
  a.itemsize = h.itemsize;
  a.data.assign(bytes + offset, bytes + size);
  if (h.big_endian) {
    const std::size_t isz = static_cast<std::size_t>(h.itemsize);
    for (std::size_t k = 0; k < need; k += isz) std::reverse(a.data.begin() + k, a.data.begin() + k + isz);
  }
  return a;
}

// Reads and parses a .npy file, or any stream (a pipe, /dev/stdin): never
// reads more than the prefix, the header and the data the header declares,
// plus one byte to find out whether anything follows; trailing data is a
// parse_error as in parse_npy, found without waiting for its end. Memory is
// bounded by what was actually read. The OS refusing the read is io_error.
inline NpyArray read_npy(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open()) {
    loftq::detail::fail(Errc::io_error, "cannot open '" + path + "' for reading" + detail::npy_errno_suffix(errno));
  }
  // Each step reads exactly what the bytes so far call for. A short read
  // means a truncated input, which parse_npy reports with its usual message.
  std::vector<unsigned char> buf;
  const std::size_t magic = sizeof(detail::kNpyMagic) + 2;
  if (detail::npy_read_upto(in, buf, magic, path) < magic) return parse_npy(buf.data(), buf.size(), path);
  const bool known = std::memcmp(buf.data(), detail::kNpyMagic, sizeof(detail::kNpyMagic)) == 0 &&
                     (buf[6] == 1 || buf[6] == 2 || buf[6] == 3) && buf[7] == 0;
  if (known) {  // otherwise npy_parse_head reports what is wrong
    const std::size_t prefix = buf[6] == 1 ? 10 : 12;
    if (detail::npy_read_upto(in, buf, prefix - magic, path) < prefix - magic)
      return parse_npy(buf.data(), buf.size(), path);
    const std::size_t header_len =
        prefix == 10 ? (std::size_t(buf[8]) | (std::size_t(buf[9]) << 8)) : detail::npy_load_u32le(buf.data() + 8);
    if (header_len <= detail::kNpyMaxHeaderLen &&
        detail::npy_read_upto(in, buf, header_len, path) < header_len)
      return parse_npy(buf.data(), buf.size(), path);
  }
  const detail::NpyHead h = detail::npy_parse_head(buf.data(), buf.size(), path);
  if (detail::npy_read_upto(in, buf, h.need, path) == h.need && detail::npy_read_upto(in, buf, 1, path) == 1) {
    detail::npy_fail(Errc::parse_error, path,
                     "trailing bytes after the data (expected " + std::to_string(h.need) + " bytes)");
  }
  return parse_npy(buf.data(), buf.size(), path);
}

// Converts a 2-D float32/float64 array to a row-major matrix of Scalar,
// honouring fortran_order.  Non-2-D is invalid_argument; other dtypes are
// unsupported.  Zero-size dims give an empty matrix.
template <class Scalar>
inline NpyMatrix<Scalar> to_matrix(const NpyArray& a, const std::string& name = "<memory>") {
  static_assert(std::is_floating_point<Scalar>::value, "to_matrix needs a floating-point Scalar");
  using detail::npy_fail;
  if (a.kind != 'f' || (a.itemsize != 4 && a.itemsize != 8)) {
    npy_fail(Errc::unsupported, name,
             "unsupported dtype '" + detail::npy_descr_string(a.kind, a.itemsize) +
                 "' (only float32 '<f4' and float64 '<f8' are supported)");
  }
  if (a.shape.size() != 2) {
    npy_fail(Errc::invalid_argument, name,
             "expected a 2-D array, got shape " + detail::npy_shape_string(a.shape));
  }
  const std::size_t rows = a.shape[0], cols = a.shape[1];
  const std::size_t index_max = static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max());
  const std::size_t isz = static_cast<std::size_t>(a.itemsize);
  // An NpyArray may be built by hand, so its consistency is not assumed.
  const bool fits = rows <= index_max && cols <= index_max &&
                    (rows == 0 || cols == 0 || (cols <= index_max / rows && rows * cols <= a.data.size() / isz));
  if (!fits || (rows * cols) * isz != a.data.size()) {
    npy_fail(Errc::invalid_argument, name,
             "shape " + detail::npy_shape_string(a.shape) + " does not match the " +
                 std::to_string(a.data.size()) + " data bytes");
  }
  NpyMatrix<Scalar> M(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  if (a.itemsize == 4) {
    detail::npy_fill<Scalar, float>(M, a, name);
  } else {
    detail::npy_fill<Scalar, double>(M, a, name);
  }
  return M;
}

template <class Scalar>
inline NpyMatrix<Scalar> read_npy_matrix(const std::string& path) {
  return to_matrix<Scalar>(read_npy(path), path);
}

namespace detail {
template <class Derived>
inline std::vector<unsigned char> npy_image_impl(const Eigen::DenseBase<Derived>& M, const std::string& name) {
  using Src = typename Derived::Scalar;
  static_assert(std::is_arithmetic<Src>::value, "npy_image needs a real arithmetic Scalar");
  const std::size_t rows = static_cast<std::size_t>(M.rows()), cols = static_cast<std::size_t>(M.cols());
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) +
                       ", " + std::to_string(cols) + "), }";
  const std::size_t prefix = 10;
  const std::size_t unpadded = prefix + header.size() + 1;  // + '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  // Two decimal dims cannot come near the 65535-byte limit of a 1.0 header.
  const std::size_t hlen = header.size();

  if (cols != 0 && rows > std::numeric_limits<std::size_t>::max() / cols / 4) {
    npy_fail(Errc::invalid_argument, name, "matrix too large");
  }
  std::vector<unsigned char> out(prefix + hlen + rows * cols * 4);
  std::memcpy(out.data(), kNpyMagic, sizeof(kNpyMagic));
  out[6] = 1;
  out[7] = 0;
  out[8] = static_cast<unsigned char>(hlen & 0xff);
  out[9] = static_cast<unsigned char>(hlen >> 8);
  std::memcpy(out.data() + prefix, header.data(), hlen);
  unsigned char* p = out.data() + prefix + hlen;
  for (Eigen::Index i = 0; i < M.rows(); ++i) {
    for (Eigen::Index j = 0; j < M.cols(); ++j) {
      const Src v = M.derived().coeff(i, j);
      if (!npy_fits<float>(v)) {
        npy_fail(Errc::non_finite, name,
                 "element (" + std::to_string(i) + ", " + std::to_string(j) + ") is out of float32 range");
      }
      npy_store_f32le(p, static_cast<float>(v));
      p += 4;
    }
  }
  return out;
}
}  // namespace detail

// The complete .npy image of M as float32 ('<f4'), C order, format 1.0, with
// the header padded so the data starts on a 64-byte boundary as numpy does.
// Callers that want their own write strategy start here.  Finite values
// outside float32 range are refused (non_finite) rather than turned into Inf
// by an undefined conversion; NaN and Inf themselves pass through.
template <class Derived>
inline std::vector<unsigned char> npy_image(const Eigen::DenseBase<Derived>& M) {
  return detail::npy_image_impl(M, "<memory>");
}

// Writes M as a float32 .npy file, atomically: a temp file in the same
// directory is renamed over `path`, so readers see the old file or the new
// one, never a torn one.  Failures are io_error and leave no temp file.
template <class Derived>
inline void write_npy(const std::string& path, const Eigen::DenseBase<Derived>& M) {
  const std::vector<unsigned char> img = detail::npy_image_impl(M, path);
  detail::npy_write_atomic(path, img.data(), img.size());
}

}  // namespace io
}  // namespace loftq
