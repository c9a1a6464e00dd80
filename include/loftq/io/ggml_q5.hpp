#pragma once
// ggml's Q5_0 and Q5_1 blocks as quantize_row_q5_0_ref / quantize_row_q5_1_ref
// (ggml-quants.c) write them, which is what ggml_quantize_chunk writes without
// an importance matrix. LoftQ quantizes into neither, but llama.cpp's mixes
// fall back to them for rows that are not whole K super-blocks, and a mix's
// error can only be told with them (block_q5_0: fp16 d, u32 qh, qs[16];
// block_q5_1: fp16 d, fp16 m, u32 qh, qs[16]; element j's fifth bit is bit j
// of qh).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "loftq/detail/half.hpp"
#include "loftq/detail/ggml_blocks.hpp"
#include "loftq/error.hpp"
#include "loftq/io/ggml_types.hpp"

namespace loftq {
namespace io {

// n floats (a multiple of 32) as Q5_0 or Q5_1 blocks, byte for byte ggml's.
inline std::vector<unsigned char> ggml_q5_blocks(GgmlType t, const float* x, std::size_t n) {
  ::loftq::detail::require(t == GgmlType::Q5_0 || t == GgmlType::Q5_1, Errc::invalid_argument,
                           "ggml_q5_blocks: the type is not Q5_0 or Q5_1");
  ::loftq::detail::require(n % 32 == 0, Errc::invalid_argument, "ggml_q5_blocks: not whole blocks of 32");
  const bool has_min = t == GgmlType::Q5_1;
  const std::size_t block_bytes = has_min ? 24 : 22;
  std::vector<unsigned char> out(n / 32 * block_bytes);
  for (std::size_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    unsigned char* p = out.data() + b * block_bytes;
    float d = 0, id = 0, mn = 0;
    if (has_min) {
      float mx = -std::numeric_limits<float>::max();
      mn = std::numeric_limits<float>::max();
      for (int j = 0; j < 32; ++j) {
        if (v[j] < mn) mn = v[j];
        if (v[j] > mx) mx = v[j];
      }
      d = (mx - mn) / 31;
    } else {
      float amax = 0, mx = 0;
      for (int j = 0; j < 32; ++j)
        if (amax < std::fabs(v[j])) {
          amax = std::fabs(v[j]);
          mx = v[j];
        }
      d = mx / -16;
    }
    id = d != 0.0f ? 1.0f / d : 0.0f;
    auto put16 = [](unsigned char* q, std::uint16_t h) {
      q[0] = static_cast<unsigned char>(h & 0xFF);
      q[1] = static_cast<unsigned char>(h >> 8);
    };
    put16(p, ::loftq::detail::float_to_half(d));
    if (has_min) put16(p + 2, ::loftq::detail::float_to_half(mn));
    unsigned char* h = p + (has_min ? 4 : 2);
    unsigned char* qs = h + 4;
    std::uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      // ggml's casts (Q5_0 through int8_t, then capped at 31; Q5_1 to uint8_t), its products rounded before the add.
      const auto code = [&](float e) -> unsigned {
        using ::loftq::detail::rounded_mul;
        using ::loftq::detail::trunc_sat;
        if (has_min) return static_cast<unsigned>(trunc_sat(rounded_mul(e - mn, id) + 0.5f, 0, 255));
        return static_cast<unsigned>(std::min(31, trunc_sat(rounded_mul(e, id) + 16.5f, -128, 127)));
      };
      const unsigned x0 = code(v[j]), x1 = code(v[j + 16]);
      qs[j] = static_cast<unsigned char>((x0 & 0x0F) | ((x1 & 0x0F) << 4));
      qh |= ((x0 & 0x10u) >> 4) << j;
      qh |= ((x1 & 0x10u) >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; ++k) h[k] = static_cast<unsigned char>(qh >> (8 * k));
  }
  return out;
}

}  // namespace io
}  // namespace loftq
