#pragma once
// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// The parser is meant to face untrusted bytes (it is a fuzzing target), so it
// checks every length against the input before it reads or allocates, and
// every failure is a loftq::Error, never a crash.  Only float32 and float64
// arrays are accepted: that is all a weight matrix can be, and refusing the
// rest early keeps the byte-order handling to two item sizes. Token ids are
// the one exception, read by the _integers variants: int32 and int64 only.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/npy_format.hpp"
#include "loftq/detail/memory.hpp"
#include "loftq/error.hpp"

namespace loftq {
namespace io {

// One parsed .npy array.  `data` holds the payload in little-endian byte
// order (swapped already if the file was big endian), in the file's element
// order: C order unless `fortran_order`.
struct NpyArray {
  std::vector<std::size_t> shape;  // empty for a 0-d array (one element)
  bool fortran_order = false;
  char kind = 'f';   // 'f' after parse_npy, 'i' after parse_npy_integers
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

template <class Scalar, class Src>
inline void npy_fill(NpyMatrix<Scalar>& M, const NpyArray& a, const std::string& name) {
  const Eigen::Index rows = M.rows(), cols = M.cols();
  // An empty array may still declare ~2^62 rows: looping over them would
  // spin for years without touching an element.
  if (rows == 0 || cols == 0) return;
  const unsigned char* base = a.data.data();
  for (Eigen::Index i = 0; i < rows; ++i) {
    for (Eigen::Index j = 0; j < cols; ++j) {
      const std::size_t k =
          a.fortran_order ? static_cast<std::size_t>(j * rows + i) : static_cast<std::size_t>(i * cols + j);
      const Src v = npy_load<Src>(base + k * sizeof(Src));
      if (!npy_fits<Scalar>(v)) {
        npy_fail(
            Errc::non_finite, name,
            "element (" + std::to_string(i) + ", " + std::to_string(j) + ") is out of range for the target float type");
      }
      M(i, j) = static_cast<Scalar>(v);
    }
  }
}

}  // namespace detail

// Parses a complete .npy image.  Safe on arbitrary bytes: every failure is a
// loftq::Error (parse_error for malformed input, unsupported for valid files
// of a dtype other than float32/float64).  `name` only labels messages.
namespace detail {
inline NpyArray parse_npy_impl(const unsigned char* bytes, std::size_t size, const std::string& name, bool integers) {
  using detail::npy_fail;
  detail::NpyHead h = detail::npy_parse_head(bytes, size, name, integers);
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
  a.kind = integers ? 'i' : 'f';
  a.itemsize = h.itemsize;
  a.data.assign(bytes + offset, bytes + size);
  if (h.big_endian) {
    const std::size_t isz = static_cast<std::size_t>(h.itemsize);
    for (std::size_t k = 0; k < need; k += isz) std::reverse(a.data.begin() + k, a.data.begin() + k + isz);
  }
  return a;
}
}  // namespace detail

inline NpyArray parse_npy(const unsigned char* bytes, std::size_t size, const std::string& name = "<memory>") {
  return detail::parse_npy_impl(bytes, size, name, false);
}
// The same for an int32 or int64 array (anything else is unsupported).
inline NpyArray parse_npy_integers(const unsigned char* bytes, std::size_t size, const std::string& name = "<memory>") {
  return detail::parse_npy_impl(bytes, size, name, true);
}

// Reads and parses a .npy file, or any stream (a pipe, /dev/stdin): never
// reads more than the prefix, the header and the data the header declares,
// plus one byte to find out whether anything follows; trailing data is a
// parse_error as in parse_npy, found without waiting for its end. Memory is
// bounded by what was actually read. The OS refusing the read is io_error.
namespace detail {
// Reads the prefix and header of a .npy stream into buf: exactly what the
// bytes so far call for. False when the input ended early (parse_npy on buf
// then reports it with its usual message).
inline bool npy_read_head(std::istream& in, std::vector<unsigned char>& buf, const std::string& path) {
  const std::size_t magic = sizeof(kNpyMagic) + 2;
  if (npy_read_upto(in, buf, magic, path) < magic) return false;
  const bool known = std::memcmp(buf.data(), kNpyMagic, sizeof(kNpyMagic)) == 0 &&
                     (buf[6] == 1 || buf[6] == 2 || buf[6] == 3) && buf[7] == 0;
  if (known) {  // otherwise npy_parse_head reports what is wrong
    const std::size_t prefix = buf[6] == 1 ? 10 : 12;
    if (npy_read_upto(in, buf, prefix - magic, path) < prefix - magic) return false;
    const std::size_t header_len =
        prefix == 10 ? (std::size_t(buf[8]) | (std::size_t(buf[9]) << 8)) : npy_load_u32le(buf.data() + 8);
    if (header_len <= kNpyMaxHeaderLen && npy_read_upto(in, buf, header_len, path) < header_len) return false;
  }
  return true;
}

inline std::ifstream npy_open(const std::string& path) {
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open())
    loftq::detail::fail(Errc::io_error, "cannot open '" + path + "' for reading" + npy_errno_suffix(errno));
  return in;
}
}  // namespace detail

// Reads and parses a .npy file, or any stream (a pipe, /dev/stdin): never
// reads more than the prefix, the header and the data the header declares,
// plus one byte to find out whether anything follows; trailing data is a
// parse_error as in parse_npy, found without waiting for its end. Memory is
// bounded by what was actually read. The OS refusing the read is io_error.
namespace detail {
inline NpyArray read_npy_impl(const std::string& path, bool integers) {
  std::ifstream in = detail::npy_open(path);
  // Each step reads exactly what the bytes so far call for. A short read
  // means a truncated input, which parse_npy reports with its usual message.
  std::vector<unsigned char> buf;
  if (!detail::npy_read_head(in, buf, path)) return parse_npy_impl(buf.data(), buf.size(), path, integers);
  const detail::NpyHead h = detail::npy_parse_head(buf.data(), buf.size(), path, integers);
  if (detail::npy_read_upto(in, buf, h.need, path) == h.need && detail::npy_read_upto(in, buf, 1, path) == 1) {
    detail::npy_fail(Errc::parse_error, path,
                     "trailing bytes after the data (expected " + std::to_string(h.need) + " bytes)");
  }
  return parse_npy_impl(buf.data(), buf.size(), path, integers);
}
}  // namespace detail

inline NpyArray read_npy(const std::string& path) { return detail::read_npy_impl(path, false); }
// The same for an int32 or int64 array.
inline NpyArray read_npy_integers(const std::string& path) { return detail::read_npy_impl(path, true); }

// A 2-D int32/int64 array (from the _integers readers) as a row-major int64
// matrix, honouring fortran_order. Non-2-D is invalid_argument.
inline NpyMatrix<std::int64_t> to_int_matrix(const NpyArray& a, const std::string& name = "<memory>") {
  using detail::npy_fail;
  if (a.kind != 'i' || (a.itemsize != 4 && a.itemsize != 8))
    npy_fail(Errc::unsupported, name,
             "unsupported dtype '" + detail::npy_descr_string(a.kind, a.itemsize) +
                 "' (only int32 '<i4' and int64 '<i8' are supported)");
  if (a.shape.size() != 2)
    npy_fail(Errc::invalid_argument, name, "expected a 2-D array, got shape " + detail::npy_shape_string(a.shape));
  const std::size_t rows = a.shape[0], cols = a.shape[1], isz = static_cast<std::size_t>(a.itemsize);
  const std::size_t index_max = static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max());
  const bool fits = rows <= index_max && cols <= index_max &&
                    (rows == 0 || cols == 0 || (cols <= index_max / rows && rows * cols <= a.data.size() / isz));
  if (!fits || (rows * cols) * isz != a.data.size())
    npy_fail(Errc::invalid_argument, name,
             "shape " + detail::npy_shape_string(a.shape) + " does not match the " + std::to_string(a.data.size()) +
                 " data bytes");
  NpyMatrix<std::int64_t> M(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) {
      const std::size_t k = a.fortran_order ? j * rows + i : i * cols + j;
      std::uint64_t u = 0;
      for (std::size_t b = 0; b < isz; ++b) u |= std::uint64_t(a.data[k * isz + b]) << (8 * b);
      M(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(j)) =
          isz == 4 ? static_cast<std::int64_t>(static_cast<std::int32_t>(static_cast<std::uint32_t>(u)))
                   : static_cast<std::int64_t>(u);
    }
  return M;
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
    npy_fail(Errc::invalid_argument, name, "expected a 2-D array, got shape " + detail::npy_shape_string(a.shape));
  }
  const std::size_t rows = a.shape[0], cols = a.shape[1];
  const std::size_t index_max = static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max());
  const std::size_t isz = static_cast<std::size_t>(a.itemsize);
  // An NpyArray may be built by hand, so its consistency is not assumed.
  const bool fits = rows <= index_max && cols <= index_max &&
                    (rows == 0 || cols == 0 || (cols <= index_max / rows && rows * cols <= a.data.size() / isz));
  if (!fits || (rows * cols) * isz != a.data.size()) {
    npy_fail(Errc::invalid_argument, name,
             "shape " + detail::npy_shape_string(a.shape) + " does not match the " + std::to_string(a.data.size()) +
                 " data bytes");
  }
  NpyMatrix<Scalar> M(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  if (a.itemsize == 4) {
    detail::npy_fill<Scalar, float>(M, a, name);
  } else {
    detail::npy_fill<Scalar, double>(M, a, name);
  }
  return M;
}

// read_npy + to_matrix. A 2-D little-endian float32 C-order file read as
// float (what numpy writes by default) goes straight from the file into the
// matrix: one copy instead of three, the same matrix and the same errors.
// `itemsize`, when given, receives the file's item size (4 or 8).
template <class Scalar>
inline NpyMatrix<Scalar> read_npy_matrix(const std::string& path, int* itemsize = nullptr) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if constexpr (std::is_same<Scalar, float>::value) {
    std::ifstream in = detail::npy_open(path);
    std::vector<unsigned char> buf;
    if (!detail::npy_read_head(in, buf, path)) return to_matrix<Scalar>(parse_npy(buf.data(), buf.size(), path), path);
    const detail::NpyHead h = detail::npy_parse_head(buf.data(), buf.size(), path);
    const auto& shape = h.header.shape;
    const std::size_t index_max = static_cast<std::size_t>(std::numeric_limits<Eigen::Index>::max());
    // Only for a regular file of exactly the declared size, so a header that
    // promises more than the file holds allocates nothing.
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (!ec && size == h.offset + h.need && h.itemsize == 4 && !h.big_endian && !h.header.fortran_order &&
        shape.size() == 2 && shape[0] > 0 && shape[1] > 0 && shape[0] <= index_max && shape[1] <= index_max &&
        h.need / 4 / shape[0] == shape[1]) {
      NpyMatrix<Scalar> M;
      loftq::detail::resize_large(M, static_cast<Eigen::Index>(shape[0]), static_cast<Eigen::Index>(shape[1]));
      in.read(reinterpret_cast<char*>(M.data()), static_cast<std::streamsize>(h.need));
      const std::size_t got = static_cast<std::size_t>(in.gcount());
      if (got < h.need) {  // truncated: parse_npy words the error
        if (in.bad()) detail::npy_fail(Errc::io_error, path, "read failed" + detail::npy_errno_suffix(errno));
        const unsigned char* p = reinterpret_cast<const unsigned char*>(M.data());
        buf.insert(buf.end(), p, p + got);
        return to_matrix<Scalar>(parse_npy(buf.data(), buf.size(), path), path);
      }
      if (detail::npy_read_upto(in, buf, 1, path) == 1)
        detail::npy_fail(Errc::parse_error, path,
                         "trailing bytes after the data (expected " + std::to_string(h.need) + " bytes)");
      if (itemsize) *itemsize = 4;
      return M;
    }
    if (detail::npy_read_upto(in, buf, h.need, path) == h.need && detail::npy_read_upto(in, buf, 1, path) == 1)
      detail::npy_fail(Errc::parse_error, path,
                       "trailing bytes after the data (expected " + std::to_string(h.need) + " bytes)");
    const NpyArray a = parse_npy(buf.data(), buf.size(), path);
    if (itemsize) *itemsize = a.itemsize;
    return to_matrix<Scalar>(a, path);
  }
#endif
  const NpyArray a = read_npy(path);
  if (itemsize) *itemsize = a.itemsize;
  return to_matrix<Scalar>(a, path);
}

namespace detail {
// The bytes before the data of a rows x cols float32 C-order .npy file
// (format 1.0): magic, version, header length, header padded so the data
// starts on a 64-byte boundary as numpy does.
inline std::string npy_head_f32(std::size_t rows, std::size_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  const std::size_t prefix = 10;
  const std::size_t unpadded = prefix + header.size() + 1;  // + '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  // Two decimal dims cannot come near the 65535-byte limit of a 1.0 header.
  const std::size_t hlen = header.size();
  std::string out(reinterpret_cast<const char*>(kNpyMagic), sizeof(kNpyMagic));
  out += static_cast<char>(1);
  out += static_cast<char>(0);
  out += static_cast<char>(hlen & 0xff);
  out += static_cast<char>(hlen >> 8);
  return out + header;
}

template <class Derived>
inline std::vector<unsigned char> npy_image_impl(const Eigen::DenseBase<Derived>& M, const std::string& name) {
  using Src = typename Derived::Scalar;
  static_assert(std::is_arithmetic<Src>::value, "npy_image needs a real arithmetic Scalar");
  const std::size_t rows = static_cast<std::size_t>(M.rows()), cols = static_cast<std::size_t>(M.cols());
  if (cols != 0 && rows > std::numeric_limits<std::size_t>::max() / cols / 4) {
    npy_fail(Errc::invalid_argument, name, "matrix too large");
  }
  const std::string head = npy_head_f32(rows, cols);
  std::vector<unsigned char> out(head.size() + rows * cols * 4);
  std::memcpy(out.data(), head.data(), head.size());
  unsigned char* p = out.data() + head.size();
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

// The bytes of a rows x cols float32 C-order .npy file before its data: a
// writer that puts a row-major float matrix's data right after them writes
// the file without an image of it in memory.
inline std::string npy_header_f32(std::size_t rows, std::size_t cols) { return detail::npy_head_f32(rows, cols); }

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
