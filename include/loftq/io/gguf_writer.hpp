#pragma once
// GgufWriter: a GGUF file written in place and committed atomically (the
// layout: loftq/io/gguf.hpp).

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
#include "loftq/io/ggml_types.hpp"
#include "loftq/io/gguf_types.hpp"

namespace loftq {
namespace io {

// ---------------------------------------------------------------------------
// Writing

struct GgufTensorDecl {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
};

// The bytes of the header GgufWriter writes for `kvs` and `tensors`, up to
// the padding before the data: what GgufFile's limit kGgufMaxHeaderBytes
// applies to.
inline std::uint64_t gguf_header_size(const std::vector<GgufKV>& kvs, const std::vector<GgufTensorDecl>& tensors) {
  std::uint64_t n = 4 + 4 + 8 + 8;  // magic, version, tensor count, pair count
  for (const GgufKV& kv : kvs) n += 8 + kv.key.size() + 4 + kv.value.size();
  for (const GgufTensorDecl& t : tensors) n += 8 + t.name.size() + 4 + 8 * t.ne.size() + 4 + 8;
  return n;
}

class GgufWriter {
 public:
  // Declares everything and writes the header into a temporary file next to
  // `path`. The alignment is general.alignment's when kvs has it. Values are
  // written as given (GgufFile's, or from gguf_kv_string and friends). A file
  // GgufFile would refuse (more pairs, tensors or header bytes than its
  // limits) is an error before anything is written.
  GgufWriter(const std::string& path, const std::vector<GgufKV>& kvs, const std::vector<GgufTensorDecl>& tensors) {
    ::loftq::detail::require(kvs.size() <= kGgufMaxKVs, Errc::invalid_argument,
                             path + ": " + std::to_string(kvs.size()) +
                                 " key-value pairs, over the readers' limit of " + std::to_string(kGgufMaxKVs));
    ::loftq::detail::require(tensors.size() <= kGgufMaxTensors, Errc::invalid_argument,
                             path + ": " + std::to_string(tensors.size()) + " tensors, over the readers' limit of " +
                                 std::to_string(kGgufMaxTensors));
    const std::uint64_t header = gguf_header_size(kvs, tensors);
    ::loftq::detail::require(header <= kGgufMaxHeaderBytes, Errc::invalid_argument,
                             path + ": a header of " + std::to_string(header) + " bytes, over the readers' limit of " +
                                 std::to_string(kGgufMaxHeaderBytes));
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

}  // namespace io
}  // namespace loftq
