#pragma once
// NEON kernels for AArch64 (NEON is part of the base architecture, so they
// need no run-time check): the nearest-code search, the block absmax, the
// scale-search sums and the skinny products' tiles. Each computes what its
// portable loop or AVX2 twin computes, operation for operation (the same IEEE
// division, the same >= comparisons, the same fused multiply-add chains and
// summation trees), so results are bit-identical across the three.

#include <cstdint>
#include <cstddef>
#include <limits>

#if !defined(LOFTQ_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#endif

#include "dispatch.hpp"
#include "simd.hpp"

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

#if LOFTQ_NEON_KERNELS
inline float32x4_t opaque(float32x4_t v) {
  __asm__("" : "+w"(v));
  return v;
}

// The codebook as registers: the search tree of the AVX2 kernels (simd.hpp),
// level j's 2^j thresholds (lanes past them repeat) as 32 table bytes, and
// the 16 (padded) levels as 64. The code is the path k -> 2k + [y >=
// tree[j][k]], the number of thresholds y reaches, as in the portable
// compare chain; TBL picks each lane's threshold and level by the bytes of
// float k. Per 4 elements at 4 bits: 4 steps of 5 instructions and one
// lookup, where comparing against all 15 thresholds and selecting among 16
// levels took about 100 (bench/arm_instructions.sh).
template <int Bits>
struct NeonTable {
  uint8x16x2_t step[Bits];
  uint8x16x4_t lev;
  NeonTable() = default;
  explicit NeonTable(const SearchTree<Bits>& t) {
    LOFTQ_UNROLL for (int j = 0; j < Bits; ++j) {
      const auto* b = reinterpret_cast<const std::uint8_t*>(t.tree[j]);
      step[j].val[0] = vld1q_u8(b);
      step[j].val[1] = vld1q_u8(b + 16);
    }
    const auto* b = reinterpret_cast<const std::uint8_t*>(t.level);
    LOFTQ_UNROLL for (int i = 0; i < 4; ++i) lev.val[i] = vld1q_u8(b + 16 * i);
  }
  // The table bytes of float k in each lane: 4k, 4k + 1, 4k + 2, 4k + 3.
  static uint8x16_t bytes_of(uint32x4_t k) {
    return vreinterpretq_u8_u32(vmlaq_n_u32(vdupq_n_u32(0x03020100u), k, 0x04040404u));
  }
  uint32x4_t code(float32x4_t y) const {
    uint32x4_t k = vdupq_n_u32(0);
    LOFTQ_UNROLL for (int j = 0; j < Bits; ++j) {
      // Level 0 is the root in every lane.
      const float32x4_t t = vreinterpretq_f32_u8(j == 0 ? step[0].val[0] : vqtbl2q_u8(step[j], bytes_of(k)));
      k = vsubq_u32(vaddq_u32(k, k), vcgeq_f32(y, t));  // all-ones is -1
    }
    return k;
  }
  float32x4_t level(uint32x4_t c) const { return vreinterpretq_f32_u8(vqtbl4q_u8(lev, bytes_of(c))); }
};

inline void store_codes4(std::uint8_t* dst, uint32x4_t c) {
  const uint16x4_t h = vmovn_u32(c);
  const uint8x8_t b = vmovn_u16(vcombine_u16(h, h));
  vst1_lane_u32(reinterpret_cast<std::uint32_t*>(dst), vreinterpret_u32_u8(b), 0);
}

// Codes (and levels) of y = (x - off) / den over the multiple-of-4 prefix;
// returns how many elements it handled.
template <int Bits>
std::int64_t code_span_neon(const NeonTable<Bits>& T, const float* x, std::int64_t n, float off, float den,
                            std::uint8_t* codes, float* levels) {
  const float32x4_t voff = vdupq_n_f32(off), vden = vdupq_n_f32(den);
  std::int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const float32x4_t y = vdivq_f32(vsubq_f32(vld1q_f32(x + j), voff), vden);
    const uint32x4_t c = T.code(y);
    store_codes4(codes + j, c);
    if (levels) vst1q_f32(levels + j, T.level(c));
  }
  return j;
}

// Codes of y = x / den and out = level * scale, or minuend - level * scale
// with a minuend (product rounded first, as the portable path does), over the
// multiple-of-4 prefix. out may alias x.
template <int Bits>
std::int64_t quantize_span_neon(const NeonTable<Bits>& T, const float* x, std::int64_t n, float den, float scale,
                                const float* minuend, std::uint8_t* codes, float* out) {
  const float32x4_t vden = vdupq_n_f32(den), vscale = vdupq_n_f32(scale);
  std::int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const uint32x4_t c = T.code(vdivq_f32(vld1q_f32(x + j), vden));
    if (codes) store_codes4(codes + j, c);
    if (out) {
      const float32x4_t v = opaque(vmulq_f32(T.level(c), vscale));
      vst1q_f32(out + j, minuend ? vsubq_f32(vld1q_f32(minuend + j), v) : v);
    }
  }
  return j;
}

// max |x[j]|, NaN when any x[j] is NaN: AArch64's FMAX returns NaN when
// either operand is NaN, so the maximum carries it.
inline float absmax_neon(const float* x, std::int64_t n) {
  float32x4_t m0 = vdupq_n_f32(0.0f), m1 = vdupq_n_f32(0.0f);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(x + j)));
    m1 = vmaxq_f32(m1, vabsq_f32(vld1q_f32(x + j + 4)));
  }
  for (; j + 4 <= n; j += 4) m0 = vmaxq_f32(m0, vabsq_f32(vld1q_f32(x + j)));
  float r = vmaxvq_f32(vmaxq_f32(m0, m1));
  bool has_nan = r != r;
  return absmax_tail(x, j, n, r, has_nan);
}

// scale_error_avx2's sums with eight lanes as two registers: the same
// fused multiply-add chain per lane and the same summation tree.
template <int Bits, bool Weighted>
std::int64_t scale_error_neon(const NeonTable<Bits>& T, const float* x, const float* w, std::int64_t n, float inv,
                              float* acc) {
  const float32x4_t vinv = vdupq_n_f32(inv);
  float32x4_t se[2] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)}, szl[2] = {se[0], se[0]}, sll[2] = {se[0], se[0]};
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int h = 0; h < 2; ++h) {
      const float32x4_t z = opaque(vmulq_f32(vld1q_f32(x + j + 4 * h), vinv));
      const float32x4_t v = T.level(T.code(z)), d = vsubq_f32(z, v);
      if constexpr (Weighted) {
        const float32x4_t wv = vld1q_f32(w + j + 4 * h), wl = opaque(vmulq_f32(wv, v));
        se[h] = vfmaq_f32(se[h], opaque(vmulq_f32(wv, d)), d);
        szl[h] = vfmaq_f32(szl[h], wl, z);
        sll[h] = vfmaq_f32(sll[h], wl, v);
      } else {
        se[h] = vfmaq_f32(se[h], d, d);
        szl[h] = vfmaq_f32(szl[h], v, z);
        sll[h] = vfmaq_f32(sll[h], v, v);
      }
    }
  // ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), as the AVX2 kernel's hadds.
  const auto tree = [](const float32x4_t* s) {
    const float32x4_t p = vpaddq_f32(s[0], s[1]);  // l0+l1, l2+l3, l4+l5, l6+l7
    const float32x4_t q = vpaddq_f32(p, p);        // (l0+l1)+(l2+l3), (l4+l5)+(l6+l7), ...
    return vgetq_lane_f32(q, 0) + vgetq_lane_f32(q, 1);
  };
  acc[0] += tree(se);
  acc[1] += tree(szl);
  acc[2] += tree(sll);
  return j;
}

// The skinny products' tiles (gemm.hpp): R rows x 4G columns of
// out = a x by broadcast, and the transposed update, each output element one
// fused multiply-add chain in increasing depth order. Where a's rows (or m's)
// are contiguous, one load brings four depth steps (columns) of a row and
// FMLA by lane uses them in order: the same chain, a quarter of the loads
// (bench/arm_instructions.sh counts the difference).
template <int R, int G, int Lane>
inline void skinny_lane_step(float32x4_t (&acc)[R][G], const float32x4_t (&av)[R], const float* xt) {
  float32x4_t xv[G];
  LOFTQ_UNROLL for (int g = 0; g < G; ++g) xv[g] = vld1q_f32(xt + 4 * g);
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[r][g] =
      vfmaq_laneq_f32(acc[r][g], xv[g], av[r], Lane);
}

template <int R, int G>
inline void skinny_tile_neon(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x, std::ptrdiff_t sx,
                             std::ptrdiff_t depth, float* out, std::ptrdiff_t so) {
  float32x4_t acc[R][G];
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = vdupq_n_f32(0.0f);
  std::ptrdiff_t t = 0;
  if (sat == 1)
    for (; t + 4 <= depth; t += 4) {
      float32x4_t av[R];
      LOFTQ_UNROLL for (int r = 0; r < R; ++r) av[r] = vld1q_f32(a + r * sar + t);
      skinny_lane_step<R, G, 0>(acc, av, x + t * sx);
      skinny_lane_step<R, G, 1>(acc, av, x + (t + 1) * sx);
      skinny_lane_step<R, G, 2>(acc, av, x + (t + 2) * sx);
      skinny_lane_step<R, G, 3>(acc, av, x + (t + 3) * sx);
    }
  for (; t < depth; ++t) {  // one depth step: each row's value in lane 0
    float32x4_t av[R];
    LOFTQ_UNROLL for (int r = 0; r < R; ++r) av[r] = vdupq_n_f32(a[r * sar + t * sat]);
    skinny_lane_step<R, G, 0>(acc, av, x + t * sx);
  }
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g)
      vst1q_f32(out + r * so + 4 * g, acc[r][g]);
}

template <int R>
inline void skinny_row_tiles_neon(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x,
                                  std::ptrdiff_t sx, std::ptrdiff_t depth, std::ptrdiff_t w4, float* out,
                                  std::ptrdiff_t so) {
  std::ptrdiff_t j = 0;
  for (; j + 16 <= w4; j += 16) skinny_tile_neon<R, 4>(a, sar, sat, x + j, sx, depth, out + j, so);
  // The rest in one tile: every tile reloads a's R values per depth step.
  switch (w4 - j) {
    case 12:
      skinny_tile_neon<R, 3>(a, sar, sat, x + j, sx, depth, out + j, so);
      break;
    case 8:
      skinny_tile_neon<R, 2>(a, sar, sat, x + j, sx, depth, out + j, so);
      break;
    case 4:
      skinny_tile_neon<R, 1>(a, sar, sat, x + j, sx, depth, out + j, so);
      break;
    default:
      break;
  }
}

// The multiple-of-4 prefix of the columns; returns its width.
inline std::ptrdiff_t skinny_gemm_neon(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x,
                                       std::ptrdiff_t sx, std::ptrdiff_t depth, std::ptrdiff_t rows, std::ptrdiff_t w,
                                       float* out, std::ptrdiff_t so) {
  const std::ptrdiff_t w4 = w / 4 * 4;
  std::ptrdiff_t i = 0;
  for (; i + 4 <= rows; i += 4) skinny_row_tiles_neon<4>(a + i * sar, sar, sat, x, sx, depth, w4, out + i * so, so);
  for (; i < rows; ++i) skinny_row_tiles_neon<1>(a + i * sar, sar, sat, x, sx, depth, w4, out + i * so, so);
  return w4;
}

// Output row j of the transposed update: out[j] (+)= sum_r m[r][j] y[r], the
// r-th term taken from lane Lane of mv[r] = m[r][j - Lane .. j - Lane + 3].
template <int R, int G, int Lane>
inline void skinny_lane_row_t(const float32x4_t (&yv)[R][G], const float32x4_t (&mv)[R], float* oj, bool first) {
  float32x4_t acc[G];
  LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[g] = first ? vdupq_n_f32(0.0f) : vld1q_f32(oj + 4 * g);
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[g] =
      vfmaq_laneq_f32(acc[g], yv[r][g], mv[r], Lane);
  LOFTQ_UNROLL for (int g = 0; g < G; ++g) vst1q_f32(oj + 4 * g, acc[g]);
}

template <int R, int G>
inline void skinny_rows_t_neon(const float* m, std::ptrdiff_t sm, std::ptrdiff_t cols, const float* y,
                               std::ptrdiff_t sy, float* out, std::ptrdiff_t so, bool first) {
  float32x4_t yv[R][G];
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) yv[r][g] =
      vld1q_f32(y + r * sy + 4 * g);
  std::ptrdiff_t j = 0;
  for (; j + 4 <= cols; j += 4) {
    float32x4_t mv[R];
    LOFTQ_UNROLL for (int r = 0; r < R; ++r) mv[r] = vld1q_f32(m + r * sm + j);
    skinny_lane_row_t<R, G, 0>(yv, mv, out + j * so, first);
    skinny_lane_row_t<R, G, 1>(yv, mv, out + (j + 1) * so, first);
    skinny_lane_row_t<R, G, 2>(yv, mv, out + (j + 2) * so, first);
    skinny_lane_row_t<R, G, 3>(yv, mv, out + (j + 3) * so, first);
  }
  for (; j < cols; ++j) {  // one column: each row's value in lane 0
    float32x4_t mv[R];
    LOFTQ_UNROLL for (int r = 0; r < R; ++r) mv[r] = vdupq_n_f32(m[r * sm + j]);
    skinny_lane_row_t<R, G, 0>(yv, mv, out + j * so, first);
  }
}

template <int G>
inline void skinny_slice_t_neon(const float* m, std::ptrdiff_t sm, std::ptrdiff_t rows, std::ptrdiff_t cols,
                                const float* y, std::ptrdiff_t sy, float* out, std::ptrdiff_t so) {
  std::ptrdiff_t i = 0;
  for (; i + 4 <= rows; i += 4) skinny_rows_t_neon<4, G>(m + i * sm, sm, cols, y + i * sy, sy, out, so, i == 0);
  for (; i < rows; ++i) skinny_rows_t_neon<1, G>(m + i * sm, sm, cols, y + i * sy, sy, out, so, i == 0);
}

inline std::ptrdiff_t skinny_gemm_t_neon(const float* m, std::ptrdiff_t sm, std::ptrdiff_t rows, std::ptrdiff_t cols,
                                         const float* y, std::ptrdiff_t sy, std::ptrdiff_t w, float* out,
                                         std::ptrdiff_t so) {
  const std::ptrdiff_t w4 = w / 4 * 4;
  std::ptrdiff_t g = 0;
  for (; g + 16 <= w4; g += 16) skinny_slice_t_neon<4>(m, sm, rows, cols, y + g, sy, out + g, so);
  // The rest in one slice: every slice is a pass over all of m.
  switch (w4 - g) {
    case 12:
      skinny_slice_t_neon<3>(m, sm, rows, cols, y + g, sy, out + g, so);
      break;
    case 8:
      skinny_slice_t_neon<2>(m, sm, rows, cols, y + g, sy, out + g, so);
      break;
    case 4:
      skinny_slice_t_neon<1>(m, sm, rows, cols, y + g, sy, out + g, so);
      break;
    default:
      break;
  }
  return w4;
}
#endif

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
