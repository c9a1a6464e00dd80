#pragma once
// ggml's blocks back to floats: the value of every element of a tensor of a
// ggml type, as ggml's dequantize_row_* (ggml-quants.c) computes it, bit for
// bit. The types are F32, F16, BF16 and the quantized ones this library
// writes or a llama.cpp user commonly holds: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// IQ4_NL (blocks of 32) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS
// (super-blocks of 256). The K layouts are the ones the quantizers write
// (detail/ggml_kquant_layout.hpp), so the two never disagree.
//
// Each product of a scale and a level is rounded before a minimum is added
// to it, as ggml's C code reads without FP contraction; values are not
// checked for finiteness (a block may hold an Inf or NaN scale, and callers
// decide what that means).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "loftq/detail/ggml_kquant_layout.hpp"
#include "loftq/detail/half.hpp"
#include "loftq/detail/simd.hpp"
#include "loftq/error.hpp"
#include "loftq/ggml_format.hpp"
#include "loftq/io/dtype.hpp"
#include "loftq/io/ggml_types.hpp"

namespace loftq {
namespace io {

namespace detail {

// The K format of a ggml super-block type; GgmlFormat::none for any other.
inline GgmlFormat ggml_kformat_of(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K:
      return GgmlFormat::q2_K;
    case GgmlType::Q3_K:
      return GgmlFormat::q3_K;
    case GgmlType::Q4_K:
      return GgmlFormat::q4_K;
    case GgmlType::Q5_K:
      return GgmlFormat::q5_K;
    case GgmlType::Q6_K:
      return GgmlFormat::q6_K;
    case GgmlType::IQ4_XS:
      return GgmlFormat::iq4_xs;
    default:
      return GgmlFormat::none;
  }
}

// One block of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL; ggml-common.h's
// block_* layouts: fp16 d, [fp16 m], [u32 qh], qs) -> y[0..32).
inline void dequantize_block32(GgmlType t, const unsigned char* p, float* y) {
  const float d = ::loftq::detail::half_to_float(::loftq::detail::get16(p));
  switch (t) {
    case GgmlType::Q4_0:
      for (int j = 0; j < 16; ++j) {
        y[j] = static_cast<float>((p[2 + j] & 0xF) - 8) * d;
        y[j + 16] = static_cast<float>((p[2 + j] >> 4) - 8) * d;
      }
      return;
    case GgmlType::Q4_1: {
      const float m = ::loftq::detail::half_to_float(::loftq::detail::get16(p + 2));
      for (int j = 0; j < 16; ++j) {
        y[j] = ::loftq::detail::opaque(static_cast<float>(p[4 + j] & 0xF) * d) + m;
        y[j + 16] = ::loftq::detail::opaque(static_cast<float>(p[4 + j] >> 4) * d) + m;
      }
      return;
    }
    case GgmlType::Q5_0:
    case GgmlType::Q5_1: {
      // The fifth bits of the 32 elements in one little-endian u32: element
      // j's in bit j.
      const bool has_min = t == GgmlType::Q5_1;
      const float m = has_min ? ::loftq::detail::half_to_float(::loftq::detail::get16(p + 2)) : 0.0f;
      const unsigned char* h = p + (has_min ? 4 : 2);
      const std::uint32_t qh = static_cast<std::uint32_t>(h[0]) | (static_cast<std::uint32_t>(h[1]) << 8) |
                               (static_cast<std::uint32_t>(h[2]) << 16) | (static_cast<std::uint32_t>(h[3]) << 24);
      const unsigned char* qs = h + 4;
      const int offset = has_min ? 0 : 16;
      for (int j = 0; j < 16; ++j) {
        const int x0 = ((qs[j] & 0xF) | static_cast<int>(((qh >> j) & 1u) << 4)) - offset;
        const int x1 = ((qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4)) - offset;
        if (has_min) {
          y[j] = ::loftq::detail::opaque(static_cast<float>(x0) * d) + m;
          y[j + 16] = ::loftq::detail::opaque(static_cast<float>(x1) * d) + m;
        } else {
          y[j] = static_cast<float>(x0) * d;
          y[j + 16] = static_cast<float>(x1) * d;
        }
      }
      return;
    }
    case GgmlType::Q8_0:
      for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(p[2 + j])) * d;
      return;
    case GgmlType::IQ4_NL:
      for (int j = 0; j < 16; ++j) {
        y[j] = d * static_cast<float>(kIq4nlValues[p[2 + j] & 0xF]);
        y[j + 16] = d * static_cast<float>(kIq4nlValues[p[2 + j] >> 4]);
      }
      return;
    default:
      break;
  }
  ::loftq::detail::fail(Errc::invalid_argument, "dequantize_block32: not a 32-element ggml type");
}

// One super-block of K format f -> y[0..256).
inline void dequantize_super_block(GgmlFormat f, const unsigned char* p, float* y) {
  ::loftq::detail::KBlock b;
  ::loftq::detail::kblock_unpack(f, p, b);
  const ::loftq::detail::KFormat F = ::loftq::detail::kformat(f);
  const std::vector<float>& levels = ggml_levels(f);
  const bool has_min = ggml_has_min(f);
  for (int i = 0; i < F.nsub; ++i) {
    const float s = ::loftq::detail::kblock_scale(b, i), mn = has_min ? ::loftq::detail::kblock_min(b, i) : 0.0f;
    for (int j = i * F.sub; j < (i + 1) * F.sub; ++j)
      y[j] = ::loftq::detail::kquant_value(s, levels[b.q[j]], mn, has_min);
  }
}

}  // namespace detail

// Whether ggml_dequantize knows ggml type number `type`.
inline bool ggml_can_dequantize(std::uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::IQ4_NL:
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
    case GgmlType::IQ4_XS:
      return true;
    default:
      return false;
  }
}

namespace detail {

// The checks of ggml_dequantize; the traits of `type`.
inline const GgmlTypeTraits& dequantize_checked(std::uint32_t type, std::size_t src_bytes, std::uint64_t n) {
  const GgmlTypeTraits* tt = ggml_type_traits(type);
  if (!tt || !ggml_can_dequantize(type))
    ::loftq::detail::fail(Errc::unsupported, "ggml_dequantize: ggml type " +
                                                 (tt ? std::string(tt->name) : "#" + std::to_string(type)) +
                                                 " is not supported");
  ::loftq::detail::require(n % tt->block == 0, Errc::invalid_argument,
                           "ggml_dequantize: " + std::to_string(n) + " elements are not whole " + tt->name +
                               " blocks of " + std::to_string(tt->block));
  const std::uint64_t blocks = n / tt->block;
  ::loftq::detail::require(blocks <= std::numeric_limits<std::uint64_t>::max() / tt->bytes &&
                               blocks * tt->bytes == static_cast<std::uint64_t>(src_bytes),
                           Errc::invalid_argument,
                           "ggml_dequantize: " + std::to_string(src_bytes) + " bytes do not hold " + std::to_string(n) +
                               " " + tt->name + " elements");
  return *tt;
}

}  // namespace detail

// The n elements of ggml type `type` held in src[0..src_bytes) -> dst[0..n),
// in ggml's element order (ne[0] fastest). src_bytes must be exactly the
// bytes of n elements, whole blocks. Errors: Errc::unsupported for a type
// ggml_can_dequantize refuses, Errc::invalid_argument for an n that is not
// whole blocks or a byte count that does not match it.
inline void ggml_dequantize(std::uint32_t type, const void* src, std::size_t src_bytes, std::uint64_t n, float* dst) {
  const GgmlTypeTraits& tt = detail::dequantize_checked(type, src_bytes, n);
  if (n == 0) return;
  const auto* p = static_cast<const unsigned char*>(src);
  const GgmlType t = static_cast<GgmlType>(type);
  if (t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16) {
    const Dtype d = t == GgmlType::F32 ? Dtype::F32 : t == GgmlType::F16 ? Dtype::F16 : Dtype::BF16;
    to_float(d, p, static_cast<std::size_t>(n), dst);
    return;
  }
  const GgmlFormat k = detail::ggml_kformat_of(t);
  const std::uint64_t blocks = n / tt.block;
  for (std::uint64_t b = 0; b < blocks; ++b) {
    const unsigned char* bp = p + b * tt.bytes;
    float* y = dst + b * tt.block;
    if (k != GgmlFormat::none)
      detail::dequantize_super_block(k, bp, y);
    else
      detail::dequantize_block32(t, bp, y);
  }
}

// The same into a new vector (its size is bounded by the bytes given).
inline std::vector<float> ggml_dequantize(std::uint32_t type, const void* src, std::size_t src_bytes, std::uint64_t n) {
  detail::dequantize_checked(type, src_bytes, n);
  std::vector<float> out(static_cast<std::size_t>(n));
  ggml_dequantize(type, src, src_bytes, n, out.data());
  return out;
}

}  // namespace io
}  // namespace loftq
