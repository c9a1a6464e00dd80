#pragma once
// The safetensors dtypes, their names and sizes, and the conversions between
// the float dtypes and float (IEEE binary16 and bfloat16 round to nearest
// even): the element types of safetensors and of GGUF's float tensors.

#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "loftq/detail/half.hpp"
#include "loftq/error.hpp"

namespace loftq {
namespace io {

enum class Dtype { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64 };

namespace detail {
struct DtypeName {
  Dtype dtype;
  const char* name;
  std::size_t size;
};
inline const DtypeName* dtype_table() {
  static const DtypeName t[] = {
      {Dtype::BOOL, "BOOL", 1},       {Dtype::U8, "U8", 1},   {Dtype::I8, "I8", 1},   {Dtype::F8_E5M2, "F8_E5M2", 1},
      {Dtype::F8_E4M3, "F8_E4M3", 1}, {Dtype::I16, "I16", 2}, {Dtype::U16, "U16", 2}, {Dtype::F16, "F16", 2},
      {Dtype::BF16, "BF16", 2},       {Dtype::I32, "I32", 4}, {Dtype::U32, "U32", 4}, {Dtype::F32, "F32", 4},
      {Dtype::F64, "F64", 8},         {Dtype::I64, "I64", 8}, {Dtype::U64, "U64", 8},
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
inline bool is_float_dtype(Dtype d) {
  return d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16 || d == Dtype::F64;
}

// ---------------------------------------------------------------------------
// Scalar conversions (IEEE binary16 and bfloat16; round to nearest even)

// half_to_float and float_to_half are the core library's (detail/half.hpp).
using ::loftq::detail::float_to_half;
using ::loftq::detail::half_to_float;

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

namespace detail {

// The 16-bit float dtypes, element by element through `convert`.
template <class Convert>
void from_16bit(const unsigned char* src, std::size_t n, float* dst, Convert convert) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = convert(h);
  }
}
template <class Convert>
void to_16bit(const float* src, std::size_t n, unsigned char* dst, Convert convert) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t h = convert(src[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

}  // namespace detail

// n elements of dtype d (little endian) at src -> float. d must be a float dtype.
inline void to_float(Dtype d, const unsigned char* src, std::size_t n, float* dst) {
  if (n == 0) return;  // src/dst may be null for an empty tensor; memcpy(null, null, 0) is UB
  switch (d) {
    case Dtype::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case Dtype::F16:
      detail::from_16bit(src, n, dst, half_to_float);
      return;
    case Dtype::BF16:
      detail::from_16bit(src, n, dst, bf16_to_float);
      return;
    case Dtype::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        // Out-of-range double -> float is UB; saturate to +-inf so the
        // non-finite check downstream rejects it.
        const double big = static_cast<double>(std::numeric_limits<float>::max());
        dst[i] = v > big    ? std::numeric_limits<float>::infinity()
                 : v < -big ? -std::numeric_limits<float>::infinity()
                            : static_cast<float>(v);
      }
      return;
    default:
      ::loftq::detail::fail(Errc::unsupported, std::string("cannot convert dtype ") + dtype_name(d) + " to float");
  }
}

// n floats -> dtype d (little endian) at dst. d must be a float dtype.
inline void from_float(Dtype d, const float* src, std::size_t n, unsigned char* dst) {
  if (n == 0) return;
  switch (d) {
    case Dtype::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case Dtype::F16:
      detail::to_16bit(src, n, dst, float_to_half);
      return;
    case Dtype::BF16:
      detail::to_16bit(src, n, dst, float_to_bf16);
      return;
    case Dtype::F64:
      for (std::size_t i = 0; i < n; ++i) {
        const double v = src[i];
        std::memcpy(dst + 8 * i, &v, 8);
      }
      return;
    default:
      ::loftq::detail::fail(Errc::unsupported, std::string("cannot convert float to dtype ") + dtype_name(d));
  }
}

}  // namespace io
}  // namespace loftq
