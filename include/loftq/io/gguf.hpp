#pragma once
// Reading and writing GGUF files (version 3; ggml's docs/gguf.md and
// gguf.cpp), and ggml's block bytes of a PackedMatrix in a ggml format.
//
// Layout, little endian: "GGUF", u32 version, u64 tensor count, u64 key-value
// count; the key-value pairs (string key, u32 value type, value); the tensor
// infos (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset);
// padding to general.alignment (u32, a power of two; default 32); the data
// section. A string is a u64 length and that many bytes. ne[0] is the
// fastest-varying dimension, so a PyTorch (out, in) weight has ne = [in, out].
// Offsets are relative to the data section; as ggml requires, tensor i starts
// where tensor i-1 ends, padded to the alignment.
//
// GgufFile faces untrusted bytes like SafetensorsFile: the header is read
// with pread a bounded chunk at a time and validated before any tensor is
// touched; counts and lengths are checked against the bytes the file still
// holds before anything is allocated for them, all size arithmetic is
// overflow-checked, and every defect is a loftq::Error naming the file:
// bad magic or version, truncation, unknown value or tensor types, nested
// arrays, booleans other than 0/1, empty or duplicate keys and tensor names,
// names over 63 bytes (ggml's limit), n_dims outside 1..4, zero or
// overflowing dimensions, rows that are not whole blocks, a bad alignment,
// offsets that are misaligned, out of order or outside the file, and more
// pairs, tensors or header bytes than kGgufMaxKVs, kGgufMaxTensors and
// kGgufMaxHeaderBytes allow.
//
// GgufWriter declares every key-value pair and tensor first, writes the
// header, then takes tensor bytes in any order and in pieces (pwrite at
// known offsets); commit() renames it into place (detail/posix_file.hpp).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loftq/detail/ggml_kquant_layout.hpp"
#include "loftq/detail/half.hpp"
#include "loftq/error.hpp"
#include "loftq/ggml_format.hpp"
#include "loftq/io/detail/dtypes.hpp"
#include "loftq/io/detail/posix_file.hpp"
#include "loftq/packed.hpp"

namespace loftq {
namespace io {

// ggml tensor types this library knows the block size of (ggml.h numbering).
enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ4_NL = 20,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;
  std::uint32_t block;  // elements per block
  std::uint32_t bytes;  // bytes per block
};

// nullptr for a type number this library does not know.
inline const GgmlTypeTraits* ggml_type_traits(std::uint32_t t) {
  static const GgmlTypeTraits table[] = {
      {GgmlType::F32, "F32", 1, 4},           {GgmlType::F16, "F16", 1, 2},       {GgmlType::Q4_0, "Q4_0", 32, 18},
      {GgmlType::Q4_1, "Q4_1", 32, 20},       {GgmlType::Q5_0, "Q5_0", 32, 22},   {GgmlType::Q5_1, "Q5_1", 32, 24},
      {GgmlType::Q8_0, "Q8_0", 32, 34},       {GgmlType::Q8_1, "Q8_1", 32, 36},   {GgmlType::Q2_K, "Q2_K", 256, 84},
      {GgmlType::Q3_K, "Q3_K", 256, 110},     {GgmlType::Q4_K, "Q4_K", 256, 144}, {GgmlType::Q5_K, "Q5_K", 256, 176},
      {GgmlType::Q6_K, "Q6_K", 256, 210},     {GgmlType::Q8_K, "Q8_K", 256, 292}, {GgmlType::IQ4_NL, "IQ4_NL", 32, 18},
      {GgmlType::IQ4_XS, "IQ4_XS", 256, 136}, {GgmlType::I8, "I8", 1, 1},         {GgmlType::I16, "I16", 1, 2},
      {GgmlType::I32, "I32", 1, 4},           {GgmlType::I64, "I64", 1, 8},       {GgmlType::F64, "F64", 1, 8},
      {GgmlType::BF16, "BF16", 1, 2},
  };
  for (const auto& e : table)
    if (static_cast<std::uint32_t>(e.type) == t) return &e;
  return nullptr;
}

inline GgmlType ggml_type_of(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
      return GgmlType::Q4_0;
    case GgmlFormat::q8_0:
      return GgmlType::Q8_0;
    case GgmlFormat::iq4_nl:
      return GgmlType::IQ4_NL;
    case GgmlFormat::q2_K:
      return GgmlType::Q2_K;
    case GgmlFormat::q3_K:
      return GgmlType::Q3_K;
    case GgmlFormat::q4_K:
      return GgmlType::Q4_K;
    case GgmlFormat::q5_K:
      return GgmlType::Q5_K;
    case GgmlFormat::q6_K:
      return GgmlType::Q6_K;
    case GgmlFormat::iq4_xs:
      return GgmlType::IQ4_XS;
    case GgmlFormat::none:
      break;
  }
  ::loftq::detail::fail(Errc::invalid_argument, "ggml_type_of: not a ggml format");
}

enum class GgufValueType : std::uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

constexpr std::uint32_t kGgufVersion = 3;
constexpr std::uint32_t kGgufDefaultAlignment = 32;
constexpr std::size_t kGgufMaxName = 63;  // GGML_MAX_NAME - 1
// Limits that keep the reader's memory proportional to what a real file
// needs (a large vocabulary is tens of MB of metadata, a large model a few
// thousand tensors), whatever a hostile header claims: the header (key-value
// pairs and tensor infos) in bytes, the pairs and the tensors in number.
constexpr std::uint64_t kGgufMaxHeaderBytes = std::uint64_t(256) << 20;
constexpr std::uint64_t kGgufMaxKVs = std::uint64_t(1) << 16;
constexpr std::uint64_t kGgufMaxTensors = std::uint64_t(1) << 18;

// One key-value pair; `value` holds the encoded value exactly as it follows
// the type in the file (an array: element type, count, elements).
struct GgufKV {
  std::string key;
  GgufValueType type = GgufValueType::UINT8;
  std::vector<unsigned char> value;
};

namespace detail {
inline void put_u32(std::vector<unsigned char>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
inline void put_u64(std::vector<unsigned char>& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
inline void put_string(std::vector<unsigned char>& out, const std::string& s) {
  put_u64(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
inline std::uint64_t get_le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint64_t pad_to(std::uint64_t x, std::uint64_t a) { return (x + a - 1) / a * a; }
inline bool is_pow2(std::uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }
}  // namespace detail

inline GgufKV gguf_kv_string(const std::string& key, const std::string& v) {
  GgufKV kv{key, GgufValueType::STRING, {}};
  detail::put_string(kv.value, v);
  return kv;
}
inline GgufKV gguf_kv_u32(const std::string& key, std::uint32_t v) {
  GgufKV kv{key, GgufValueType::UINT32, {}};
  detail::put_u32(kv.value, v);
  return kv;
}
inline GgufKV gguf_kv_f32(const std::string& key, float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, 4);
  GgufKV kv{key, GgufValueType::FLOAT32, {}};
  detail::put_u32(kv.value, bits);
  return kv;
}

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  // ne[0] fastest
  std::uint32_t type = 0;
  std::uint64_t offset = 0;  // relative to the data section
  std::uint64_t numel = 0, nbytes = 0;
  // A 2-D tensor as a row-major matrix: ne[1] rows of ne[0].
  std::uint64_t rows() const { return ne.size() >= 2 ? ne[1] : 1; }
  std::uint64_t cols() const { return ne.empty() ? 0 : ne[0]; }
};

// Bytes of a tensor of `type` with dimensions ne; fails (parse_error, naming
// `what`) on an unknown type, a row that is not whole blocks, or overflow.
inline std::uint64_t ggml_nbytes(std::uint32_t type, const std::vector<std::uint64_t>& ne, const std::string& what) {
  const GgmlTypeTraits* tt = ggml_type_traits(type);
  if (!tt)
    ::loftq::detail::fail(Errc::unsupported,
                          what + " has ggml type " + std::to_string(type) + ", which is not supported");
  ::loftq::detail::require(!ne.empty() && ne[0] % tt->block == 0, Errc::parse_error,
                           what + ": row length " + (ne.empty() ? std::string("?") : std::to_string(ne[0])) +
                               " is not a multiple of the " + tt->name + " block of " + std::to_string(tt->block));
  const std::uint64_t max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t bytes = ne[0] / tt->block;
  auto mul = [&](std::uint64_t f) {
    ::loftq::detail::require(f == 0 || bytes <= max / f, Errc::parse_error, what + ": size overflows");
    bytes *= f;
  };
  mul(tt->bytes);
  for (std::size_t i = 1; i < ne.size(); ++i) mul(ne[i]);
  return bytes;
}

// ---------------------------------------------------------------------------
// Reading

class GgufFile {
 public:
  GgufFile() = default;
  explicit GgufFile(const std::string& path) { open(path); }

  void open(const std::string& path) {
    kvs_.clear();
    tensors_.clear();
    index_.clear();
    kv_index_.clear();
    file_.open(path);
    try {
      parse();
    } catch (...) {
      file_.close();
      throw;
    }
  }

  const std::string& path() const { return file_.path(); }
  std::uint64_t file_size() const { return file_.size(); }
  std::uint64_t data_offset() const { return data_offset_; }
  std::uint32_t alignment() const { return alignment_; }
  std::uint32_t version() const { return version_; }
  // In file order.
  const std::vector<GgufKV>& kvs() const { return kvs_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufKV* find_kv(const std::string& key) const {
    const auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kvs_[it->second];
  }
  // The value of a STRING pair; false when absent or of another type.
  bool string_value(const std::string& key, std::string& out) const {
    const GgufKV* kv = find_kv(key);
    if (!kv || kv->type != GgufValueType::STRING) return false;
    out.assign(kv->value.begin() + 8, kv->value.end());
    return true;
  }
  const GgufTensorInfo* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  // `n` raw bytes of tensor t from byte `offset` of it.
  void read_bytes(const GgufTensorInfo& t, std::uint64_t offset, std::uint64_t n, void* dst) const {
    ::loftq::detail::require(offset <= t.nbytes && n <= t.nbytes - offset, Errc::invalid_argument,
                             path() + ": read past the end of tensor '" + t.name + "'");
    file_.pread_exact(static_cast<unsigned char*>(dst), data_offset_ + t.offset + offset, n);
  }

  // An F32, F16 or BF16 2-D tensor as an ne[1] x ne[0] row-major float matrix.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(const GgufTensorInfo& t) const {
    Dtype d;
    switch (static_cast<GgmlType>(t.type)) {
      case GgmlType::F32:
        d = Dtype::F32;
        break;
      case GgmlType::F16:
        d = Dtype::F16;
        break;
      case GgmlType::BF16:
        d = Dtype::BF16;
        break;
      default:
        ::loftq::detail::fail(Errc::unsupported, path() + ": tensor '" + t.name + "' has type " + type_name(t.type) +
                                                     ", expected F32, F16 or BF16");
    }
    ::loftq::detail::require(t.ne.size() == 2, Errc::invalid_argument, path() + ": tensor '" + t.name + "' is not 2-D");
    const std::uint64_t big = static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max());
    ::loftq::detail::require(t.ne[0] <= big && t.ne[1] <= big, Errc::unsupported,
                             path() + ": tensor '" + t.name + "' is too large");
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> M(static_cast<Eigen::Index>(t.ne[1]),
                                                                            static_cast<Eigen::Index>(t.ne[0]));
    const std::size_t es = dtype_size(d);
    const std::uint64_t chunk = (std::uint64_t(1) << 20) / es;
    std::vector<unsigned char> buf(static_cast<std::size_t>(std::min<std::uint64_t>(chunk, t.numel) * es));
    for (std::uint64_t i = 0; i < t.numel; i += chunk) {
      const std::uint64_t k = std::min(chunk, t.numel - i);
      read_bytes(t, i * es, k * es, buf.data());
      to_float(d, buf.data(), static_cast<std::size_t>(k), M.data() + i);
    }
    return M;
  }

  static std::string type_name(std::uint32_t t) {
    const GgmlTypeTraits* tt = ggml_type_traits(t);
    return tt ? tt->name : "#" + std::to_string(t);
  }

 private:
  // Sequential reads of the header, loaded from the file a chunk at a time.
  struct Cursor {
    const detail::ReadOnlyFile& f;
    std::vector<unsigned char> buf;  // file bytes [0, buf.size())
    std::uint64_t pos = 0;

    // What is being read, for the error message only: a string, or a callable
    // that builds it, so that a header of many elements builds no message
    // on the success path (a 1 MiB key named in each of 16,384 element
    // messages took half a minute to read).
    template <class W>
    static std::string text(const W& what) {
      if constexpr (std::is_invocable_v<const W&>)
        return what();
      else
        return std::string(what);
    }
    [[noreturn]] void truncated(const std::string& what) const {
      ::loftq::detail::fail(Errc::parse_error, f.path() + ": truncated: " + what + " at byte " + std::to_string(pos) +
                                                   " runs past the end of the file (" + std::to_string(f.size()) +
                                                   " bytes)");
    }
    std::uint64_t remaining() const { return f.size() - pos; }
    template <class W>
    const unsigned char* take(std::uint64_t n, const W& what) {
      if (n > remaining()) truncated(text(what));
      if (pos + n > kGgufMaxHeaderBytes)
        ::loftq::detail::fail(Errc::parse_error, f.path() + ": the header is longer than " +
                                                     std::to_string(kGgufMaxHeaderBytes) + " bytes");
      if (pos + n > buf.size()) {
        const std::uint64_t want =
            std::min<std::uint64_t>(f.size(), std::max<std::uint64_t>(pos + n, buf.size() + (std::uint64_t(1) << 20)));
        const std::uint64_t old = buf.size();
        buf.resize(static_cast<std::size_t>(std::min(want, kGgufMaxHeaderBytes)));
        f.pread_exact(buf.data() + old, old, buf.size() - old);
      }
      const unsigned char* p = buf.data() + pos;
      pos += n;
      return p;
    }
    template <class W>
    std::uint64_t u(int n, const W& what) {
      return detail::get_le(take(static_cast<std::uint64_t>(n), what), n);
    }
    template <class W>
    std::string str(const W& what) {
      const std::uint64_t len = u(8, [&] { return text(what) + " length"; });
      if (len > remaining()) truncated(text(what) + " of " + std::to_string(len) + " bytes");
      const unsigned char* p = take(len, what);
      return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(len));
    }
  };

  static std::size_t scalar_size(std::uint32_t t) {
    switch (static_cast<GgufValueType>(t)) {
      case GgufValueType::UINT8:
      case GgufValueType::INT8:
      case GgufValueType::BOOL:
        return 1;
      case GgufValueType::UINT16:
      case GgufValueType::INT16:
        return 2;
      case GgufValueType::UINT32:
      case GgufValueType::INT32:
      case GgufValueType::FLOAT32:
        return 4;
      case GgufValueType::UINT64:
      case GgufValueType::INT64:
      case GgufValueType::FLOAT64:
        return 8;
      default:
        return 0;
    }
  }

  [[noreturn]] void bad(const std::string& msg) const { ::loftq::detail::fail(Errc::parse_error, path() + ": " + msg); }

  // Skips one value of type t (validating it); `array` when inside one.
  void skip_value(Cursor& c, std::uint32_t t, const std::string& key, bool array) const {
    if (t > static_cast<std::uint32_t>(GgufValueType::FLOAT64))
      bad("key '" + key + "' has unknown value type " + std::to_string(t));
    if (t == static_cast<std::uint32_t>(GgufValueType::STRING)) {
      c.str("value of key '" + key + "'");
      return;
    }
    if (t == static_cast<std::uint32_t>(GgufValueType::ARRAY)) {
      if (array) ::loftq::detail::fail(Errc::unsupported, path() + ": key '" + key + "' holds nested arrays");
      const std::uint32_t et = static_cast<std::uint32_t>(c.u(4, "array type of key '" + key + "'"));
      const std::uint64_t n = c.u(8, "array length of key '" + key + "'");
      if (et == static_cast<std::uint32_t>(GgufValueType::ARRAY))
        ::loftq::detail::fail(Errc::unsupported, path() + ": key '" + key + "' holds nested arrays");
      if (et > static_cast<std::uint32_t>(GgufValueType::FLOAT64))
        bad("key '" + key + "' has unknown array element type " + std::to_string(et));
      // Each element takes at least one byte (a string, eight).
      const std::uint64_t least = et == static_cast<std::uint32_t>(GgufValueType::STRING) ? 8 : scalar_size(et);
      if (n > c.remaining() / least) c.truncated("array of " + std::to_string(n) + " elements of key '" + key + "'");
      if (et == static_cast<std::uint32_t>(GgufValueType::STRING)) {
        for (std::uint64_t i = 0; i < n; ++i)
          c.str([&] { return "string " + std::to_string(i) + " of key '" + key + "'"; });
      } else if (et == static_cast<std::uint32_t>(GgufValueType::BOOL)) {
        const unsigned char* p = c.take(n, "array of key '" + key + "'");
        for (std::uint64_t i = 0; i < n; ++i)
          if (p[i] > 1) bad("key '" + key + "' holds a boolean that is neither 0 nor 1");
      } else {
        c.take(n * least, "array of key '" + key + "'");
      }
      return;
    }
    const std::size_t sz = scalar_size(t);
    const unsigned char* p = c.take(sz, "value of key '" + key + "'");
    if (t == static_cast<std::uint32_t>(GgufValueType::BOOL) && p[0] > 1)
      bad("key '" + key + "' holds a boolean that is neither 0 nor 1");
  }

  void parse() {
    Cursor c{file_, {}, 0};
    const unsigned char* magic = c.take(4, "magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) bad("not a GGUF file (bad magic)");
    version_ = static_cast<std::uint32_t>(c.u(4, "version"));
    if (version_ != kGgufVersion)
      ::loftq::detail::fail(Errc::unsupported, path() + ": GGUF version " + std::to_string(version_) +
                                                   " is not supported (expected " + std::to_string(kGgufVersion) + ")");
    const std::uint64_t n_tensors = c.u(8, "tensor count"), n_kv = c.u(8, "key-value count");
    // A pair takes at least 8 + 1 + 4 + 1 bytes, a tensor info 8 + 1 + 4 + 8 + 4 + 8.
    if (n_kv > c.remaining() / 14) c.truncated(std::to_string(n_kv) + " key-value pairs");
    if (n_tensors > c.remaining() / 33) c.truncated(std::to_string(n_tensors) + " tensor infos");
    if (n_kv > kGgufMaxKVs)
      bad(std::to_string(n_kv) + " key-value pairs (at most " + std::to_string(kGgufMaxKVs) + ")");
    if (n_tensors > kGgufMaxTensors)
      bad(std::to_string(n_tensors) + " tensors (at most " + std::to_string(kGgufMaxTensors) + ")");
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      GgufKV kv;
      kv.key = c.str("key " + std::to_string(i));
      if (kv.key.empty()) bad("key " + std::to_string(i) + " is empty");
      const std::uint32_t t = static_cast<std::uint32_t>(c.u(4, "type of key '" + kv.key + "'"));
      const std::uint64_t begin = c.pos;
      skip_value(c, t, kv.key, false);
      kv.type = static_cast<GgufValueType>(t);
      kv.value.assign(c.buf.begin() + static_cast<std::ptrdiff_t>(begin),
                      c.buf.begin() + static_cast<std::ptrdiff_t>(c.pos));
      if (!kv_index_.emplace(kv.key, kvs_.size()).second) bad("duplicate key '" + kv.key + "'");
      kvs_.push_back(std::move(kv));
    }
    alignment_ = kGgufDefaultAlignment;
    if (const GgufKV* a = find_kv("general.alignment")) {
      if (a->type != GgufValueType::UINT32) bad("general.alignment is not a UINT32");
      const std::uint64_t v = detail::get_le(a->value.data(), 4);
      if (!detail::is_pow2(v) || v > (std::uint64_t(1) << 30))
        bad("general.alignment " + std::to_string(v) + " is not a power of two up to 2^30");
      alignment_ = static_cast<std::uint32_t>(v);
    }
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = c.str("name of tensor " + std::to_string(i));
      if (t.name.empty() || t.name.size() > kGgufMaxName)
        bad("tensor " + std::to_string(i) + " has a name of " + std::to_string(t.name.size()) + " bytes (1.." +
            std::to_string(kGgufMaxName) + ")");
      const std::string what = "tensor '" + t.name + "'";
      const std::uint64_t nd = c.u(4, "n_dims of " + what);
      if (nd < 1 || nd > 4) bad(what + " has " + std::to_string(nd) + " dimensions (1..4)");
      std::uint64_t numel = 1;
      const std::uint64_t max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
      for (std::uint64_t d = 0; d < nd; ++d) {
        const std::uint64_t e = c.u(8, "dimensions of " + what);
        if (e < 1 || e > max / numel)
          bad(what + " has dimension " + std::to_string(e) + " (zero, or the size overflows)");
        numel *= e;
        t.ne.push_back(e);
      }
      t.numel = numel;
      t.type = static_cast<std::uint32_t>(c.u(4, "type of " + what));
      t.offset = c.u(8, "offset of " + what);
      t.nbytes = ggml_nbytes(t.type, t.ne, path() + ": " + what);
      if (!index_.emplace(t.name, tensors_.size()).second) bad("duplicate tensor name '" + t.name + "'");
      tensors_.push_back(std::move(t));
    }
    data_offset_ = detail::pad_to(c.pos, alignment_);
    if (data_offset_ > file_.size()) c.truncated("the padding before the data section");
    const std::uint64_t data_size = file_.size() - data_offset_;
    std::uint64_t expected = 0;
    for (const GgufTensorInfo& t : tensors_) {
      if (t.offset != expected)
        bad("tensor '" + t.name + "' has offset " + std::to_string(t.offset) + ", expected " +
            std::to_string(expected) + " (tensors follow each other, each padded to " + std::to_string(alignment_) +
            " bytes)");
      if (t.nbytes > data_size || t.offset > data_size - t.nbytes)
        bad("truncated: tensor '" + t.name + "' (" + std::to_string(t.nbytes) + " bytes at data offset " +
            std::to_string(t.offset) + ") runs past the end of the file");
      expected = detail::pad_to(t.offset + t.nbytes, alignment_);  // <= data_size + alignment: no overflow
    }
  }

  detail::ReadOnlyFile file_;
  std::uint32_t version_ = 0, alignment_ = kGgufDefaultAlignment;
  std::uint64_t data_offset_ = 0;
  std::vector<GgufKV> kvs_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::size_t> index_, kv_index_;
};

// ---------------------------------------------------------------------------
// Writing

struct GgufTensorDecl {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
};

class GgufWriter {
 public:
  // Declares everything and writes the header into a temporary file next to
  // `path`. The alignment is general.alignment's when kvs has it. Values are
  // written as given (GgufFile's, or from gguf_kv_string and friends).
  GgufWriter(const std::string& path, const std::vector<GgufKV>& kvs, const std::vector<GgufTensorDecl>& tensors) {
    std::uint64_t alignment = kGgufDefaultAlignment;
    std::set<std::string> keys;
    std::vector<unsigned char> h = {'G', 'G', 'U', 'F'};
    detail::put_u32(h, kGgufVersion);
    detail::put_u64(h, tensors.size());
    detail::put_u64(h, kvs.size());
    for (const GgufKV& kv : kvs) {
      ::loftq::detail::require(!kv.key.empty() && keys.insert(kv.key).second, Errc::invalid_argument,
                               path + ": empty or duplicate key '" + kv.key + "'");
      if (kv.key == "general.alignment") {
        ::loftq::detail::require(kv.type == GgufValueType::UINT32 && kv.value.size() == 4, Errc::invalid_argument,
                                 path + ": general.alignment must be a UINT32");
        alignment = detail::get_le(kv.value.data(), 4);
        ::loftq::detail::require(detail::is_pow2(alignment) && alignment <= (std::uint64_t(1) << 30),
                                 Errc::invalid_argument, path + ": general.alignment must be a power of two");
      }
      detail::put_string(h, kv.key);
      detail::put_u32(h, static_cast<std::uint32_t>(kv.type));
      h.insert(h.end(), kv.value.begin(), kv.value.end());
    }
    std::uint64_t pos = 0;
    for (const GgufTensorDecl& t : tensors) {
      ::loftq::detail::require(
          !t.name.empty() && t.name.size() <= kGgufMaxName, Errc::invalid_argument,
          path + ": tensor name '" + t.name + "' must have 1.." + std::to_string(kGgufMaxName) + " bytes");
      ::loftq::detail::require(
          t.ne.size() >= 1 && t.ne.size() <= 4 && std::find(t.ne.begin(), t.ne.end(), std::uint64_t(0)) == t.ne.end(),
          Errc::invalid_argument, path + ": tensor '" + t.name + "' must have 1..4 dimensions, none of them 0");
      const std::uint64_t bytes = ggml_nbytes(t.type, t.ne, path + ": tensor '" + t.name + "'");
      ::loftq::detail::require(slots_.emplace(t.name, Slot{pos, bytes, 0}).second, Errc::invalid_argument,
                               path + ": duplicate tensor '" + t.name + "'");
      detail::put_string(h, t.name);
      detail::put_u32(h, static_cast<std::uint32_t>(t.ne.size()));
      for (std::uint64_t e : t.ne) detail::put_u64(h, e);
      detail::put_u32(h, t.type);
      detail::put_u64(h, pos);
      pos = detail::pad_to(pos + bytes, alignment);
    }
    data_offset_ = detail::pad_to(h.size(), alignment);
    file_ = std::make_unique<detail::AtomicFile>(path, data_offset_ + pos);
    file_->pwrite_all(h.data(), h.size(), 0);
  }

  // Writes `n` bytes of tensor `name` at byte `offset` of the tensor.
  void write(const std::string& name, const void* data, std::uint64_t n, std::uint64_t offset = 0) {
    const auto it = slots_.find(name);
    ::loftq::detail::require(it != slots_.end(), Errc::invalid_argument,
                             file_->path() + ": tensor '" + name + "' was not declared");
    Slot& s = it->second;
    ::loftq::detail::require(offset <= s.bytes && n <= s.bytes - offset, Errc::invalid_argument,
                             file_->path() + ": write past the end of tensor '" + name + "'");
    file_->pwrite_all(data, n, data_offset_ + s.begin + offset);
    s.written += n;
  }

  // Checks every declared byte was written, syncs and renames into place.
  void commit() {
    for (const auto& s : slots_)
      ::loftq::detail::require(s.second.written == s.second.bytes, Errc::invalid_argument,
                               file_->path() + ": tensor '" + s.first + "' was not completely written");
    file_->commit();
  }

  const std::string& path() const { return file_->path(); }

 private:
  struct Slot {
    std::uint64_t begin, bytes, written;
  };
  std::unique_ptr<detail::AtomicFile> file_;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, Slot> slots_;
};

// ---------------------------------------------------------------------------
// ggml blocks

// The bytes of a PackedMatrix in ggml format f (rows of whole 32-element
// blocks, or of 256-element super-blocks for a K format), as a GGUF tensor
// with ne = [cols, rows] of ggml_type_of(f) holds them: per block the fp16
// scale, then the codes (4-bit: element j in the low nibble of byte j,
// element j + 16 in its high nibble; Q8_0: int8); a K format's super-blocks
// as the quantizer kept them (PackedMatrix::ggml_blocks).
inline std::vector<unsigned char> ggml_block_bytes(const PackedMatrix& P, GgmlFormat f) {
  ::loftq::detail::validate(P);
  if (ggml_is_k_format(f)) {
    // K formats: the super-blocks the quantizer kept, verbatim.
    const std::size_t want =
        static_cast<std::size_t>(P.size() / kGgmlSuperBlock) * static_cast<std::size_t>(ggml_format_block_bytes(f));
    ::loftq::detail::require(P.cols % kGgmlSuperBlock == 0, Errc::invalid_argument,
                             "ggml_block_bytes: rows of " + std::to_string(P.cols) + " are not whole blocks of 256");
    ::loftq::detail::require(P.block_size == ggml_format_sub_block(f) && P.bits == ggml_format_bits(f) &&
                                 P.codebook == ggml_levels(f) && P.ggml_blocks.size() == want,
                             Errc::invalid_argument,
                             std::string("ggml_block_bytes: the matrix holds no ") + ggml_format_name(f) + " blocks");
    // The bytes must decode to the codes, scales and minimums the matrix
    // carries, or the file and the dequantized values would tell different
    // stories.
    const std::size_t bytes = static_cast<std::size_t>(ggml_format_block_bytes(f));
    const ::loftq::detail::KFormat F = ::loftq::detail::kformat(f);
    const bool has_min = ggml_has_min(f);
    auto same = [](float a, float b) { return a == b && std::signbit(a) == std::signbit(b); };
    std::uint8_t codes[kGgmlSuperBlock];
    ::loftq::detail::KBlock k;
    for (std::size_t b = 0; b * bytes < want; ++b) {
      ::loftq::detail::kblock_unpack(f, P.ggml_blocks.data() + b * bytes, k);
      ::loftq::detail::unpack_codes(P.codes.data(), P.codes.size(), static_cast<std::int64_t>(b) * kGgmlSuperBlock,
                                    codes, kGgmlSuperBlock, P.bits);
      bool ok = std::memcmp(codes, k.q, kGgmlSuperBlock) == 0;
      for (int i = 0; i < F.nsub && ok; ++i) {
        const std::size_t s = b * static_cast<std::size_t>(F.nsub) + static_cast<std::size_t>(i);
        ok = same(::loftq::detail::kblock_scale(k, i), P.scales[s]) &&
             (!has_min || same(::loftq::detail::kblock_min(k, i), P.mins[s]));
      }
      if (!ok)
        ::loftq::detail::fail(Errc::invalid_argument, "ggml_block_bytes: super-block " + std::to_string(b) +
                                                          " disagrees with the codes and scales");
    }
    return std::vector<unsigned char>(P.ggml_blocks.begin(), P.ggml_blocks.end());
  }
  ::loftq::detail::require(
      f != GgmlFormat::none && P.block_size == kGgmlBlock && P.bits == ggml_format_bits(f) &&
          P.codebook == ggml_levels(f) && P.scale_mode == ScaleMode::absmax && !P.double_quantized(),
      Errc::invalid_argument, std::string("ggml_block_bytes: the codes are not in ") + ggml_format_name(f) + " form");
  ::loftq::detail::require(P.cols % kGgmlBlock == 0, Errc::invalid_argument,
                           "ggml_block_bytes: rows of " + std::to_string(P.cols) + " are not whole blocks of 32");
  const bool q8 = f == GgmlFormat::q8_0;
  const std::size_t block_bytes = q8 ? 34 : 18, nb = static_cast<std::size_t>(P.num_blocks());
  std::vector<unsigned char> out(nb * block_bytes);
  std::uint8_t codes[kGgmlBlock];
  for (std::size_t b = 0; b < nb; ++b) {
    unsigned char* o = out.data() + b * block_bytes;
    const std::uint16_t dh = ::loftq::detail::float_to_half(P.scales[b]);
    const float back = ::loftq::detail::half_to_float(dh);
    ::loftq::detail::require(back == P.scales[b] && std::signbit(back) == std::signbit(P.scales[b]),
                             Errc::invalid_argument,
                             "ggml_block_bytes: scale " + std::to_string(b) + " is not an fp16 value");
    o[0] = static_cast<unsigned char>(dh & 0xff);
    o[1] = static_cast<unsigned char>(dh >> 8);
    ::loftq::detail::unpack_codes(P.codes.data(), P.codes.size(), static_cast<std::int64_t>(b) * kGgmlBlock, codes,
                                  kGgmlBlock, P.bits);
    if (q8) {
      for (int j = 0; j < kGgmlBlock; ++j) o[2 + j] = static_cast<unsigned char>(codes[j] ^ 0x80u);  // c - 128 as int8
    } else {
      for (int j = 0; j < 16; ++j) o[2 + j] = static_cast<unsigned char>(codes[j] | (codes[j + 16] << 4));
    }
  }
  return out;
}

}  // namespace io
}  // namespace loftq
