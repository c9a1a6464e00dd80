#pragma once
// AVX2 kernels for the nearest-code search on float. They are compiled in
// every x86-64 build through target attributes (macro_scope.hpp) and called
// only when the CPU has AVX2 and FMA (dispatch.hpp). code_span_avx2 computes
// exactly what the portable loop computes: the same IEEE division and the
// same >= comparisons against the same thresholds, so codes and values are
// bit-identical with and without it.

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if !defined(LOFTQ_NO_SIMD) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include "dispatch.hpp"

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

// The end of the absmax kernels (AVX2 and NEON): folds x[j..n) into the
// vector part's maximum r and NaN flag, and returns the kernel's result.
inline float absmax_tail(const float* x, std::int64_t j, std::int64_t n, float r, bool has_nan) {
  for (; j < n; ++j) {
    const float a = x[j];
    has_nan |= a != a;
    const float v = a < 0 ? -a : a;
    if (v > r) r = v;
  }
  return has_nan ? std::numeric_limits<float>::quiet_NaN() : r;
}

// The sorted decision thresholds laid out as an implicit binary search tree:
// level j of the tree holds the 2^j thresholds that step j of the search can
// probe, tree[j][k] = thr[(2k + 1) * L / 2^(j+1) - 1]. A step then needs one
// in-register permute indexed by the path so far instead of an indexed
// lookup into the flat table. Up to 4 bits every level fits one 8-lane register.
template <int Bits>
struct SearchTree {
  static_assert(Bits >= 1 && Bits <= 4, "the search tree covers up to 4 bits");
  static constexpr int L = 1 << Bits;
  alignas(32) float tree[Bits][8]{};
  alignas(32) float level[16]{};  // levels padded to 16 entries
  SearchTree() = default;
  // thr: L - 1 sorted thresholds (+inf padded); lev: L levels.
  template <class T>
  SearchTree(const T* thr, const T* lev) {
    // Lanes past 2^j repeat the pattern, so level 0 is a broadcast of the root.
    for (int j = 0; j < Bits; ++j)
      for (int k = 0; k < 8; ++k) {
        const int kk = k % (1 << j);
        tree[j][k] = static_cast<float>(thr[(2 * kk + 1) * (L >> (j + 1)) - 1]);
      }
    for (int i = 0; i < 16; ++i) level[i] = static_cast<float>(lev[i < L ? i : L - 1]);
  }
};

// A float the compiler must treat as rounded: under GCC's default
// -ffp-contract=fast a product feeding an addition may otherwise become one
// fused multiply-add on an FMA-capable target, which rounds once instead of
// twice. Where the bits must match another path, products go through this.
inline float opaque(float v) {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  __asm__("" : "+x"(v));
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  __asm__("" : "+w"(v));
#endif
  return v;
}

// The same for either scalar type (double needs nothing: the products it
// forms from float operands are exact).
template <class Scalar>
inline Scalar opaque_scalar(Scalar v) {
  if constexpr (std::is_same<Scalar, float>::value) return opaque(v);
  return v;
}

#if LOFTQ_X86_KERNELS
LOFTQ_TARGET_AVX2 inline __m256 opaque(__m256 v) {
  __asm__("" : "+x"(v));
  return v;
}

LOFTQ_TARGET_AVX2 inline __m256 fmadd(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }

template <int Bits>
struct SearchTreeRegs {
  __m256 step[Bits];
  __m256 lo, hi;
  LOFTQ_TARGET_AVX2 explicit SearchTreeRegs(const SearchTree<Bits>& t) {
    LOFTQ_UNROLL for (int j = 0; j < Bits; ++j) step[j] = _mm256_load_ps(t.tree[j]);
    // Up to 2 bits the 4 levels repeat in both 128-bit lanes, for the in-lane permute.
    lo = Bits <= 2 ? _mm256_broadcast_ps(reinterpret_cast<const __m128*>(t.level)) : _mm256_load_ps(t.level);
    hi = _mm256_load_ps(t.level + 8);
  }
  // Number of thresholds y reaches (the nearest level's index): the path
  // k -> 2k + [y >= tree[j][k]] through the tree. Levels 1 and 2 have at most
  // 4 thresholds, repeated in both 128-bit lanes, so an in-lane permute
  // (cheaper than the cross-lane one) picks them.
  LOFTQ_TARGET_AVX2 __m256i code(__m256 y) const {
    __m256i k = _mm256_setzero_si256();
    LOFTQ_UNROLL for (int j = 0; j < Bits; ++j) {
      const __m256 t = j == 0  ? step[0]
                       : j < 3 ? _mm256_permutevar_ps(step[j], k)
                               : _mm256_permutevar8x32_ps(step[j], k);
      const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(y, t, _CMP_GE_OQ));
      k = _mm256_sub_epi32(_mm256_add_epi32(k, k), ge);  // ge is -1 where true
    }
    return k;
  }
  LOFTQ_TARGET_AVX2 __m256 level(__m256i c) const {
    if constexpr (Bits <= 2) {
      return _mm256_permutevar_ps(lo, c);
    } else if constexpr (Bits == 3) {
      return _mm256_permutevar8x32_ps(lo, c);
    } else {
      const __m256 a = _mm256_permutevar8x32_ps(lo, c), b = _mm256_permutevar8x32_ps(hi, c);
      const __m256i upper = _mm256_cmpgt_epi32(c, _mm256_set1_epi32(7));
      return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(upper));
    }
  }
};

// Processes the multiple-of-8 prefix of [0, n) and returns how many elements
// it handled: codes of y = (x - off) / den and, when levels is given, their levels.
template <int Bits>
LOFTQ_TARGET_AVX2 std::int64_t code_span_avx2(const SearchTree<Bits>& tree, const float* x, std::int64_t n, float off,
                                              float den, std::uint8_t* codes, float* levels) {
  const SearchTreeRegs<Bits> T(tree);
  const __m256 voff = _mm256_set1_ps(off), vden = _mm256_set1_ps(den);
  // Gathers byte 0 of each 32-bit lane into the low 4 bytes of each 128-bit half.
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), voff), vden);
    const __m256i c = T.code(y);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(c, pick), join);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + j), _mm256_castsi256_si128(bytes));
    if (levels) _mm256_storeu_ps(levels + j, T.level(c));
  }
  return j;
}

// max |x[j]| over [0, n), NaN when any x[j] is NaN (as Eigen's
// maxCoeff<PropagateNaN> on abs()): the per-block scale, computed once per
// block, so it is worth a kernel. The maximum is exact in any order.
LOFTQ_TARGET_AVX2 inline float absmax_avx2(const float* x, std::int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m0 = _mm256_setzero_ps(), m1 = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  std::int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + 8);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
    m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, a));
    m1 = _mm256_max_ps(m1, _mm256_andnot_ps(sign, b));
  }
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_loadu_ps(x + j);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    m0 = _mm256_max_ps(m0, _mm256_andnot_ps(sign, a));
  }
  m0 = _mm256_max_ps(m0, m1);
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  return absmax_tail(x, j, n, r, has_nan);
}

// Eight codes (bytes 0..7 of b) into the bit stream at dst in pack_codes'
// layout, element i at bit Bits * i: 4 bytes at 4 bits, 2 at 2 bits.
template <int Bits>
LOFTQ_TARGET_AVX2 inline void store_packed8(std::uint8_t* dst, __m128i b) {
  static_assert(Bits == 2 || Bits == 4, "whole bytes per 8 codes at 2 and 4 bits only");
  if constexpr (Bits == 4) {
    const __m128i pairs = _mm_maddubs_epi16(b, _mm_set1_epi16(0x1001));  // c[2i] + 16 c[2i+1]
    const int v = _mm_cvtsi128_si32(_mm_packus_epi16(pairs, pairs));
    std::memcpy(dst, &v, 4);
  } else {
    const __m128i pairs = _mm_maddubs_epi16(b, _mm_set1_epi16(0x0401));       // c[2i] + 4 c[2i+1]
    const __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00100001));  // pair[2i] + 16 pair[2i+1]
    const __m128i w16 = _mm_packus_epi32(quads, quads);
    const int v = _mm_cvtsi128_si32(_mm_packus_epi16(w16, w16));
    std::memcpy(dst, &v, 2);
  }
}

// The absmax pass fused end to end over the multiple-of-8 prefix: codes of
// y = x / den, and out = level * scale, or minuend - level * scale when
// minuend is given. The same operations in the same order as the portable
// path (no contraction: separate mul and sub), so the values are bit-identical.
// out (optional) may alias x: each vector is loaded before its store. Codes go to
// `codes` (a byte each) or, given `packed` (2 and 4 bits, x's first element
// on a byte boundary of the stream), straight into the bit stream.
template <int Bits>
LOFTQ_TARGET_AVX2 std::int64_t quantize_span_avx2(const SearchTree<Bits>& tree, const float* x, std::int64_t n,
                                                  float den, float scale, const float* minuend, std::uint8_t* codes,
                                                  float* out, std::uint8_t* packed = nullptr) {
  const SearchTreeRegs<Bits> T(tree);
  const __m256 vden = _mm256_set1_ps(den), vscale = _mm256_set1_ps(scale);
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + j), vden);
    const __m256i c = T.code(y);
    if (codes || packed) {
      const __m128i bytes = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(c, pick), join));
      if constexpr (Bits == 2 || Bits == 4) {
        if (packed) store_packed8<Bits>(packed + j * Bits / 8, bytes);
      }
      if (codes) _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + j), bytes);
    }
    if (out) {
      const __m256 v = opaque(_mm256_mul_ps(T.level(c), vscale));
      _mm256_storeu_ps(out + j, minuend ? _mm256_sub_ps(_mm256_loadu_ps(minuend + j), v) : v);
    }
  }
  return j;
}

// Decodes the multiple-of-8 prefix of [0, n) of absmax codes (one per byte):
// out = level[code] * scale, the same multiply as the portable path. Returns
// how many it wrote.
template <int Bits>
LOFTQ_TARGET_AVX2 std::int64_t decode_span_avx2(const SearchTree<Bits>& tree, const std::uint8_t* codes, std::int64_t n,
                                                float scale, float* out) {
  const SearchTreeRegs<Bits> T(tree);
  const __m256 vscale = _mm256_set1_ps(scale);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + j)));
    _mm256_storeu_ps(out + j, _mm256_mul_ps(T.level(c), vscale));
  }
  return j;
}

// Decodes straight from the packed stream for 2- and 4-bit absmax codes:
// `packed` holds element 0's code in its low bits (the caller passes a
// byte-aligned start), 8 codes per 16 or 32 bits. Returns how many of the n
// values it wrote (a multiple of 8), the same values as decode_span_avx2.
template <int Bits>
LOFTQ_TARGET_AVX2 std::int64_t decode_packed_avx2(const SearchTree<Bits>& tree, const std::uint8_t* packed,
                                                  std::int64_t n, float scale, float* out) {
  static_assert(Bits == 2 || Bits == 4, "8 codes per 16 or 32 bits");
  const SearchTreeRegs<Bits> T(tree);
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256i shifts = _mm256_setr_epi32(0, Bits, 2 * Bits, 3 * Bits, 4 * Bits, 5 * Bits, 6 * Bits, 7 * Bits);
  const __m256i mask = _mm256_set1_epi32((1 << Bits) - 1);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    std::uint32_t word = 0;
    std::memcpy(&word, packed + j * Bits / 8, Bits);  // 8 codes: Bits bytes
    const __m256i c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), mask);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(T.level(c), vscale));
  }
  return j;
}

// Scale-search inner loop: for z = x * inv over the multiple-of-8 prefix,
// accumulates sum w (z - lev[code(z)])^2, sum w z lev and sum w lev^2 (w = 1
// when Weighted is false) into acc[0..2]; returns how many elements it took.
// Multiplying by the reciprocal instead of dividing is fine here: only the
// choice of scale depends on it, and the final codes are recomputed by the
// exact kernel above.
template <int Bits, bool Weighted>
LOFTQ_TARGET_AVX2 std::int64_t scale_error_avx2(const SearchTree<Bits>& tree, const float* x, const float* w,
                                                std::int64_t n, float inv, float* acc) {
  const SearchTreeRegs<Bits> T(tree);
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256 se = _mm256_setzero_ps(), szl = _mm256_setzero_ps(), sll = _mm256_setzero_ps();
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 z = opaque(_mm256_mul_ps(_mm256_loadu_ps(x + j), vinv));
    const __m256 v = T.level(T.code(z));
    const __m256 d = _mm256_sub_ps(z, v);
    if constexpr (Weighted) {
      const __m256 wv = _mm256_loadu_ps(w + j), wl = opaque(_mm256_mul_ps(wv, v));
      se = fmadd(opaque(_mm256_mul_ps(wv, d)), d, se);
      szl = fmadd(wl, z, szl);
      sll = fmadd(wl, v, sll);
    } else {
      se = fmadd(d, d, se);
      szl = fmadd(v, z, szl);
      sll = fmadd(v, v, sll);
    }
  }
  // Three horizontal sums at once: lanes 0..2 end up holding se, szl, sll.
  const __m256 a = _mm256_hadd_ps(se, szl), b = _mm256_hadd_ps(sll, _mm256_setzero_ps());
  const __m256 c = _mm256_hadd_ps(a, b);
  alignas(16) float t[4];
  _mm_store_ps(t, _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1)));
  acc[0] += t[0];
  acc[1] += t[1];
  acc[2] += t[2];
  return j;
}
#endif

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
