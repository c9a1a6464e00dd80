#pragma once
// Reading and writing .safetensors files (POSIX), and sharded checkpoints.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON, then the
// data section. The JSON maps each tensor name to
//   {"dtype": "F32", "shape": [m, n], "data_offsets": [begin, end]}
// (offsets relative to the data section) plus an optional "__metadata__"
// object of string -> string, which is preserved.
//
// Reading maps the file (mmap) and validates the whole header before any
// tensor is touched; tensor bytes are read only when asked for, and
// SafetensorsFile::release() hands a tensor's pages back to the OS, so a
// stream over a large checkpoint keeps a bounded working set.
//
// The parser faces untrusted bytes. Every defect is a loftq::Error naming the
// file (and the tensor): header length past the end of the file or above
// kMaxHeaderBytes, bad JSON, duplicate keys (nlohmann's parser would silently
// keep the last one; a parser callback catches them), unknown keys or dtypes,
// negative, fractional or overflowing shapes, byte counts that disagree with
// dtype x shape, offsets outside the data section, overlapping or leaving gaps
// (the data section must be covered exactly, as the reference implementation
// requires). Arithmetic on sizes is checked for overflow.
//
// Writing (SafetensorsWriter) declares every tensor first, writes the header,
// then accepts tensor bytes in any order and in pieces (pwrite at the known
// offsets), so large outputs are streamed rather than held in memory. The
// file is created under a temporary name next to the target and renamed into
// place by commit(); a writer destroyed without commit() removes it.

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loftq/error.hpp"

namespace loftq {
namespace io {

// Header length cap: the reference implementation uses 100 MB as well.
constexpr std::uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;

enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

namespace detail {
struct DtypeName {
  Dtype dtype;
  const char* name;
  std::size_t size;
};
inline const DtypeName* dtype_table() {
  static const DtypeName t[] = {
      {Dtype::BOOL, "BOOL", 1}, {Dtype::U8, "U8", 1},   {Dtype::I8, "I8", 1},     {Dtype::F8_E5M2, "F8_E5M2", 1},
      {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2}, {Dtype::U16, "U16", 2}, {Dtype::F16, "F16", 2},
      {Dtype::BF16, "BF16", 2}, {Dtype::I32, "I32", 4}, {Dtype::U32, "U32", 4},   {Dtype::F32, "F32", 4},
      {Dtype::F64, "F64", 8},   {Dtype::I64, "I64", 8}, {Dtype::U64, "U64", 8},
  };
  return t;
}
constexpr int kNumDtypes = 15;
}  // namespace detail

inline const char* dtype_name(Dtype d) {
  for (int i = 0; i < detail::kNumDtypes; ++i)
    if (detail::dtype_table()[i].dtype == d) return detail::dtype_table()[i].name;
  return "?";
}
inline std::size_t dtype_size(Dtype d) {
  for (int i = 0; i < detail::kNumDtypes; ++i)
    if (detail::dtype_table()[i].dtype == d) return detail::dtype_table()[i].size;
  return 0;
}
// False for a name that is not a known dtype.
inline bool parse_dtype(const std::string& s, Dtype& out) {
  for (int i = 0; i < detail::kNumDtypes; ++i)
    if (s == detail::dtype_table()[i].name) {
      out = detail::dtype_table()[i].dtype;
      return true;
    }
  return false;
}
// The dtypes that convert to and from float.
inline bool is_float_dtype(Dtype d) { return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F64; }

// ---------------------------------------------------------------------------
// Scalar conversions (IEEE binary16 and bfloat16; round to nearest even)

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    bits = sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u)  // Inf or NaN (NaN stays quiet NaN)
    return static_cast<std::uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u | ((absx >> 13) & 0x3ffu) : 0u));
  if (absx >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: Inf
  if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (absx < 0x33000000u) return sign;  // < 2^-25 rounds to zero
    const std::uint32_t e = absx >> 23;
    const std::uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
    return static_cast<std::uint16_t>(sign | r);
  }
  std::uint32_t r = absx - 0x38000000u;  // rebias exponent 127 -> 15
  r = (r + 0xfffu + ((r >> 13) & 1u)) >> 13;
  return static_cast<std::uint16_t>(sign | r);
}

inline float bf16_to_float(std::uint16_t b) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>(x >> 16);
}

// n elements of dtype d (little endian) at src -> float. d must be a float dtype.
inline void to_float(Dtype d, const unsigned char* src, std::size_t n, float* dst) {
  if (n == 0) return;  // src/dst may be null for an empty tensor; memcpy(null, null, 0) is UB
  switch (d) {
    case Dtype::F32: std::memcpy(dst, src, n * 4); return;
    case Dtype::F16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = half_to_float(h);
      }
      return;
    case Dtype::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_float(h);
      }
      return;
    case Dtype::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        // Out-of-range double -> float is UB; saturate to +-inf so the
        // non-finite check downstream rejects it.
        const double big = static_cast<double>(std::numeric_limits<float>::max());
        dst[i] = v > big ? std::numeric_limits<float>::infinity()
                         : v < -big ? -std::numeric_limits<float>::infinity() : static_cast<float>(v);
      }
      return;
    default: ::loftq::detail::fail(Errc::unsupported, std::string("cannot convert dtype ") + dtype_name(d) + " to float");
  }
}

// n floats -> dtype d (little endian) at dst. d must be a float dtype.
inline void from_float(Dtype d, const float* src, std::size_t n, unsigned char* dst) {
  if (n == 0) return;
  switch (d) {
    case Dtype::F32: std::memcpy(dst, src, n * 4); return;
    case Dtype::F16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t h = float_to_half(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case Dtype::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint16_t h = float_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case Dtype::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const double v = src[i];
        std::memcpy(dst + 8 * i, &v, 8);
      }
      return;
    default: ::loftq::detail::fail(Errc::unsupported, std::string("cannot convert float to dtype ") + dtype_name(d));
  }
}

// ---------------------------------------------------------------------------
// Reading

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets within the data section
  std::uint64_t numel = 1;
  std::uint64_t nbytes() const { return end - begin; }
};

namespace detail {

inline bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return true;
  out = a * b;
  return false;
}

// Parses JSON text, rejecting duplicate keys at any depth and nesting deeper
// than max_depth. `what` prefixes the messages.
inline nlohmann::json parse_json_strict(const char* begin, const char* end, const std::string& what,
                                        int max_depth = 8) {
  std::vector<std::set<std::string>> keys;
  std::string dup;
  int deepest = 0;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (depth > deepest) deepest = depth;
    if (depth > max_depth)
      ::loftq::detail::fail(Errc::parse_error, what + ": JSON nested deeper than " + std::to_string(max_depth));
    if (ev == E::object_start) {
      keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key) {
      if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get<std::string>()).second)
        ::loftq::detail::fail(Errc::parse_error, what + ": duplicate key '" + parsed.get<std::string>() + "'");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(begin, end, cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    ::loftq::detail::fail(Errc::parse_error, what + ": bad JSON: " + e.what());
  }
}

inline std::uint64_t json_u64(const nlohmann::json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) {
    const std::int64_t x = v.get<std::int64_t>();
    ::loftq::detail::require(x >= 0, Errc::parse_error, what + " is negative");
    return static_cast<std::uint64_t>(x);
  }
  ::loftq::detail::fail(Errc::parse_error, what + " is not a non-negative integer");
}

}  // namespace detail

class SafetensorsFile {
 public:
  SafetensorsFile() = default;
  explicit SafetensorsFile(const std::string& path) { open(path); }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  SafetensorsFile(SafetensorsFile&& o) noexcept { swap(o); }
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept {
    if (this != &o) {
      close();
      swap(o);
    }
    return *this;
  }
  ~SafetensorsFile() { close(); }

  void open(const std::string& path) {
    close();
    path_ = path;
    // O_NONBLOCK: a FIFO in place of the file must not hang the open.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) ::loftq::detail::fail(Errc::io_error, path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      ::loftq::detail::fail(Errc::io_error, path + ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
    if (size_ < 8) {
      ::close(fd);
      ::loftq::detail::fail(Errc::parse_error, path + ": truncated: " + std::to_string(size_) +
                                                   " bytes, shorter than the 8-byte header length");
    }
    if (size_ > static_cast<std::uint64_t>(std::numeric_limits<std::size_t>::max())) {
      ::close(fd);
      ::loftq::detail::fail(Errc::unsupported, path + ": file too large to map");
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    if (p == MAP_FAILED) ::loftq::detail::fail(Errc::io_error, path + ": cannot map: " + std::strerror(e));
    base_ = static_cast<const unsigned char*>(p);
    try {
      parse_header();
    } catch (...) {
      close();
      throw;
    }
  }

  void close() noexcept {
    if (base_) ::munmap(const_cast<unsigned char*>(base_), static_cast<std::size_t>(size_));
    base_ = nullptr;
    size_ = 0;
    data_offset_ = 0;
    tensors_.clear();
    index_.clear();
    metadata_.clear();
  }

  const std::string& path() const { return path_; }
  std::uint64_t file_size() const { return size_; }
  std::uint64_t data_offset() const { return data_offset_; }
  // In data-section order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }
  const TensorInfo& at(const std::string& name) const {
    const TensorInfo* t = find(name);
    if (!t) ::loftq::detail::fail(Errc::invalid_argument, path_ + ": no tensor '" + name + "'");
    return *t;
  }
  // The tensor's raw bytes (little endian), inside the mapping.
  const unsigned char* bytes(const TensorInfo& t) const { return base_ + data_offset_ + t.begin; }

  // The tensor converted to float, row-major flattening.
  std::vector<float> read_float(const TensorInfo& t) const {
    require_float(t);
    std::vector<float> v(static_cast<std::size_t>(t.numel));
    to_float(t.dtype, bytes(t), v.size(), v.data());
    return v;
  }
  // A 2-D tensor as an (rows x cols) row-major float matrix.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(const TensorInfo& t) const {
    require_float(t);
    ::loftq::detail::require(t.shape.size() == 2, Errc::invalid_argument,
                             path_ + ": tensor '" + t.name + "' is not 2-D");
    ::loftq::detail::require(t.shape[0] <= static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max()) &&
                                 t.shape[1] <= static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max()),
                             Errc::unsupported, path_ + ": tensor '" + t.name + "' is too large");
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> M(static_cast<Eigen::Index>(t.shape[0]),
                                                                           static_cast<Eigen::Index>(t.shape[1]));
    to_float(t.dtype, bytes(t), static_cast<std::size_t>(t.numel), M.data());
    return M;
  }

  // Lets the OS drop the tensor's pages from this process (they are read
  // again from the file if touched later). Keeps streaming passes bounded.
  // With `offset`/`n`, only those bytes of the tensor (clamped to it).
  void release(const TensorInfo& t, std::uint64_t offset = 0,
               std::uint64_t n = std::numeric_limits<std::uint64_t>::max()) const noexcept {
    if (!base_ || offset >= t.nbytes()) return;
    n = std::min(n, t.nbytes() - offset);
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    std::uint64_t b = data_offset_ + t.begin + offset, e = b + n;
    b = (b + page - 1) / page * page;
    e = e / page * page;
    if (e > b) ::madvise(const_cast<unsigned char*>(base_) + b, static_cast<std::size_t>(e - b), MADV_DONTNEED);
  }

 private:
  void swap(SafetensorsFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(base_, o.base_);
    std::swap(size_, o.size_);
    std::swap(data_offset_, o.data_offset_);
    std::swap(tensors_, o.tensors_);
    std::swap(index_, o.index_);
    std::swap(metadata_, o.metadata_);
  }

  void require_float(const TensorInfo& t) const {
    ::loftq::detail::require(is_float_dtype(t.dtype), Errc::unsupported,
                             path_ + ": tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
                                 ", expected F32, F16, BF16 or F64");
  }

  [[noreturn]] void bad(const std::string& msg) const { ::loftq::detail::fail(Errc::parse_error, path_ + ": " + msg); }

  void parse_header() {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | base_[i];
    if (n > size_ - 8)
      bad("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size_) +
          " bytes)");
    if (n > kMaxHeaderBytes) bad("header length " + std::to_string(n) + " exceeds the limit of " +
                                 std::to_string(kMaxHeaderBytes) + " bytes");
    if (n < 2) bad("header length " + std::to_string(n) + " is too small for a JSON object");
    data_offset_ = 8 + n;
    const std::uint64_t data_size = size_ - data_offset_;
    const char* hb = reinterpret_cast<const char*>(base_ + 8);
    const nlohmann::json h = detail::parse_json_strict(hb, hb + n, path_ + ": header");
    if (!h.is_object()) bad("header is not a JSON object");

    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        if (!v.is_object()) bad("__metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          if (!m.value().is_string()) bad("__metadata__ entry '" + m.key() + "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
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
        ::loftq::detail::fail(Errc::unsupported, path_ + ": " + tw + ": unsupported dtype '" + d->get<std::string>() + "'");
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
      tensors_.push_back(std::move(t));
    }
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t pos = 0;
    for (const TensorInfo& t : tensors_) {
      if (t.begin < pos) bad("tensor '" + t.name + "': data_offsets overlap another tensor");
      if (t.begin > pos) bad("tensor '" + t.name + "': gap in the data section before offset " + std::to_string(t.begin));
      pos = t.end;
    }
    if (pos != data_size)
      bad("data section has " + std::to_string(data_size) + " bytes but the tensors cover " + std::to_string(pos));
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  std::uint64_t json_u64_or_bad(const nlohmann::json& v, const std::string& what) const {
    try {
      return detail::json_u64(v, what);
    } catch (const Error& e) {
      bad(e.what());
    }
  }

  std::string path_;
  const unsigned char* base_ = nullptr;
  std::uint64_t size_ = 0, data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// ---------------------------------------------------------------------------
// Checkpoints: one .safetensors file, or a directory holding one or a sharded
// set described by model.safetensors.index.json.

class Checkpoint {
 public:
  struct Entry {
    std::size_t file;  // index into files()
    const TensorInfo* info;
  };

  // PATH: a .safetensors file; or a directory with model.safetensors.index.json,
  // else model.safetensors, else exactly one *.safetensors file.
  explicit Checkpoint(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) ::loftq::detail::fail(Errc::io_error, path + ": " + std::strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
      files_.emplace_back(std::make_unique<SafetensorsFile>(path));
      names_.push_back(base_name(path));
    } else {
      dir_ = path;
      const std::string index = join(path, "model.safetensors.index.json");
      if (::stat(index.c_str(), &st) == 0) {
        open_index(index);
      } else {
        std::string single = join(path, "model.safetensors");
        if (::stat(single.c_str(), &st) != 0) {
          std::vector<std::string> found = list_safetensors(path);
          ::loftq::detail::require(found.size() == 1, Errc::invalid_argument,
                                   path + ": expected model.safetensors.index.json, model.safetensors or exactly one "
                                          ".safetensors file (found " + std::to_string(found.size()) + ")");
          single = join(path, found[0]);
        }
        files_.emplace_back(std::make_unique<SafetensorsFile>(single));
        names_.push_back(base_name(single));
      }
    }
    for (std::size_t f = 0; f < files_.size(); ++f)
      for (const TensorInfo& t : files_[f]->tensors()) {
        if (sharded_) {
          const auto w = weight_map_.find(t.name);
          ::loftq::detail::require(w != weight_map_.end() && w->second == names_[f], Errc::parse_error,
                                   files_[f]->path() + ": tensor '" + t.name + "' is not mapped to this file by the index");
        }
        ::loftq::detail::require(entries_.emplace(t.name, Entry{f, &t}).second, Errc::parse_error,
                                 files_[f]->path() + ": tensor '" + t.name + "' appears in more than one shard");
      }
    if (sharded_)
      for (const auto& w : weight_map_)
        ::loftq::detail::require(entries_.count(w.first) == 1, Errc::parse_error,
                                 index_path_ + ": tensor '" + w.first + "' is missing from " + w.second);
  }

  bool sharded() const { return sharded_; }
  const std::string& dir() const { return dir_; }  // empty when PATH was a file
  std::size_t num_files() const { return files_.size(); }
  const SafetensorsFile& file(std::size_t i) const { return *files_[i]; }
  const std::string& file_name(std::size_t i) const { return names_[i]; }  // base name
  // All tensors by name.
  const std::map<std::string, Entry>& entries() const { return entries_; }
  // The index file's "metadata" object (sharded input only).
  const nlohmann::json& index_metadata() const { return index_metadata_; }

 private:
  static std::string join(const std::string& dir, const std::string& name) {
    return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
  }
  static std::string base_name(const std::string& p) {
    const std::size_t s = p.find_last_of('/');
    return s == std::string::npos ? p : p.substr(s + 1);
  }
  static bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  }
  static std::vector<std::string> list_safetensors(const std::string& dir);

  void open_index(const std::string& index) {
    index_path_ = index;
    sharded_ = true;
    const int fd = ::open(index.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) ::loftq::detail::fail(Errc::io_error, index + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      ::loftq::detail::fail(Errc::io_error, index + ": not a regular file");
    }
    std::string text;
    char buf[65536];
    for (;;) {
      const ssize_t r = ::read(fd, buf, sizeof buf);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        ::close(fd);
        ::loftq::detail::fail(Errc::io_error, index + ": read failed");
      }
      if (r == 0) break;
      text.append(buf, static_cast<std::size_t>(r));
      if (text.size() > kMaxHeaderBytes) {
        ::close(fd);
        ::loftq::detail::fail(Errc::parse_error, index + ": larger than " + std::to_string(kMaxHeaderBytes) + " bytes");
      }
    }
    ::close(fd);
    const nlohmann::json j = detail::parse_json_strict(text.data(), text.data() + text.size(), index);
    ::loftq::detail::require(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
                             Errc::parse_error, index + ": no weight_map object");
    if (j.contains("metadata")) index_metadata_ = j["metadata"];
    std::set<std::string> shard_names;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      ::loftq::detail::require(it.value().is_string(), Errc::parse_error,
                               index + ": weight_map entry '" + it.key() + "' is not a file name");
      const std::string f = it.value().get<std::string>();
      // Plain names only: the index must not point outside its directory.
      ::loftq::detail::require(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..",
                               Errc::parse_error, index + ": weight_map entry '" + it.key() + "': bad file name '" + f + "'");
      weight_map_[it.key()] = f;
      shard_names.insert(f);
    }
    ::loftq::detail::require(!shard_names.empty(), Errc::parse_error, index + ": weight_map is empty");
    for (const std::string& f : shard_names) {
      files_.emplace_back(std::make_unique<SafetensorsFile>(join(dir_, f)));
      names_.push_back(f);
    }
  }

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> weight_map_;
  nlohmann::json index_metadata_ = nlohmann::json::object();
  std::string dir_, index_path_;
  bool sharded_ = false;
};

inline std::vector<std::string> Checkpoint::list_safetensors(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) ::loftq::detail::fail(Errc::io_error, dir + ": cannot list: " + std::strerror(errno));
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 12 && ends_with(n, ".safetensors") && n[0] != '.') out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------
// Writing

struct TensorDecl {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
};

class SafetensorsWriter {
 public:
  // Creates a temporary file next to `path` and writes the header. Tensors go
  // to the data section in the order declared.
  SafetensorsWriter(std::string path, const std::vector<TensorDecl>& tensors,
                    const std::map<std::string, std::string>& metadata = {})
      : path_(std::move(path)) {
    nlohmann::json h = nlohmann::json::object();
    if (!metadata.empty()) h["__metadata__"] = metadata;
    std::uint64_t pos = 0;
    for (const TensorDecl& t : tensors) {
      ::loftq::detail::require(!t.name.empty() && t.name != "__metadata__", Errc::invalid_argument,
                               path_ + ": bad tensor name '" + t.name + "'");
      ::loftq::detail::require(!slots_.count(t.name), Errc::invalid_argument,
                               path_ + ": tensor '" + t.name + "' declared twice");
      std::uint64_t n = 1, bytes = 0;
      for (std::uint64_t d : t.shape)
        ::loftq::detail::require(!detail::mul_overflows(n, d, n), Errc::invalid_argument, path_ + ": shape overflows");
      ::loftq::detail::require(!detail::mul_overflows(n, dtype_size(t.dtype), bytes), Errc::invalid_argument,
                               path_ + ": shape overflows");
      h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {pos, pos + bytes}}};
      slots_[t.name] = Slot{pos, bytes, 0};
      pos += bytes;
    }
    std::string header = h.dump();
    header.append((8 - header.size() % 8) % 8, ' ');  // 8-byte aligned data section
    data_offset_ = 8 + header.size();
    for (int k = 0;; ++k) {
      tmp_ = path_ + ".tmp-" + std::to_string(static_cast<long>(::getpid())) + "-" + std::to_string(k);
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) break;
      if (errno != EEXIST || k >= 100) ::loftq::detail::fail(Errc::io_error, tmp_ + ": cannot create: " + std::strerror(errno));
    }
    try {
      unsigned char len[8];
      const std::uint64_t hl = header.size();
      for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(hl >> (8 * i));
      pwrite_all(len, 8, 0);
      pwrite_all(header.data(), header.size(), 8);
      if (::ftruncate(fd_, static_cast<off_t>(data_offset_ + pos)) != 0)
        ::loftq::detail::fail(Errc::io_error, tmp_ + ": cannot size the file: " + std::strerror(errno));
    } catch (...) {
      abandon();
      throw;
    }
  }
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;
  ~SafetensorsWriter() { abandon(); }

  // Writes `n` bytes of tensor `name` starting at byte `offset` of the tensor.
  void write(const std::string& name, const void* data, std::uint64_t n, std::uint64_t offset = 0) {
    const auto it = slots_.find(name);
    ::loftq::detail::require(it != slots_.end(), Errc::invalid_argument, path_ + ": tensor '" + name + "' was not declared");
    Slot& s = it->second;
    ::loftq::detail::require(offset <= s.bytes && n <= s.bytes - offset, Errc::invalid_argument,
                             path_ + ": write past the end of tensor '" + name + "'");
    ::loftq::detail::require(fd_ >= 0, Errc::invalid_argument, path_ + ": writer is closed");
    pwrite_all(data, n, data_offset_ + s.begin + offset);
    s.written += n;
  }
  // Writes a whole tensor from floats, converting to its declared dtype.
  void write_float(const std::string& name, const float* v, std::uint64_t count, Dtype dtype) {
    const std::size_t chunk = 1 << 16;
    std::vector<unsigned char> buf(chunk * dtype_size(dtype));
    for (std::uint64_t i = 0; i < count; i += chunk) {
      const std::size_t k = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, count - i));
      from_float(dtype, v + i, k, buf.data());
      write(name, buf.data(), k * dtype_size(dtype), i * dtype_size(dtype));
    }
  }

  // Checks every declared byte was written, syncs and renames into place.
  void commit() {
    for (const auto& s : slots_)
      ::loftq::detail::require(s.second.written == s.second.bytes, Errc::invalid_argument,
                               path_ + ": tensor '" + s.first + "' was not completely written");
    if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) fail_io("fsync failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_io("close failed");
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail_io("cannot rename into place");
    tmp_.clear();
  }

  const std::string& path() const { return path_; }

 private:
  struct Slot {
    std::uint64_t begin, bytes, written;
  };

  [[noreturn]] void fail_io(const char* what) {
    const int e = errno;
    abandon();
    ::loftq::detail::fail(Errc::io_error, path_ + ": " + what + ": " + std::strerror(e));
  }

  void abandon() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
  }

  void pwrite_all(const void* data, std::uint64_t n, std::uint64_t at) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, std::uint64_t(1) << 30));
      const ssize_t w = ::pwrite(fd_, p, chunk, static_cast<off_t>(at));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail_io("write failed");
      }
      p += w;
      at += static_cast<std::uint64_t>(w);
      n -= static_cast<std::uint64_t>(w);
    }
  }

  std::string path_, tmp_;
  int fd_ = -1;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, Slot> slots_;
};

}  // namespace io
}  // namespace loftq
