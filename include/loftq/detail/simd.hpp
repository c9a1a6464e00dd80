#pragma once
// AVX2 kernel for the nearest-code search on float, used when the including
// translation unit is compiled with AVX2 (e.g. -march=native) and
// LOFTQ_NO_SIMD is not defined. It computes exactly what the portable loop
// computes: the same IEEE division and the same >= comparisons, so codes and
// values are bit-identical with and without it.

#include <cstdint>

#if defined(__AVX2__) && !defined(LOFTQ_NO_SIMD)
#include <immintrin.h>
#define LOFTQ_HAS_AVX2 1
#else
#define LOFTQ_HAS_AVX2 0
#endif

namespace loftq {
namespace detail {

#if LOFTQ_HAS_AVX2
inline __m256 fmadd(__m256 a, __m256 b, __m256 c) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(a, b, c);
#else
  return _mm256_add_ps(_mm256_mul_ps(a, b), c);
#endif
}

// Entries idx (0..15) of a 16-entry table held in two registers.
inline __m256 lookup16(__m256 lo, __m256 hi, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  const __m256i upper = _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7));
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(upper));
}

// Processes the multiple-of-8 prefix of [0, n) and returns how many elements
// it handled. thr: 2^Bits - 1 thresholds (+inf padded), lev: 2^Bits levels.
template <int Bits>
std::int64_t code_span_avx2(const float* x, std::int64_t n, float off, float den, const float* thr, const float* lev,
                            std::uint8_t* codes, float* levels) {
  static_assert(Bits >= 2 && Bits <= 4, "AVX2 kernel covers 2..4 bits");
  constexpr int L = 1 << Bits;
  alignas(32) float thr16[16], lev16[16];
  for (int i = 0; i < 16; ++i) {
    thr16[i] = i < L - 1 ? thr[i] : thr[L - 2];
    lev16[i] = i < L ? lev[i] : lev[L - 1];
  }
  const __m256 tlo = _mm256_load_ps(thr16), thi = _mm256_load_ps(thr16 + 8);
  const __m256 llo = _mm256_load_ps(lev16), lhi = _mm256_load_ps(lev16 + 8);
  const __m256 voff = _mm256_set1_ps(off), vden = _mm256_set1_ps(den);
  // Gathers byte 0 of each 32-bit lane into the low 4 bytes of each 128-bit half.
  const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,  //
                                        0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 y = _mm256_div_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), voff), vden);
    // Branch-free binary search over the sorted thresholds: each step asks
    // whether y reaches the threshold in the middle of the remaining range.
    __m256i c = _mm256_setzero_si256();
    for (int s = L / 2; s >= 1; s /= 2) {
      const __m256i probe = _mm256_add_epi32(c, _mm256_set1_epi32(s - 1));
      const __m256 t = lookup16(tlo, thi, probe);
      const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(y, t, _CMP_GE_OQ));
      c = _mm256_add_epi32(c, _mm256_and_si256(ge, _mm256_set1_epi32(s)));
    }
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(c, pick), join);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + j), _mm256_castsi256_si128(bytes));
    if (levels) _mm256_storeu_ps(levels + j, lookup16(llo, lhi, c));
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
std::int64_t scale_error_avx2(const float* x, const float* w, std::int64_t n, float inv, const float* thr16,
                              const float* lev16, float* acc) {
  constexpr int L = 1 << Bits;
  const __m256 tlo = _mm256_load_ps(thr16), thi = _mm256_load_ps(thr16 + 8);
  const __m256 llo = _mm256_load_ps(lev16), lhi = _mm256_load_ps(lev16 + 8);
  const __m256 vinv = _mm256_set1_ps(inv);
  __m256 se = _mm256_setzero_ps(), szl = _mm256_setzero_ps(), sll = _mm256_setzero_ps();
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 z = _mm256_mul_ps(_mm256_loadu_ps(x + j), vinv);
    __m256i c = _mm256_setzero_si256();
    for (int s = L / 2; s >= 1; s /= 2) {
      const __m256i probe = _mm256_add_epi32(c, _mm256_set1_epi32(s - 1));
      const __m256 t = L <= 8 ? _mm256_permutevar8x32_ps(tlo, probe) : lookup16(tlo, thi, probe);
      const __m256i ge = _mm256_castps_si256(_mm256_cmp_ps(z, t, _CMP_GE_OQ));
      c = _mm256_add_epi32(c, _mm256_and_si256(ge, _mm256_set1_epi32(s)));
    }
    const __m256 v = L <= 8 ? _mm256_permutevar8x32_ps(llo, c) : lookup16(llo, lhi, c);
    const __m256 d = _mm256_sub_ps(z, v);
    if constexpr (Weighted) {
      const __m256 wv = _mm256_loadu_ps(w + j), wl = _mm256_mul_ps(wv, v);
      se = fmadd(_mm256_mul_ps(wv, d), d, se);
      szl = fmadd(wl, z, szl);
      sll = fmadd(wl, v, sll);
    } else {
      se = fmadd(d, d, se);
      szl = fmadd(v, z, szl);
      sll = fmadd(v, v, sll);
    }
  }
  alignas(32) float tmp[3][8];
  _mm256_store_ps(tmp[0], se);
  _mm256_store_ps(tmp[1], szl);
  _mm256_store_ps(tmp[2], sll);
  for (int k = 0; k < 3; ++k) {
    float t = 0;
    for (int i = 0; i < 8; ++i) t += tmp[k][i];
    acc[k] += t;
  }
  return j;
}
#endif

}  // namespace detail
}  // namespace loftq
