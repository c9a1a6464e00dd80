#pragma once
// GGUF value types, limits, key-value pairs and tensor infos, shared by the
// reader (gguf_reader.hpp) and the writer (gguf_writer.hpp).

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace loftq {
namespace io {

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

}  // namespace io
}  // namespace loftq
