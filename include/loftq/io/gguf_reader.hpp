#pragma once
// GgufFile: a GGUF file read as untrusted input (the layout and the checks:
// loftq/io/gguf.hpp).

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

#include "loftq/error.hpp"
#include "loftq/io/detail/posix_file.hpp"
#include "loftq/io/dtype.hpp"
#include "loftq/io/ggml_dequantize.hpp"
#include "loftq/io/ggml_types.hpp"
#include "loftq/io/gguf_types.hpp"

namespace loftq {
namespace io {

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
  // The value of a scalar integer pair (UINT8 ... INT64) as its bits, zero
  // extended; false when absent or of another type (an array among them).
  bool integer_value(const std::string& key, std::uint64_t& out) const {
    const GgufKV* kv = find_kv(key);
    return kv && integer_value(*kv, out);
  }
  // The same for a pair already found (find_kv).
  static bool integer_value(const GgufKV& kv, std::uint64_t& out) {
    int width = 0;
    switch (kv.type) {
      case GgufValueType::UINT8:
      case GgufValueType::INT8:
        width = 1;
        break;
      case GgufValueType::UINT16:
      case GgufValueType::INT16:
        width = 2;
        break;
      case GgufValueType::UINT32:
      case GgufValueType::INT32:
        width = 4;
        break;
      case GgufValueType::UINT64:
      case GgufValueType::INT64:
        width = 8;
        break;
      default:
        return false;
    }
    if (kv.value.size() != static_cast<std::size_t>(width)) return false;
    out = detail::get_le(kv.value.data(), width);
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

  // A 2-D tensor of any type ggml_dequantize knows (F32, F16, BF16 and the
  // quantized ones, dequantized as ggml does) as an ne[1] x ne[0] row-major
  // float matrix.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(const GgufTensorInfo& t) const {
    if (!ggml_can_dequantize(t.type))
      ::loftq::detail::fail(Errc::unsupported, path() + ": tensor '" + t.name + "' has type " + type_name(t.type) +
                                                   ", which cannot be read as floats");
    ::loftq::detail::require(t.ne.size() == 2, Errc::invalid_argument, path() + ": tensor '" + t.name + "' is not 2-D");
    const std::uint64_t big = static_cast<std::uint64_t>(std::numeric_limits<Eigen::Index>::max());
    ::loftq::detail::require(t.ne[0] <= big && t.ne[1] <= big, Errc::unsupported,
                             path() + ": tensor '" + t.name + "' is too large");
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> M(static_cast<Eigen::Index>(t.ne[1]),
                                                                            static_cast<Eigen::Index>(t.ne[0]));
    // Whole rows at a time (blocks never cross a row), about 1 MiB of bytes.
    const std::uint64_t row_bytes = t.ne[1] ? t.nbytes / t.ne[1] : 0, cols = t.ne[0];
    const std::uint64_t rows =
        std::max<std::uint64_t>(1, (std::uint64_t(1) << 20) / std::max<std::uint64_t>(1, row_bytes));
    std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(rows, t.ne[1]) * row_bytes));
    for (std::uint64_t r = 0; r < t.ne[1]; r += rows) {
      const std::uint64_t k = std::min(rows, t.ne[1] - r);
      read_bytes(t, r * row_bytes, k * row_bytes, buf.data());
      ggml_dequantize(t.type, buf.data(), static_cast<std::size_t>(k * row_bytes), k * cols, M.data() + r * cols);
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

}  // namespace io
}  // namespace loftq
