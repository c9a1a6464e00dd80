#pragma once
// Skinny float products for the randomized SVD: skinny_gemm for Y = M X and
// skinny_gemm_t (further down) for Z = M^T Y.
//
//   out[i][j] = sum_t a(i, t) x[t][j],   i < rows, j < w, t < depth,
//
// with a addressed through strides (row-major M: (n, 1); column-major A:
// (1, m)) and x, out row-major. The shapes here are a tall operand against a
// block of 16-72 columns, where Eigen's GEMM spends much of its time packing:
// Y = M X at 4096^2 with 24 columns took 11.0-11.3 ms with Eigen and
// 6.5-7.1 ms with this kernel, 2 threads, alternated in one process
// (a one-off measurement; bench_svd in bench/README.md times the whole SVD). It
// broadcasts a(i, t) and multiplies whole rows of x, so neither operand is
// packed; a 4 x 24 register tile keeps 12 accumulators, enough for both FMA
// pipes.
//
// Each output element is a sum over t in increasing order, whatever the
// tiling, so results do not depend on how rows are split across threads.
// Every kernel family (the AVX2 and NEON tiles, the scalar std::fma loops)
// computes the same fused multiply-add chain, so they agree bit for bit.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "simd.hpp"
#include "simd_neon.hpp"

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

#if LOFTQ_X86_KERNELS
template <int R, int G>
LOFTQ_TARGET_AVX2 inline void skinny_tile(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x,
                                          std::ptrdiff_t sx, std::ptrdiff_t depth, float* out, std::ptrdiff_t so) {
  __m256 acc[R][G];
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = _mm256_setzero_ps();
  for (std::ptrdiff_t t = 0; t < depth; ++t) {
    const float* xt = x + t * sx;
    __m256 xv[G];
    LOFTQ_UNROLL for (int g = 0; g < G; ++g) xv[g] = _mm256_loadu_ps(xt + 8 * g);
    const float* at = a + t * sat;
    LOFTQ_UNROLL for (int r = 0; r < R; ++r) {
      const __m256 b = _mm256_broadcast_ss(at + r * sar);
      LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[r][g] = _mm256_fmadd_ps(b, xv[g], acc[r][g]);
    }
  }
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g)
      _mm256_storeu_ps(out + r * so + 8 * g, acc[r][g]);
}

template <int R>
LOFTQ_TARGET_AVX2 inline void skinny_row_tiles(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x,
                                               std::ptrdiff_t sx, std::ptrdiff_t depth, std::ptrdiff_t w8, float* out,
                                               std::ptrdiff_t so) {
  std::ptrdiff_t j = 0;
  for (; j + 24 <= w8; j += 24) skinny_tile<R, 3>(a, sar, sat, x + j, sx, depth, out + j, so);
  if (w8 - j == 16) skinny_tile<R, 2>(a, sar, sat, x + j, sx, depth, out + j, so);
  if (w8 - j == 8) skinny_tile<R, 1>(a, sar, sat, x + j, sx, depth, out + j, so);
}

// The multiple-of-8 prefix of the columns; returns its width.
LOFTQ_TARGET_AVX2 inline std::ptrdiff_t skinny_gemm_avx2(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat,
                                                         const float* x, std::ptrdiff_t sx, std::ptrdiff_t depth,
                                                         std::ptrdiff_t rows, std::ptrdiff_t w, float* out,
                                                         std::ptrdiff_t so) {
  const std::ptrdiff_t w8 = w / 8 * 8;
  std::ptrdiff_t i = 0;
  for (; i + 4 <= rows; i += 4) skinny_row_tiles<4>(a + i * sar, sar, sat, x, sx, depth, w8, out + i * so, so);
  const float* ai = a + i * sar;
  float* oi = out + i * so;
  switch (rows - i) {
    case 3:
      skinny_row_tiles<3>(ai, sar, sat, x, sx, depth, w8, oi, so);
      break;
    case 2:
      skinny_row_tiles<2>(ai, sar, sat, x, sx, depth, w8, oi, so);
      break;
    case 1:
      skinny_row_tiles<1>(ai, sar, sat, x, sx, depth, w8, oi, so);
      break;
    default:
      break;
  }
  return w8;
}
#endif

// Whether the skinny products run a vector kernel (AVX2+FMA or NEON) in this
// process. Without one, callers use Eigen's GEMM instead: the scalar FMA
// loops below are the kernels' exact reference, not a fast path.
inline bool skinny_kernels() { return use_avx2() || use_neon(); }

inline void skinny_gemm(const float* a, std::ptrdiff_t sar, std::ptrdiff_t sat, const float* x, std::ptrdiff_t sx,
                        std::ptrdiff_t depth, std::ptrdiff_t rows, std::ptrdiff_t w, float* out, std::ptrdiff_t so) {
  std::ptrdiff_t w8 = 0;
#if LOFTQ_X86_KERNELS
  if (use_avx2()) w8 = skinny_gemm_avx2(a, sar, sat, x, sx, depth, rows, w, out, so);
#endif
#if LOFTQ_NEON_KERNELS
  if (use_neon()) w8 = skinny_gemm_neon(a, sar, sat, x, sx, depth, rows, w, out, so);
#endif
  // Columns past the last full vector (all of them without a vector kernel), in the
  // same t order and with the same fused multiply-add as the vector lanes, so
  // the strides cannot change how the compiler rounds them.
  for (std::ptrdiff_t r = 0; r < rows; ++r)
    for (std::ptrdiff_t j = w8; j < w; ++j) {
      float s = 0.0f;
      for (std::ptrdiff_t t = 0; t < depth; ++t) s = std::fma(a[r * sar + t * sat], x[t * sx + j], s);
      out[r * so + j] = s;
    }
}

// The transposed product, for Z = M^T Y with a row-major M:
//
//   out[j][g] = sum_i m[i][j] y[i][g],   j < cols, g < w, i < rows,
//
// with m, y and out row-major. Eigen packs M^T's strided columns for this
// (Z = M^T Y at 4096^2 with 24 columns: 12.4-15.3 ms, 2 threads); here four
// rows of M at a time stream through in order and update every output row
// they touch: y's four rows stay in 12 registers, each m[i][j] is
// broadcast, and out's rows (a block the caller keeps small enough for L2)
// are loaded and stored once per four rows (6.1 ms in a one-off measurement;
// bench_svd in bench/README.md times the whole SVD). Each output element is an FMA chain
// over i in increasing order, so neither the row nor the column split changes
// its bits.
#if LOFTQ_X86_KERNELS
template <int R, int G>
LOFTQ_TARGET_AVX2 inline void skinny_rows_t(const float* m, std::ptrdiff_t sm, std::ptrdiff_t cols, const float* y,
                                            std::ptrdiff_t sy, float* out, std::ptrdiff_t so, bool first) {
  __m256 yv[R][G];
  LOFTQ_UNROLL for (int r = 0; r < R; ++r) LOFTQ_UNROLL for (int g = 0; g < G; ++g) yv[r][g] =
      _mm256_loadu_ps(y + r * sy + 8 * g);
  for (std::ptrdiff_t j = 0; j < cols; ++j) {
    float* oj = out + j * so;
    __m256 acc[G];
    LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[g] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(oj + 8 * g);
    LOFTQ_UNROLL for (int r = 0; r < R; ++r) {
      const __m256 b = _mm256_broadcast_ss(m + r * sm + j);
      LOFTQ_UNROLL for (int g = 0; g < G; ++g) acc[g] = _mm256_fmadd_ps(b, yv[r][g], acc[g]);
    }
    LOFTQ_UNROLL for (int g = 0; g < G; ++g) _mm256_storeu_ps(oj + 8 * g, acc[g]);
  }
}

template <int G>
LOFTQ_TARGET_AVX2 inline void skinny_slice_t(const float* m, std::ptrdiff_t sm, std::ptrdiff_t rows,
                                             std::ptrdiff_t cols, const float* y, std::ptrdiff_t sy, float* out,
                                             std::ptrdiff_t so) {
  std::ptrdiff_t i = 0;
  for (; i + 4 <= rows; i += 4) skinny_rows_t<4, G>(m + i * sm, sm, cols, y + i * sy, sy, out, so, i == 0);
  for (; i < rows; ++i) skinny_rows_t<1, G>(m + i * sm, sm, cols, y + i * sy, sy, out, so, i == 0);
}

// Slices of up to 24 columns of y, each a pass over m's rows, over the
// multiple-of-8 prefix of the columns; returns its width.
LOFTQ_TARGET_AVX2 inline std::ptrdiff_t skinny_gemm_t_avx2(const float* m, std::ptrdiff_t sm, std::ptrdiff_t rows,
                                                           std::ptrdiff_t cols, const float* y, std::ptrdiff_t sy,
                                                           std::ptrdiff_t w, float* out, std::ptrdiff_t so) {
  const std::ptrdiff_t w8 = w / 8 * 8;
  for (std::ptrdiff_t g = 0; g < w8; g += 24) {
    switch (std::min<std::ptrdiff_t>(24, w8 - g)) {
      case 24:
        skinny_slice_t<3>(m, sm, rows, cols, y + g, sy, out + g, so);
        break;
      case 16:
        skinny_slice_t<2>(m, sm, rows, cols, y + g, sy, out + g, so);
        break;
      default:
        skinny_slice_t<1>(m, sm, rows, cols, y + g, sy, out + g, so);
        break;
    }
  }
  return w8;
}
#endif

inline void skinny_gemm_t(const float* m, std::ptrdiff_t sm, std::ptrdiff_t rows, std::ptrdiff_t cols, const float* y,
                          std::ptrdiff_t sy, std::ptrdiff_t w, float* out, std::ptrdiff_t so) {
  std::ptrdiff_t w8 = 0;
#if LOFTQ_X86_KERNELS
  if (use_avx2()) w8 = skinny_gemm_t_avx2(m, sm, rows, cols, y, sy, w, out, so);
#endif
#if LOFTQ_NEON_KERNELS
  if (use_neon()) w8 = skinny_gemm_t_neon(m, sm, rows, cols, y, sy, w, out, so);
#endif
  // Columns past the last full vector: the same chain as the vector lanes.
  for (std::ptrdiff_t j = 0; j < cols; ++j)
    for (std::ptrdiff_t g = w8; g < w; ++g) {
      float s = 0.0f;
      for (std::ptrdiff_t i = 0; i < rows; ++i) s = std::fma(m[i * sm + j], y[i * sy + g], s);
      out[j * so + g] = s;
    }
}

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
