#pragma once
// The quantization kernels behind quantizer.hpp and the LoftQ loop, driven by
// a QuantSpec (quant_spec.hpp: what a pass needs from any quantizer): the
// per-bit-width level tables (code_tables.hpp), BlockQuantizer (codes, scales, the error-optimal
// scale search, SIMD paths) and the flat passes quantize_flat /
// dequantize_flat over a row-major flattening. Blocks are independent and tasks cover whole, byte-aligned
// groups of blocks, so results do not depend on the thread count.

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
#include "code_tables.hpp"
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

// Scale search. For a block with absmax a, candidate scales s = a f with
// f <= 1 are scored by the block's (weighted) squared error with the nearest
// codes at that scale. Keeping s <= a makes the extreme element clip to the
// codebook's +-1 level, so the dequantized block's absmax is s itself and
// requantizing it with plain absmax gives back the same codes and scale: the
// storage format and its readers do not change.
//
// A coarse grid of fractions is followed by Lloyd steps (for fixed codes the
// best scale is sum w x c / sum w c^2, clamped to <= a); f = 1 is always a
// candidate and a step is kept only when it lowers the error. A Lloyd step
// cannot raise the error (see search_scale), so the last one is taken
// without scoring it, and the result is never worse than absmax beyond
// rounding.

// The portable twin of scale_error_avx2 for float: eight lanes, each a fused
// multiply-add chain, summed in the same tree, so every kernel family picks
// the same scale. std::fma is one instruction wherever FMA exists (and exact
// in software elsewhere).
template <int Bits, bool Weighted>
std::int64_t scale_error_lanes(const Tables<float, Bits>& T, const float* x, const float* w, std::int64_t n, float inv,
                               float* acc) {
  float se[8] = {}, szl[8] = {}, sll[8] = {};
  std::int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      const float z = opaque(x[j + l] * inv), v = T.level[T.code(z)], d = z - v;
      if constexpr (Weighted) {
        const float wl = opaque(w[j + l] * v);
        se[l] = std::fma(opaque(w[j + l] * d), d, se[l]);
        szl[l] = std::fma(wl, z, szl[l]);
        sll[l] = std::fma(wl, v, sll[l]);
      } else {
        se[l] = std::fma(d, d, se[l]);
        szl[l] = std::fma(v, z, szl[l]);
        sll[l] = std::fma(v, v, sll[l]);
      }
    }
  const auto tree_sum = [](const float* a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  };
  acc[0] += tree_sum(se);
  acc[1] += tree_sum(szl);
  acc[2] += tree_sum(sll);
  return j;
}

// sums[0] = sum w (z - c)^2, sums[1] = sum w z c, sums[2] = sum w c^2 with
// z = x * inv and c the level nearest z.
template <class Scalar, int Bits>
void scale_error(const Tables<Scalar, Bits>& T, const Scalar* LOFTQ_RESTRICT x, const Scalar* LOFTQ_RESTRICT w,
                 std::int64_t n, Scalar inv, Scalar* sums) {
  float facc[3] = {0, 0, 0};
  std::int64_t j = 0;
  if constexpr (std::is_same<Scalar, float>::value && Bits <= 4) {
#if LOFTQ_X86_KERNELS
    if (use_avx2())
      j = w ? scale_error_avx2<Bits, true>(T.tree, x, w, n, inv, facc)
            : scale_error_avx2<Bits, false>(T.tree, x, w, n, inv, facc);
    else
#endif
#if LOFTQ_NEON_KERNELS
        if (use_neon())
      j = w ? scale_error_neon<Bits, true>(T.neon, x, w, n, inv, facc)
            : scale_error_neon<Bits, false>(T.neon, x, w, n, inv, facc);
    else
#endif
      j = w ? scale_error_lanes<Bits, true>(T, x, w, n, inv, facc)
            : scale_error_lanes<Bits, false>(T, x, w, n, inv, facc);
  }
  Scalar e = facc[0], zl = facc[1], ll = facc[2];
  for (; j < n; ++j) {
    const Scalar z = x[j] * inv, c = T.level[T.code(z)], d = z - c, wj = w ? w[j] : Scalar(1);
    e += wj * d * d;
    zl += wj * z * c;
    ll += wj * c * c;
  }
  sums[0] = e;
  sums[1] = zl;
  sums[2] = ll;
}

// Fractions of absmax tried before the Lloyd steps, and the number of Lloyd
// steps, by bit width: fewer levels clip harder and gain more from search.
// Chosen by measurement (LoftQ r16 T5 on a realistic 1024^2 matrix and
// stories260K r8); larger grids gained < 0.5% error.
struct ScaleGrid {
  std::vector<double> fractions;
  int lloyd_steps;
};
inline const ScaleGrid& scale_grid(int bits) {
  static const ScaleGrid g2{{0.9, 0.75, 0.6}, 2}, g3{{0.9, 0.8, 0.7}, 2}, g4{{0.9, 0.8}, 1},
      g5{{0.98, 0.95, 0.92, 0.88}, 2};
  return bits <= 2 ? g2 : bits == 3 ? g3 : bits == 4 ? g4 : g5;
}

// The searched scale (a float, <= amax) of one block.
template <class Scalar, int Bits>
float search_scale(const Tables<Scalar, Bits>& T, const Scalar* x, const Scalar* w, std::int64_t n, float amax,
                   const ScaleGrid& grid, float* fraction) {
  Scalar sums[3];
  // A warm start replaces absmax and the grid by the previous fraction: the
  // Lloyd steps that follow only improve on it.
  const bool warm = fraction && *fraction > 0.0f && *fraction <= 1.0f;
  float best = warm ? static_cast<float>(static_cast<double>(amax) * *fraction) : amax;
  if (!(best > 0.0f)) best = amax;
  scale_error(T, x, w, n, Scalar(1) / static_cast<Scalar>(best), sums);
  // Errors compare in x units: s^2 * sum w (x/s - c)^2.
  Scalar best_err = static_cast<Scalar>(best) * static_cast<Scalar>(best) * sums[0];
  Scalar best_zl = sums[1], best_ll = sums[2];
  auto consider = [&](float s) {
    if (!(s > 0.0f) || s > amax || s == best) return false;
    Scalar su[3];
    const Scalar sv = static_cast<Scalar>(s);
    scale_error(T, x, w, n, Scalar(1) / sv, su);
    const Scalar err = sv * sv * su[0];
    if (!(err < best_err)) return false;
    best = s;
    best_err = err;
    best_zl = su[1];
    best_ll = su[2];
    return true;
  };
  if (!warm)
    for (double f : grid.fractions) consider(static_cast<float>(static_cast<double>(amax) * f));
  for (int k = 0; k < grid.lloyd_steps; ++k) {
    if (!(best_ll > 0)) break;
    const Scalar s = static_cast<Scalar>(best) * best_zl / best_ll;
    const float next = static_cast<float>(std::min<Scalar>(s, static_cast<Scalar>(amax)));
    if (k + 1 < grid.lloyd_steps) {
      if (!consider(next)) break;
      continue;
    }
    // The last step is taken without scoring it, which saves a pass over the
    // block: for the current codes the Lloyd scale minimizes the (convex
    // quadratic) error, the clamp to amax keeps it between that minimum and
    // `best`, and reassigning codes at the new scale only lowers it further.
    // So it never loses to `best` beyond rounding.
    if (next > 0.0f && next <= amax) best = next;
  }
  if (fraction) *fraction = best / amax;
  return best;
}

// Number of consecutive blocks handled by one task: byte-aligned in the code
// stream (so tasks never share a byte) and large enough to amortize overhead.
inline std::int64_t blocks_per_task(const QuantSpec& s) {
  const std::int64_t bb = static_cast<std::int64_t>(s.block_size) * s.bits;
  std::int64_t g = 8 / std::gcd<std::int64_t>(bb, 8);
  while (g * s.block_size < 16384) g *= 2;
  return g;
}

constexpr std::int64_t kSpan = 1024;

// Quantizes blocks [b0, b1) of an N-element input: in -> (deq, packed),
// either output optional; deq may alias in because each block is read fully
// before it is written. With a minuend M it writes M - q(in) instead of q(in):
// LoftQ's next residual W - Q comes out of the same sweep. Each block's result
// depends only on its own input (and fraction), never on the range it was
// handed in, which is what lets callers fuse this into their own sweeps.
template <class Scalar, int Bits>
class BlockQuantizer {
 public:
  explicit BlockQuantizer(const QuantSpec& s)
      : s_(s),
        T_(*s.codebook),
        search_(s.search && s.mode == ScaleMode::absmax && s.codebook->front() == -1.0f && s.codebook->back() == 1.0f),
        grid_(scale_grid(s.bits)) {
    if (s.col_weights) require(s.cols >= 1, Errc::invalid_argument, "column weights need the column count");
  }

  void run(const Scalar* in, Scalar* deq, PackedMatrix* out, std::int64_t N, std::int64_t b0, std::int64_t b1,
           const Scalar* minuend) const {
    const QuantSpec& s = s_;
    const Tables<Scalar, Bits>& T = T_;
    const std::int64_t bs = s.block_size;
    std::uint8_t codes[kSpan];
    Scalar levels[kSpan];
    std::vector<Scalar> wbuf(s.col_weights && search_ ? static_cast<std::size_t>(bs) : 0);
    [[maybe_unused]] const bool avx2 = use_avx2(), neon = use_neon();
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t e0 = b * bs, e1 = std::min(N, e0 + bs);
      const Scalar* x = in + e0;
      Scalar off = 0, den = 0, lo = 0, scale = 0;
      if (s.mode == ScaleMode::absmax) {
        scale = static_cast<Scalar>(checked_scale(absmax(x, e1 - e0), b));
        if (search_ && scale > 0) {
          const Scalar* wb = nullptr;
          if (s.col_weights) {
            // The block's weights; a block may wrap into the next row.
            for (std::int64_t j = e0; j < e1; ++j) wbuf[j - e0] = static_cast<Scalar>(s.col_weights[j % s.cols]);
            wb = wbuf.data();
          }
          scale = static_cast<Scalar>(search_scale(T, x, wb, e1 - e0, static_cast<float>(scale), grid_,
                                                   s.fractions ? s.fractions + b : nullptr));
        }
        den = scale;
        if (out) out->scales[b] = static_cast<float>(scale);
      } else {
        const Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>> blk(x, e1 - e0);
        lo = static_cast<Scalar>(checked_scale(blk.template minCoeff<Eigen::PropagateNaN>(), b));
        scale = static_cast<Scalar>(checked_scale(blk.template maxCoeff<Eigen::PropagateNaN>(), b));
        off = lo;
        den = scale - lo;
        if (!std::isfinite(den))
          fail(Errc::invalid_argument,
               "block " + std::to_string(b) + " has a range (max - min) beyond the scalar type");
        if (out) {
          out->scales[b] = static_cast<float>(scale);
          out->mins[b] = static_cast<float>(lo);
        }
      }
      for (std::int64_t j0 = e0; j0 < e1; j0 += kSpan) {
        const std::int64_t n_span = std::min(kSpan, e1 - j0);
        std::int64_t done = 0;
#if LOFTQ_X86_KERNELS
        if constexpr (std::is_same<Scalar, float>::value && Bits <= 4) {
          if (avx2 && s.mode == ScaleMode::absmax && den != Scalar(0)) {
            // At 2 and 4 bits, from a byte boundary, the codes are packed in
            // registers instead of through pack_codes' byte loop.
            std::uint8_t* direct = nullptr;
            if constexpr (Bits == 2 || Bits == 4)
              if (out && (j0 * Bits) % 8 == 0) direct = out->codes.data() + j0 * Bits / 8;
            // Codes and final values in one sweep; the ragged tail goes below.
            if (deq || direct)
              done = quantize_span_avx2<Bits>(T.tree, in + j0, n_span, den, scale, minuend ? minuend + j0 : nullptr,
                                              out && !direct ? codes : nullptr, deq ? deq + j0 : nullptr, direct);
            if (out && !direct) pack_codes(out->codes.data(), j0, codes, done, s.bits);
          }
        }
#endif
#if LOFTQ_NEON_KERNELS
        if constexpr (std::is_same<Scalar, float>::value && Bits <= 4) {
          if (neon && s.mode == ScaleMode::absmax && den != Scalar(0) && deq) {
            // Codes and final values in one sweep; the ragged tail goes below.
            done = quantize_span_neon<Bits>(T.neon, in + j0, n_span, den, scale, minuend ? minuend + j0 : nullptr,
                                            out ? codes : nullptr, deq + j0);
            if (out) pack_codes(out->codes.data(), j0, codes, done, s.bits);
          }
        }
#endif
        if (done == n_span) continue;
        const std::int64_t j1 = j0 + done, n = n_span - done;
        // levels is a separate buffer because deq may alias in.
        code_span(T, in + j1, n, off, den, codes, deq ? levels : nullptr);
        if (out) pack_codes(out->codes.data(), j1, codes, n, s.bits);
        if (deq) {
          scale_levels(levels, n, s.mode, scale, lo);
          if (minuend) {
            const Scalar* LOFTQ_RESTRICT w = minuend + j1;
            for (std::int64_t j = 0; j < n; ++j) deq[j1 + j] = w[j] - levels[j];
          } else {
            std::copy(levels, levels + n, deq + j1);
          }
        }
      }
    }
  }

 private:
  const QuantSpec& s_;
  Tables<Scalar, Bits> T_;
  bool search_;
  const ScaleGrid& grid_;
};

// Calls f(std::integral_constant<int, B>{}) for s.bits == B.
template <class F>
decltype(auto) with_bits(int bits, F&& f) {
  switch (bits) {
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 3:
      return f(std::integral_constant<int, 3>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    case 5:
      return f(std::integral_constant<int, 5>{});
    case 6:
      return f(std::integral_constant<int, 6>{});
    case 7:
      return f(std::integral_constant<int, 7>{});
    case 8:
      return f(std::integral_constant<int, 8>{});
    default:
      fail(Errc::unsupported, "unsupported bit width " + std::to_string(bits));
  }
}

// Calls f(bq) with the block kernel of s: GgmlKBlockQuantizer for a ggml K
// format, GgmlBlockQuantizer for another ggml format, else BlockQuantizer at
// s.bits.
template <class Scalar, class F>
decltype(auto) with_block_quantizer(const QuantSpec& s, F&& f) {
  if (ggml_is_k_format(s.ggml)) {
    const GgmlKBlockQuantizer<Scalar> bq(s);
    return f(bq);
  }
  if (s.ggml != GgmlFormat::none) {
    const GgmlBlockQuantizer<Scalar> bq(s);
    return f(bq);
  }
  return with_bits(s.bits, [&](auto B) {
    const BlockQuantizer<Scalar, decltype(B)::value> bq(s);
    return f(bq);
  });
}

// The one quantization pass over all N elements, in fixed tasks of
// blocks_per_task blocks.
template <class Scalar>
void quantize_flat(const Scalar* in, Scalar* deq, PackedMatrix* out, std::int64_t N, const QuantSpec& s, int threads,
                   const Scalar* minuend = nullptr) {
  with_block_quantizer<Scalar>(s, [&](const auto& bq) {
    const std::int64_t nb = (N + s.block_size - 1) / s.block_size, g = blocks_per_task(s);
    parallel_for((nb + g - 1) / g, threads,
                 [&](std::int64_t task) { bq.run(in, deq, out, N, task * g, std::min(nb, (task + 1) * g), minuend); });
  });
}

template <class Scalar, int Bits>
void dequantize_flat_impl(const PackedMatrix& P, Scalar* out, int threads) {
  const Tables<Scalar, Bits> T(P.codebook);
  QuantSpec s;
  s.bits = P.bits;
  s.block_size = P.block_size;
  const std::int64_t N = P.size(), bs = P.block_size, nb = P.num_blocks(), g = blocks_per_task(s);
  parallel_for((nb + g - 1) / g, threads, [&](std::int64_t task) {
    std::uint8_t codes[kSpan];
    const std::int64_t b_end = std::min(nb, (task + 1) * g);
    for (std::int64_t b = task * g; b < b_end; ++b) {
      const std::int64_t e0 = b * bs, e1 = std::min(N, e0 + bs);
      const Scalar scale = static_cast<Scalar>(P.scales[b]);
      const Scalar lo = P.scale_mode != ScaleMode::absmax ? static_cast<Scalar>(P.mins[b]) : Scalar(0);
      for (std::int64_t j0 = e0; j0 < e1; j0 += kSpan) {
        std::int64_t n = std::min(kSpan, e1 - j0), j = j0;
#if LOFTQ_X86_KERNELS
        if constexpr (std::is_same<Scalar, float>::value && (Bits == 2 || Bits == 4)) {
          if (P.scale_mode == ScaleMode::absmax && (j * Bits) % 8 == 0 && use_avx2()) {
            const std::int64_t done =
                decode_packed_avx2<Bits>(T.tree, P.codes.data() + j * Bits / 8, n, static_cast<float>(scale), out + j);
            j += done;
            n -= done;
          }
        }
#endif
        unpack_codes(P.codes.data(), P.codes.size(), j, codes, n, P.bits);
        decode_span(T, codes, n, P.scale_mode, scale, lo, out + j);
      }
    }
  });
}

template <class Scalar>
void dequantize_flat(const PackedMatrix& P, Scalar* out, int threads) {
  switch (P.bits) {
    case 1:
      fail(Errc::unsupported, "1-bit codes are not supported");
    case 2:
      return dequantize_flat_impl<Scalar, 2>(P, out, threads);
    case 3:
      return dequantize_flat_impl<Scalar, 3>(P, out, threads);
    case 4:
      return dequantize_flat_impl<Scalar, 4>(P, out, threads);
    case 5:
      return dequantize_flat_impl<Scalar, 5>(P, out, threads);
    case 6:
      return dequantize_flat_impl<Scalar, 6>(P, out, threads);
    case 7:
      return dequantize_flat_impl<Scalar, 7>(P, out, threads);
    case 8:
      return dequantize_flat_impl<Scalar, 8>(P, out, threads);
    default:
      fail(Errc::unsupported, "unsupported bit width " + std::to_string(P.bits));
  }
}

// P := make_packed(rows, cols, s), reusing P's storage: every field is
// reset, and the codes grow (advised, as a fresh set) only when they must.
inline void reset_packed(PackedMatrix& P, Eigen::Index rows, Eigen::Index cols, const QuantSpec& s) {
  P.rows = rows;
  P.cols = cols;
  // A K format quantizes super-blocks but stores a scale per sub-block.
  P.block_size = ggml_is_k_format(s.ggml) ? ggml_format_sub_block(s.ggml) : s.block_size;
  P.bits = s.bits;
  P.scale_mode = s.mode;
  P.ggml_format = s.ggml;
  P.codebook = *s.codebook;
  const std::size_t bytes = packed_bytes(rows * cols, s.bits);
  if (P.codes.capacity() < bytes) {
    std::vector<std::uint8_t>().swap(P.codes);
    P.codes.reserve(bytes);
    advise_huge_pages(P.codes.data(), bytes);  // before the zero fill first touches it
  }
  P.codes.assign(bytes, 0);
  P.scales.assign(static_cast<std::size_t>(P.num_blocks()), 0.0f);
  if (s.mode != ScaleMode::absmax)
    P.mins.assign(P.scales.size(), 0.0f);
  else
    P.mins.clear();
  P.scale_dq = DoubleQuantScales{};
  if (ggml_is_k_format(s.ggml))
    P.ggml_blocks.assign(static_cast<std::size_t>((rows * cols + kGgmlSuperBlock - 1) / kGgmlSuperBlock) *
                             static_cast<std::size_t>(ggml_format_block_bytes(s.ggml)),
                         0);
  else
    P.ggml_blocks.clear();
}

inline PackedMatrix make_packed(Eigen::Index rows, Eigen::Index cols, const QuantSpec& s) {
  PackedMatrix P;
  reset_packed(P, rows, cols, s);
  return P;
}

}  // namespace detail
}  // namespace loftq

#include "macro_unscope.hpp"

#ifdef LOFTQ_INSTANCES
namespace loftq {
namespace detail {
LOFTQ_INSTANCE_FLOAT void quantize_flat<float>(const float*, float*, PackedMatrix*, std::int64_t, const QuantSpec&, int,
                                               const float*);
LOFTQ_INSTANCE_DOUBLE void quantize_flat<double>(const double*, double*, PackedMatrix*, std::int64_t, const QuantSpec&,
                                                 int, const double*);
LOFTQ_INSTANCE_FLOAT void dequantize_flat<float>(const PackedMatrix&, float*, int);
LOFTQ_INSTANCE_DOUBLE void dequantize_flat<double>(const PackedMatrix&, double*, int);
}  // namespace detail
}  // namespace loftq
#endif
