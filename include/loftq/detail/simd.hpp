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
#endif

}  // namespace detail
}  // namespace loftq
