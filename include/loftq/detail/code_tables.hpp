#pragma once
// The per-bit-width level tables of the quantization kernels and the span
// kernels built on them: codes of a span by the decision thresholds (SIMD
// paths included), and the decoding of codes to values. block_quantizer.hpp
// drives them block by block.

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "../codebook.hpp"
#include "../error.hpp"
#include "../packed.hpp"
#include "ggml_blocks.hpp"
#include "ggml_kquant_block.hpp"
#include "instances.hpp"
#include "memory.hpp"
#include "parallel.hpp"
#include "quant_spec.hpp"
#include "simd.hpp"
#include "simd_neon.hpp"

#include "macro_scope.hpp"

namespace loftq {
namespace detail {

// Thresholds padded with +inf to 2^Bits - 1 entries, so the count/search never
// needs the real table length.
template <class Scalar, int Bits>
struct Tables {
  static constexpr int L = 1 << Bits;
  std::array<Scalar, L> level{};
  std::array<Scalar, L - 1> thr{};
  // The same thresholds as a search tree for the AVX2 kernels (float, <= 4 bits).
  std::conditional_t<(Bits <= 4), SearchTree<(Bits <= 4 ? Bits : 4)>, char> tree{};
#if LOFTQ_NEON_KERNELS
  // And as table registers for the NEON kernels (float, <= 4 bits).
  std::conditional_t<(Bits <= 4), NeonTable<(Bits <= 4 ? Bits : 4)>, char> neon{};
#endif
  explicit Tables(const std::vector<float>& cb) {
    const auto t = decision_thresholds<Scalar>(cb);
    for (int i = 0; i < L; ++i) level[i] = static_cast<Scalar>(cb[i]);
    for (int i = 0; i < L - 1; ++i)
      thr[i] = i < static_cast<int>(t.size()) ? t[i] : std::numeric_limits<Scalar>::infinity();
    if constexpr (Bits <= 4) tree = SearchTree<Bits>(thr.data(), level.data());
#if LOFTQ_NEON_KERNELS
    if constexpr (Bits <= 4) neon = NeonTable<Bits>(tree);
#endif
  }
  // Number of thresholds y reaches: the index of the nearest level.
  int code(Scalar y) const {
    if constexpr (Bits <= 4) {
      int c = 0;
      for (int i = 0; i < L - 1; ++i) c += y >= thr[i];
      return c;
    } else {
      int c = 0;
      for (int s = L / 2; s >= 1; s /= 2) c += (y >= thr[c + s - 1]) ? s : 0;
      return c;
    }
  }
};

// max |x[j]|, NaN if any x[j] is NaN.
template <class Scalar>
Scalar absmax(const Scalar* x, std::int64_t n) {
#if LOFTQ_X86_KERNELS
  if constexpr (std::is_same<Scalar, float>::value)
    if (use_avx2()) return absmax_avx2(x, n);
#endif
#if LOFTQ_NEON_KERNELS
  if constexpr (std::is_same<Scalar, float>::value)
    if (use_neon()) return absmax_neon(x, n);
#endif
  // Eigen's reductions vectorize; a plain std::max loop stays scalar.
  const Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> blk(x, n);
  return blk.abs().template maxCoeff<Eigen::PropagateNaN>();
}

template <class Scalar>
float checked_scale(Scalar s, Eigen::Index block) {
  // The block reductions propagate NaN, so this one test per block also
  // catches NaN and Inf in the input: the kernels need no separate pass.
  // Checked by hand: this runs once per block, and require() would build
  // the message every time.
  if (!std::isfinite(s)) fail(Errc::non_finite, "the matrix contains NaN or Inf (block " + std::to_string(block) + ")");
  const float f = static_cast<float>(s);
  if (!std::isfinite(f))
    fail(Errc::invalid_argument,
         "block " + std::to_string(block) + " has magnitude beyond the float range; block scales are fp32");
  return f;
}

// Codes (and, when vals is given, dequantized values) of one span of a block;
// den == 0 means a constant block. Up to 4 bits the level is found by a chain
// of compare-and-select over the sorted thresholds: the last threshold reached
// wins, which is exactly level[count], and the chain vectorizes with no
// gathers. Restrict-qualified outputs matter: a uint8_t store may otherwise
// alias anything and blocks vectorization.
template <class Scalar, int Bits>
inline void code_span(const Tables<Scalar, Bits>& T, const Scalar* LOFTQ_RESTRICT x, std::int64_t n, Scalar off,
                      Scalar den, std::uint8_t* LOFTQ_RESTRICT codes, Scalar* LOFTQ_RESTRICT levels) {
  constexpr int L = Tables<Scalar, Bits>::L;
  if (den == Scalar(0)) {
    const int c0 = T.code(Scalar(0));
    for (std::int64_t j = 0; j < n; ++j) codes[j] = static_cast<std::uint8_t>(c0);
    if (levels)
      for (std::int64_t j = 0; j < n; ++j) levels[j] = T.level[c0];
    return;
  }
  if constexpr (Bits <= 4) {
    Scalar thr[L - 1], lev[L];
    for (int i = 0; i < L - 1; ++i) thr[i] = T.thr[i];
    for (int i = 0; i < L; ++i) lev[i] = T.level[i];
#if LOFTQ_X86_KERNELS
    if constexpr (std::is_same<Scalar, float>::value) {
      const std::int64_t done = !use_avx2() ? 0 : code_span_avx2<Bits>(T.tree, x, n, off, den, codes, levels);
      x += done;
      codes += done;
      if (levels) levels += done;
      n -= done;
    }
#endif
#if LOFTQ_NEON_KERNELS
    if constexpr (std::is_same<Scalar, float>::value) {
      const std::int64_t done = !use_neon() ? 0 : code_span_neon<Bits>(T.neon, x, n, off, den, codes, levels);
      x += done;
      codes += done;
      if (levels) levels += done;
      n -= done;
    }
#endif
    if (levels) {
      for (std::int64_t j = 0; j < n; ++j) {
        const Scalar y = (x[j] - off) / den;
        std::int32_t c = 0;
        Scalar v = lev[0];
        LOFTQ_UNROLL
        for (int i = 0; i < L - 1; ++i) {
          const bool ge = y >= thr[i];
          const Scalar cand = lev[i + 1];
          c += ge;
          v = ge ? cand : v;
        }
        codes[j] = static_cast<std::uint8_t>(c);
        levels[j] = v;
      }
    } else {
      for (std::int64_t j = 0; j < n; ++j) {
        const Scalar y = (x[j] - off) / den;
        std::int32_t c = 0;
        LOFTQ_UNROLL
        for (int i = 0; i < L - 1; ++i) c += y >= thr[i];
        codes[j] = static_cast<std::uint8_t>(c);
      }
    }
  } else {
    for (std::int64_t j = 0; j < n; ++j) {
      const int c = T.code((x[j] - off) / den);
      codes[j] = static_cast<std::uint8_t>(c);
      if (levels) levels[j] = T.level[c];
    }
  }
}

// Scales normalized levels into values in place.
template <class Scalar>
inline void scale_levels(Scalar* LOFTQ_RESTRICT v, std::int64_t n, ScaleMode mode, Scalar scale, Scalar lo) {
  if (mode == ScaleMode::absmax) {
    for (std::int64_t j = 0; j < n; ++j) v[j] = v[j] * scale;
  } else if (mode == ScaleMode::affine) {
    // The product rounded before the subtraction, as ggml's C reads.
    for (std::int64_t j = 0; j < n; ++j) v[j] = opaque_scalar(v[j] * scale) - lo;
  } else {
    for (std::int64_t j = 0; j < n; ++j) {
      const Scalar t = v[j];
      const Scalar w = lo * (Scalar(1) - t) + scale * t;
      v[j] = std::min(std::max(w, lo), scale);
    }
  }
}

template <class Scalar, int Bits>
inline void decode_span(const Tables<Scalar, Bits>& T, const std::uint8_t* LOFTQ_RESTRICT codes, std::int64_t n,
                        ScaleMode mode, Scalar scale, Scalar lo, Scalar* LOFTQ_RESTRICT out) {
#if LOFTQ_X86_KERNELS
  if constexpr (std::is_same<Scalar, float>::value && Bits <= 4) {
    if (mode == ScaleMode::absmax && use_avx2()) {
      const std::int64_t done = decode_span_avx2<Bits>(T.tree, codes, n, scale, out);
      codes += done;
      out += done;
      n -= done;
    }
  }
#endif
  for (std::int64_t j = 0; j < n; ++j) out[j] = T.level[codes[j]];
  scale_levels(out, n, mode, scale, lo);
}

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"
