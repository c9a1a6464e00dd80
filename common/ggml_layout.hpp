#pragma once
// ggml block layouts written out from the published descriptions
// (ggml-common.h, ggml-quants.c dequantize_row_*), for the tests only: the
// type numbers, block sizes and decoders of F32, F16, BF16, Q4_0, Q8_0, IQ4_NL
// and the K formats (Q2_K..Q6_K, IQ4_XS). Nothing here calls the library, so
// the library's encoders are checked against an independent reading of the
// formats. The GGUF container is common/gguf_layout.hpp.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace gguf_layout {

enum : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q5_0 = 6,  // sizes only (llama.cpp's fallbacks in a mix): no decoder here
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  IQ4_NL = 20,
  IQ4_XS = 23,
  I32 = 26,
  BF16 = 30
};

inline float f16(std::uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0    ? std::ldexp(static_cast<float>(m), -24)
            : e == 31 ? (m ? NAN : INFINITY)
                      : std::ldexp(static_cast<float>(1024 + m), e - 25);
  return (h & 0x8000) ? -v : v;
}
inline float bf16(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint64_t le(const unsigned char* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

// ggml's IQ4_NL levels (ggml-common.h kvalues_iq4nl).
inline const std::int8_t* iq4nl_levels() {
  static const std::int8_t v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  return v;
}

// Bytes per block and elements per block.
inline void block_of(std::uint32_t type, std::uint64_t& elems, std::uint64_t& bytes) {
  switch (type) {
    case F32:
      elems = 1;
      bytes = 4;
      return;
    case F16:
    case BF16:
      elems = 1;
      bytes = 2;
      return;
    case I32:
      elems = 1;
      bytes = 4;
      return;
    case Q4_0:
    case IQ4_NL:
      elems = 32;
      bytes = 18;
      return;
    case Q5_0:
      elems = 32;
      bytes = 22;
      return;
    case Q5_1:
      elems = 32;
      bytes = 24;
      return;
    case Q8_0:
      elems = 32;
      bytes = 34;
      return;
    case Q2_K:
      elems = 256;
      bytes = 84;
      return;
    case Q3_K:
      elems = 256;
      bytes = 110;
      return;
    case Q4_K:
      elems = 256;
      bytes = 144;
      return;
    case Q5_K:
      elems = 256;
      bytes = 176;
      return;
    case Q6_K:
      elems = 256;
      bytes = 210;
      return;
    case IQ4_XS:
      elems = 256;
      bytes = 136;
      return;
    default:
      throw std::runtime_error("gguf_layout: type " + std::to_string(type));
  }
}

// A float product rounded before it is used: C without FP contraction,
// whatever -ffp-contract this test is built with.
inline float rounded(float v) {
  volatile float r = v;
  return r;
}

// dequantize_row_q2_K ... dequantize_row_q6_K and dequantize_row_iq4_xs on one
// super-block of 256 (block structs of ggml-common.h, QK_K = 256).
inline void decode_k(std::uint32_t type, const unsigned char* x, float* y) {
  const auto h = [&](int off) { return f16(static_cast<std::uint16_t>(le(x + off, 2))); };
  switch (type) {
    case Q2_K: {  // scales[16], qs[64], d, dmin
      const float d = h(80), min = h(82);
      const unsigned char* q = x + 16;
      int is = 0;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
          for (int half = 0; half < 2; ++half) {
            const unsigned char sc = x[is++];
            const float dl = d * static_cast<float>(sc & 0xF), ml = rounded(min * static_cast<float>(sc >> 4));
            for (int l = 0; l < 16; ++l) *y++ = rounded(dl * static_cast<float>((q[l + 16 * half] >> shift) & 3)) - ml;
          }
      return;
    }
    case Q3_K: {  // hmask[32], qs[64], scales[12], d
      const float d_all = h(108);
      const unsigned char* sc = x + 96;
      int scales[16];
      for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? sc[j] & 0xF : sc[j - 8] >> 4;
        scales[j] = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      }
      const unsigned char* q = x + 32;
      int is = 0;
      unsigned m = 1;
      for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
          for (int half = 0; half < 2; ++half) {
            const float dl = d_all * static_cast<float>(scales[is++]);
            for (int l = 0; l < 16; ++l) {
              const int k = l + 16 * half;
              *y++ = dl * static_cast<float>(((q[k] >> shift) & 3) - ((x[k] & m) ? 0 : 4));
            }
          }
      return;
    }
    case Q4_K:
    case Q5_K: {  // d, dmin, scales[12], (Q5_K: qh[32]), qs[128]
      const float d = h(0), min = h(2);
      const unsigned char* s = x + 4;
      const unsigned char* qh = x + 16;
      const unsigned char* ql = x + (type == Q5_K ? 48 : 16);
      auto get = [&](int j, int& sc, int& mm) {  // get_scale_min_k4
        if (j < 4) {
          sc = s[j] & 63;
          mm = s[j + 4] & 63;
        } else {
          sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
          mm = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
      };
      unsigned u1 = 1, u2 = 2;
      for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
        int sc, mm;
        get(is, sc, mm);
        const float d1 = d * static_cast<float>(sc), m1 = rounded(min * static_cast<float>(mm));
        get(is + 1, sc, mm);
        const float d2 = d * static_cast<float>(sc), m2 = rounded(min * static_cast<float>(mm));
        for (int l = 0; l < 32; ++l) {
          const int hi = type == Q5_K && (qh[l] & u1) ? 16 : 0;
          *y++ = rounded(d1 * static_cast<float>((ql[l] & 0xF) + hi)) - m1;
        }
        for (int l = 0; l < 32; ++l) {
          const int hi = type == Q5_K && (qh[l] & u2) ? 16 : 0;
          *y++ = rounded(d2 * static_cast<float>((ql[l] >> 4) + hi)) - m2;
        }
      }
      return;
    }
    case Q6_K: {  // ql[128], qh[64], scales[16] (int8), d
      const float d = h(208);
      const unsigned char* ql = x;
      const unsigned char* qh = x + 128;
      const signed char* sc = reinterpret_cast<const signed char*>(x + 192);
      for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8, y += 128)
        for (int l = 0; l < 32; ++l) {
          const int is = l / 16;
          const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
          y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
          y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
          y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
        }
      return;
    }
    case IQ4_XS: {  // d, scales_h, scales_l[4], qs[128]
      const float d = h(0);
      const int scales_h = static_cast<int>(le(x + 2, 2));
      const unsigned char* qs = x + 8;
      for (int ib = 0; ib < 8; ++ib, y += 32, qs += 16) {
        const int ls = ((x[4 + ib / 2] >> 4 * (ib % 2)) & 0xf) | (((scales_h >> 2 * ib) & 3) << 4);
        const float dl = d * static_cast<float>(ls - 32);
        for (int j = 0; j < 16; ++j) {
          y[j] = dl * static_cast<float>(iq4nl_levels()[qs[j] & 0xf]);
          y[j + 16] = dl * static_cast<float>(iq4nl_levels()[qs[j] >> 4]);
        }
      }
      return;
    }
    default:
      throw std::runtime_error("gguf_layout: not a K type " + std::to_string(type));
  }
}

// dequantize_row_* of ggml: n elements (a multiple of the block) -> float.
inline std::vector<float> decode(std::uint32_t type, const unsigned char* p, std::uint64_t n) {
  std::vector<float> y(n);
  switch (type) {
    case Q2_K:
    case Q3_K:
    case Q4_K:
    case Q5_K:
    case Q6_K:
    case IQ4_XS: {
      std::uint64_t elems, bytes;
      block_of(type, elems, bytes);
      for (std::uint64_t b = 0; b < n / 256; ++b) decode_k(type, p + b * bytes, y.data() + 256 * b);
      break;
    }
    case F32:
      std::memcpy(y.data(), p, n * 4);
      break;
    case F16:
      for (std::uint64_t i = 0; i < n; ++i) y[i] = f16(static_cast<std::uint16_t>(le(p + 2 * i, 2)));
      break;
    case BF16:
      for (std::uint64_t i = 0; i < n; ++i) y[i] = bf16(static_cast<std::uint16_t>(le(p + 2 * i, 2)));
      break;
    case Q4_0:
    case IQ4_NL:
      for (std::uint64_t b = 0; b < n / 32; ++b) {
        const unsigned char* q = p + 18 * b;
        const float d = f16(static_cast<std::uint16_t>(le(q, 2)));
        for (int j = 0; j < 16; ++j) {
          const int lo = q[2 + j] & 0x0f, hi = q[2 + j] >> 4;
          if (type == Q4_0) {
            y[32 * b + j] = static_cast<float>(lo - 8) * d;
            y[32 * b + j + 16] = static_cast<float>(hi - 8) * d;
          } else {
            y[32 * b + j] = d * static_cast<float>(iq4nl_levels()[lo]);
            y[32 * b + j + 16] = d * static_cast<float>(iq4nl_levels()[hi]);
          }
        }
      }
      break;
    case Q8_0:
      for (std::uint64_t b = 0; b < n / 32; ++b) {
        const unsigned char* q = p + 34 * b;
        const float d = f16(static_cast<std::uint16_t>(le(q, 2)));
        for (int j = 0; j < 32; ++j) y[32 * b + j] = static_cast<float>(static_cast<std::int8_t>(q[2 + j])) * d;
      }
      break;
    default:
      throw std::runtime_error("gguf_layout: cannot decode type " + std::to_string(type));
  }
  return y;
}

}  // namespace gguf_layout
