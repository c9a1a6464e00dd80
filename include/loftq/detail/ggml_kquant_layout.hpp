#pragma once
// The super-blocks of ggml's K formats (ggml_format.hpp) in one decoded form,
// KBlock, and its byte layout as ggml-common.h declares it (block_q2_K,
// block_q3_K, block_q4_K, block_q5_K, block_q6_K, block_iq4_xs; QK_K = 256).
// Both the reference quantizers (ggml_kquant_ref.hpp) and the search
// (ggml_kquant_block.hpp) work on KBlock; kblock_value() is ggml's
// dequantize_row_* for one element.

#include <cstdint>
#include <cstring>

#include "../error.hpp"
#include "../ggml_format.hpp"
#include "half.hpp"
#include "simd.hpp"

namespace loftq {
namespace detail {

constexpr int kKMaxSub = 16;  // sub-blocks per super-block, at most

// One super-block, decoded: fp16 d and dmin, per sub-block the integer scale
// as it multiplies d (Q3_K and IQ4_XS: the stored 6 bits minus 32) and the
// integer minimum, and per element the code (the index into ggml_levels(f)).
struct KBlock {
  std::uint16_t d = 0, dmin = 0;
  int sc[kKMaxSub] = {};
  int m[kKMaxSub] = {};
  std::uint8_t q[kGgmlSuperBlock] = {};

  // Sub-block i of `sub` elements, to try a change and take it back.
  struct Sub {
    int sc, m;
    std::uint8_t q[32];
  };
  void save(int i, int sub, Sub& s) const {
    s.sc = sc[i];
    s.m = m[i];
    std::memcpy(s.q, q + i * sub, static_cast<std::size_t>(sub));
  }
  void restore(int i, int sub, const Sub& s) {
    sc[i] = s.sc;
    m[i] = s.m;
    std::memcpy(q + i * sub, s.q, static_cast<std::size_t>(sub));
  }
};

// What the search needs to know of a K format.
struct KFormat {
  GgmlFormat f;
  int nsub, sub;     // sub-blocks and their length
  int sc_lo, sc_hi;  // range of KBlock::sc
  int m_hi;          // range 0..m_hi of KBlock::m (0: no minimums)
  int codes;         // 2^bits
};

inline KFormat kformat(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q2_K:
      return {f, 16, 16, 0, 15, 15, 4};
    case GgmlFormat::q3_K:
      return {f, 16, 16, -32, 31, 0, 8};
    case GgmlFormat::q4_K:
      return {f, 8, 32, 0, 63, 63, 16};
    case GgmlFormat::q5_K:
      return {f, 8, 32, 0, 63, 63, 32};
    case GgmlFormat::q6_K:
      return {f, 16, 16, -128, 127, 0, 64};
    case GgmlFormat::iq4_xs:
      return {f, 8, 32, -32, 31, 0, 16};
    default:
      break;
  }
  fail(Errc::invalid_argument, "kformat: not a K format");
}

// The float scale and minimum of sub-block i, as ggml forms them: d * sc and
// dmin * m, each one rounded product (opaque: never fused into what follows).
inline float kblock_scale(const KBlock& b, int i) { return opaque(half_to_float(b.d) * static_cast<float>(b.sc[i])); }
inline float kblock_min(const KBlock& b, int i) { return opaque(half_to_float(b.dmin) * static_cast<float>(b.m[i])); }

// dequantize_row_*'s value of a level under a sub-block's scale and minimum:
// the product is rounded before the subtraction (no FMA contraction).
inline float kquant_value(float scale, float level, float min, bool has_min) {
  const float p = opaque(scale * level);
  return has_min ? p - min : p;
}

inline void put16(unsigned char* p, std::uint16_t v) {
  p[0] = static_cast<unsigned char>(v & 0xff);
  p[1] = static_cast<unsigned char>(v >> 8);
}
inline std::uint16_t get16(const unsigned char* p) { return static_cast<std::uint16_t>(p[0] | (p[1] << 8)); }

// Q4_K / Q5_K's 12 bytes of 6-bit scales and minimums (get_scale_min_k4).
inline void k4_scales_get(const unsigned char* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}
inline void k4_scales_put(unsigned char* s, const int* sc, const int* m) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = static_cast<unsigned char>(sc[j]);
      s[j + 4] = static_cast<unsigned char>(m[j]);
    } else {
      s[j + 4] = static_cast<unsigned char>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      s[j - 4] = static_cast<unsigned char>(s[j - 4] | ((sc[j] >> 4) << 6));
      s[j] = static_cast<unsigned char>(s[j] | ((m[j] >> 4) << 6));
    }
  }
}

// The 2-bit planes of Q2_K and Q3_K: element 128 h + 32 g + l sits in bits
// 2g of byte 32 h + l.
inline int k2_plane_get(const unsigned char* qs, int e) {
  return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

// Decodes the bytes of one super-block.
inline void kblock_unpack(GgmlFormat f, const unsigned char* p, KBlock& b) {
  b = KBlock{};
  switch (f) {
    case GgmlFormat::q2_K:  // scales[16], qs[64], d, dmin
      for (int i = 0; i < 16; ++i) {
        b.sc[i] = p[i] & 0xF;
        b.m[i] = p[i] >> 4;
      }
      for (int e = 0; e < 256; ++e) b.q[e] = static_cast<std::uint8_t>(k2_plane_get(p + 16, e));
      b.d = get16(p + 80);
      b.dmin = get16(p + 82);
      return;
    case GgmlFormat::q3_K:  // hmask[32], qs[64], scales[12], d
      for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? p[96 + j] & 0xF : p[96 + j - 8] >> 4;
        b.sc[j] = (lo | (((p[96 + 8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      }
      for (int e = 0; e < 256; ++e)
        b.q[e] = static_cast<std::uint8_t>(k2_plane_get(p + 32, e) | (((p[e % 32] >> (e / 32)) & 1) << 2));
      b.d = get16(p + 108);
      return;
    case GgmlFormat::q4_K:  // d, dmin, scales[12], qs[128]
    case GgmlFormat::q5_K:  // d, dmin, scales[12], qh[32], qs[128]
    {
      b.d = get16(p);
      b.dmin = get16(p + 2);
      for (int j = 0; j < 8; ++j) k4_scales_get(p + 4, j, b.sc[j], b.m[j]);
      const bool five = f == GgmlFormat::q5_K;
      const unsigned char* qs = p + (five ? 48 : 16);
      for (int e = 0; e < 256; ++e) {
        const int c = e / 64, l = e % 32, hi = (e % 64) / 32;
        int v = (qs[32 * c + l] >> (4 * hi)) & 0xF;
        if (five) v |= ((p[16 + l] >> (2 * c + hi)) & 1) << 4;
        b.q[e] = static_cast<std::uint8_t>(v);
      }
      return;
    }
    case GgmlFormat::q6_K:  // ql[128], qh[64], scales[16] (int8), d
      for (int e = 0; e < 256; ++e) {
        const int h = e / 128, r = e % 128, g = r / 32, l = r % 32;
        const unsigned char lo = p[64 * h + l + 32 * (g & 1)];
        const int v = ((lo >> (4 * (g >> 1))) & 0xF) | (((p[128 + 32 * h + l] >> (2 * g)) & 3) << 4);
        b.q[e] = static_cast<std::uint8_t>(v);
      }
      // The scales are int8 stored as bytes: sign-extend by value.
      for (int i = 0; i < 16; ++i) b.sc[i] = p[192 + i] < 128 ? int{p[192 + i]} : int{p[192 + i]} - 256;
      b.d = get16(p + 208);
      return;
    case GgmlFormat::iq4_xs: {  // d, scales_h (u16), scales_l[4], qs[128]
      b.d = get16(p);
      const int sh = get16(p + 2);
      for (int i = 0; i < 8; ++i)
        b.sc[i] = (((p[4 + i / 2] >> (4 * (i % 2))) & 0xF) | (((sh >> (2 * i)) & 3) << 4)) - 32;
      for (int e = 0; e < 256; ++e) {
        const int i = e / 32, j = e % 16, hi = (e % 32) / 16;
        b.q[e] = static_cast<std::uint8_t>((p[8 + 16 * i + j] >> (4 * hi)) & 0xF);
      }
      return;
    }
    default:
      fail(Errc::invalid_argument, "kblock_unpack: not a K format");
  }
}

// Encodes a super-block whose fields are in their formats' ranges.
inline void kblock_pack(GgmlFormat f, const KBlock& b, unsigned char* p) {
  std::memset(p, 0, static_cast<std::size_t>(ggml_format_block_bytes(f)));
  auto plane2 = [&](unsigned char* qs, int e, int v) {
    qs[32 * (e / 128) + e % 32] =
        static_cast<unsigned char>(qs[32 * (e / 128) + e % 32] | ((v & 3) << (2 * ((e % 128) / 32))));
  };
  switch (f) {
    case GgmlFormat::q2_K:
      for (int i = 0; i < 16; ++i) p[i] = static_cast<unsigned char>(b.sc[i] | (b.m[i] << 4));
      for (int e = 0; e < 256; ++e) plane2(p + 16, e, b.q[e]);
      put16(p + 80, b.d);
      put16(p + 82, b.dmin);
      return;
    case GgmlFormat::q3_K:
      for (int j = 0; j < 16; ++j) {
        const int l = b.sc[j] + 32;
        if (j < 8)
          p[96 + j] = static_cast<unsigned char>(p[96 + j] | (l & 0xF));
        else
          p[96 + j - 8] = static_cast<unsigned char>(p[96 + j - 8] | ((l & 0xF) << 4));
        p[96 + 8 + j % 4] = static_cast<unsigned char>(p[96 + 8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
      }
      for (int e = 0; e < 256; ++e) {
        plane2(p + 32, e, b.q[e] & 3);
        if (b.q[e] & 4) p[e % 32] = static_cast<unsigned char>(p[e % 32] | (1 << (e / 32)));
      }
      put16(p + 108, b.d);
      return;
    case GgmlFormat::q4_K:
    case GgmlFormat::q5_K: {
      put16(p, b.d);
      put16(p + 2, b.dmin);
      k4_scales_put(p + 4, b.sc, b.m);
      const bool five = f == GgmlFormat::q5_K;
      unsigned char* qs = p + (five ? 48 : 16);
      for (int e = 0; e < 256; ++e) {
        const int c = e / 64, l = e % 32, hi = (e % 64) / 32;
        qs[32 * c + l] = static_cast<unsigned char>(qs[32 * c + l] | ((b.q[e] & 0xF) << (4 * hi)));
        if (five && (b.q[e] & 16)) p[16 + l] = static_cast<unsigned char>(p[16 + l] | (1 << (2 * c + hi)));
      }
      return;
    }
    case GgmlFormat::q6_K:
      for (int e = 0; e < 256; ++e) {
        const int h = e / 128, r = e % 128, g = r / 32, l = r % 32;
        unsigned char& lo = p[64 * h + l + 32 * (g & 1)];
        lo = static_cast<unsigned char>(lo | ((b.q[e] & 0xF) << (4 * (g >> 1))));
        p[128 + 32 * h + l] = static_cast<unsigned char>(p[128 + 32 * h + l] | ((b.q[e] >> 4) << (2 * g)));
      }
      for (int i = 0; i < 16; ++i) p[192 + i] = static_cast<unsigned char>(static_cast<std::int8_t>(b.sc[i]));
      put16(p + 208, b.d);
      return;
    case GgmlFormat::iq4_xs: {
      put16(p, b.d);
      int sh = 0;
      for (int i = 0; i < 8; ++i) {
        const int l = b.sc[i] + 32;
        p[4 + i / 2] = static_cast<unsigned char>(p[4 + i / 2] | ((l & 0xF) << (4 * (i % 2))));
        sh |= (l >> 4) << (2 * i);
      }
      put16(p + 2, static_cast<std::uint16_t>(sh));
      for (int e = 0; e < 256; ++e) {
        const int i = e / 32, j = e % 16, hi = (e % 32) / 16;
        p[8 + 16 * i + j] = static_cast<unsigned char>(p[8 + 16 * i + j] | (b.q[e] << (4 * hi)));
      }
      return;
    }
    default:
      fail(Errc::invalid_argument, "kblock_pack: not a K format");
  }
}

}  // namespace detail
}  // namespace loftq
