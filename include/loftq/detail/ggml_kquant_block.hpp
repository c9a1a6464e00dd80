#pragma once
// The block kernel of ggml's K formats (ggml_format.hpp): one super-block of
// 256 elements -> ggml's bytes, the codes, the sub-blocks' float scales (and
// minimums) and the values, either as ggml chooses them
// (ggml_kquant_ref.hpp) or with the library's search under the same format.
// Same interface as BlockQuantizer (run), so the flat passes and the LoftQ
// sweeps use either.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../error.hpp"
#include "../ggml_format.hpp"
#include "../packed.hpp"
#include "ggml_block_input.hpp"
#include "ggml_kquant_layout.hpp"
#include "ggml_kquant_ref.hpp"
#include "half.hpp"
#include "quant_spec.hpp"

namespace loftq {
namespace detail {

// The library's choice: the lowest sum w (x - value)^2 (in double, value as
// ggml dequantizes it) over ggml's own super-block and changes to it, each
// kept only when it lowers the error, so the result is never worse than
// ggml's block:
//   - per sub-block, the integer scale (and minimum) within +-2 (+-1) of the
//     present one and around the least-squares optimum for the present
//     codes, each with its nearest codes;
//   - the super-block's d (and dmin): the least-squares fit for the present
//     integer scales and codes and the fp16 neighbours, each with the integer
//     scales rescaled to keep their products; the best of these is refitted
//     sub-block by sub-block as above (two rounds).
class KSearch {
 public:
  // x: 256 values (a short block padded), w: their weights (0 on padding).
  KSearch(const KFormat& F, const float* x, const float* w)
      : F_(F), x_(x), w_(w), levels_(ggml_levels(F.f)), has_min_(F.m_hi > 0), uniform_(F.f != GgmlFormat::iq4_xs) {}

  void run(KBlock& b) {
    double err = fit_all(b);
    for (int round = 0; round < 2; ++round) {
      const KBlock start = b;
      const float d = half_to_float(start.d), dm = half_to_float(start.dmin);
      if (d == 0.0f) break;
      double dd, ddm;
      least_squares(start, dd, ddm);
      const std::uint16_t h = start.d, hm = start.dmin;
      const std::uint16_t cand[][2] = {
          {float_to_half(static_cast<float>(dd)), has_min_ ? float_to_half(static_cast<float>(ddm)) : hm},
          {static_cast<std::uint16_t>(h + 1), hm},
          {static_cast<std::uint16_t>(h - 1), hm},
          {h, static_cast<std::uint16_t>(hm + 1)},
          {h, static_cast<std::uint16_t>(hm - 1)}};
      // Candidates are ranked by their error with rescaled integer scales
      // and nearest codes; only the most promising one is refitted.
      KBlock t, pick;
      double pick_err = std::numeric_limits<double>::infinity();
      for (const auto& c : cand) {
        if (!has_min_ && c[1] != hm) continue;
        const float nd = half_to_float(c[0]), ndm = half_to_float(c[1]);
        if (!std::isfinite(nd) || !std::isfinite(ndm) || nd == 0.0f || (c[0] == h && c[1] == hm)) continue;
        t = start;
        t.d = c[0];
        t.dmin = c[1];
        double e = 0;
        for (int i = 0; i < F_.nsub; ++i) {
          t.sc[i] = clamp_to(static_cast<double>(start.sc[i]) * d / nd, F_.sc_lo, F_.sc_hi, false);
          if (has_min_ && ndm != 0.0f) t.m[i] = clamp_to(static_cast<double>(start.m[i]) * dm / ndm, 0, F_.m_hi, false);
          recode(t, i);
          e += sub_error(t, i);
        }
        if (e < pick_err) {
          pick_err = e;
          pick = t;
        }
      }
      if (!(pick_err < std::numeric_limits<double>::infinity())) break;
      const double e = fit_all(pick);
      if (!(e < err)) break;
      err = e;
      b = pick;
    }
  }

 private:
  // v (possibly huge or NaN) rounded down or to nearest, into [lo, hi].
  static int clamp_to(double v, int lo, int hi, bool floor_it) {
    if (!(v >= lo)) return lo;
    if (v >= hi) return hi;
    return static_cast<int>(floor_it ? std::floor(v) : std::nearbyint(v));
  }

  double sub_error(const KBlock& b, int i) const {
    const float s = kblock_scale(b, i), mn = kblock_min(b, i);
    double e = 0;
    for (int j = i * F_.sub; j < (i + 1) * F_.sub; ++j) {
      const double v = static_cast<double>(x_[j]) - kquant_value(s, levels_[b.q[j]], mn, has_min_);
      e += static_cast<double>(w_[j]) * v * v;
    }
    return e;
  }

  // The nearest codes of sub-block i at its present scale and minimum.
  void recode(KBlock& b, int i) const {
    const float s = kblock_scale(b, i), mn = kblock_min(b, i);
    for (int j = i * F_.sub; j < (i + 1) * F_.sub; ++j) b.q[j] = nearest(s, mn, x_[j]);
  }

  std::uint8_t nearest(float s, float mn, float x) const {
    if (s == 0.0f) return 0;
    const double t = (static_cast<double>(x) + (has_min_ ? mn : 0.0f)) / s;
    int c;
    if (uniform_) {
      const double lo = levels_.front();
      c = clamp_to(t - lo, 0, F_.codes - 1, false);
    } else {
      c = kbest_index(F_.codes, kIq4nlValues.data(), static_cast<float>(t));
    }
    // Nearest in exact arithmetic; the rounded values may prefer a
    // neighbour by an ulp, which every candidate's error (computed as ggml
    // dequantizes) accounts for.
    return static_cast<std::uint8_t>(c);
  }

  // Tries (sc, m) on sub-block i of b; keeps it when it lowers e.
  void try_sub(KBlock& b, int i, int sc, int m, double& e) const {
    if (sc < F_.sc_lo || sc > F_.sc_hi || m < 0 || m > F_.m_hi) return;
    KBlock::Sub save;
    b.save(i, F_.sub, save);
    b.sc[i] = sc;
    b.m[i] = m;
    recode(b, i);
    const double ne = sub_error(b, i);
    if (ne < e)
      e = ne;
    else
      b.restore(i, F_.sub, save);
  }

  // Refits every sub-block's integer scale and minimum at b's d and dmin;
  // returns the total error.
  double fit_all(KBlock& b) const {
    const float d = half_to_float(b.d), dm = half_to_float(b.dmin);
    double total = 0;
    for (int i = 0; i < F_.nsub; ++i) {
      double e = sub_error(b, i);
      const int sc0 = b.sc[i], m0 = b.m[i];
      const int W = has_min_ ? 1 : 2, WM = has_min_ && dm != 0.0f ? 1 : 0;
      for (int ds = -W; ds <= W; ++ds)
        for (int dmv = -WM; dmv <= WM; ++dmv)
          if (ds != 0 || dmv != 0) try_sub(b, i, sc0 + ds, m0 + dmv, e);
      // Around the least-squares scale and minimum of the present codes.
      double s_opt, mn_opt;
      if (d != 0.0f && sub_least_squares(b, i, s_opt, mn_opt)) {
        const double fs = s_opt / d, fm = has_min_ && dm != 0.0f ? mn_opt / dm : b.m[i];
        for (int a = 0; a < 2; ++a)
          for (int c = 0; c < (WM ? 2 : 1); ++c)
            try_sub(b, i, clamp_to(fs, F_.sc_lo - 1, F_.sc_hi, true) + a,
                    WM ? clamp_to(fm, -1, F_.m_hi, true) + c : b.m[i], e);
      }
      total += e;
    }
    return total;
  }

  // For fixed codes: value ~ s * level - mn; the weighted least-squares s, mn.
  bool sub_least_squares(const KBlock& b, int i, double& s, double& mn) const {
    double sw = 0, sl = 0, sll = 0, sx = 0, sxl = 0;
    for (int j = i * F_.sub; j < (i + 1) * F_.sub; ++j) {
      const double w = w_[j], l = levels_[b.q[j]], x = x_[j];
      sw += w;
      sl += w * l;
      sll += w * l * l;
      sx += w * x;
      sxl += w * x * l;
    }
    if (!has_min_) {
      mn = 0;
      if (!(sll > 0)) return false;
      s = sxl / sll;
      return std::isfinite(s);
    }
    const double D = sw * sll - sl * sl;
    if (!(D > 0)) return false;
    s = (sw * sxl - sx * sl) / D;
    mn = -(sll * sx - sl * sxl) / D;
    return std::isfinite(s) && std::isfinite(mn);
  }

  // For fixed integer scales, minimums and codes: value ~ d a_j - dmin b_j
  // with a_j = sc level, b_j = m; the weighted least-squares d and dmin.
  void least_squares(const KBlock& b, double& d, double& dmin) const {
    double saa = 0, sab = 0, sbb = 0, sxa = 0, sxb = 0;
    for (int j = 0; j < kGgmlSuperBlock; ++j) {
      const int i = j / F_.sub;
      const double w = w_[j], a = static_cast<double>(b.sc[i]) * levels_[b.q[j]], bb = -static_cast<double>(b.m[i]);
      saa += w * a * a;
      sab += w * a * bb;
      sbb += w * bb * bb;
      sxa += w * x_[j] * a;
      sxb += w * x_[j] * bb;
    }
    d = half_to_float(b.d);
    dmin = half_to_float(b.dmin);
    if (!has_min_ || !(sbb > 0)) {
      if (saa > 0) d = sxa / saa;
      return;
    }
    const double det = saa * sbb - sab * sab;
    if (!(det > 0)) return;
    d = (sxa * sbb - sxb * sab) / det;
    dmin = -(saa * sxb - sab * sxa) / det;
  }

  KFormat F_;
  const float* x_;
  const float* w_;
  const std::vector<float>& levels_;
  bool has_min_, uniform_;
};

template <class Scalar>
class GgmlKBlockQuantizer {
 public:
  explicit GgmlKBlockQuantizer(const QuantSpec& s) : s_(s), F_(kformat(s.ggml)), levels_(ggml_levels(s.ggml)) {
    require(s.block_size == kGgmlSuperBlock, Errc::invalid_argument, "K formats have super-blocks of 256");
    require(s.mode == (ggml_has_min(s.ggml) ? ScaleMode::affine : ScaleMode::absmax), Errc::invalid_argument,
            std::string(ggml_format_name(s.ggml)) + " has the wrong scale mode");
    require(
        s.bits == ggml_format_bits(s.ggml), Errc::invalid_argument,
        std::string(ggml_format_name(s.ggml)) + " has codes of " + std::to_string(ggml_format_bits(s.ggml)) + " bits");
    if (s.col_weights) require(s.cols >= 1, Errc::invalid_argument, "column weights need the column count");
  }

  // As BlockQuantizer::run: super-blocks [b0, b1) of in -> (deq, out); deq
  // may alias in; with a minuend deq = minuend - q(in). A short last block is
  // quantized as if padded with zeros (weight 0 in the search).
  void run(const Scalar* in, Scalar* deq, PackedMatrix* out, std::int64_t N, std::int64_t b0, std::int64_t b1,
           const Scalar* minuend) const {
    constexpr int K = kGgmlSuperBlock;
    float x[K], w[K];
    unsigned char bytes[256];
    KBlock kb;
    const bool has_min = F_.m_hi > 0;
    const std::size_t nbytes = static_cast<std::size_t>(ggml_format_block_bytes(s_.ggml));
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t e0 = b * K;
      const int n = static_cast<int>(std::min<std::int64_t>(K, N - e0));
      for (int j = 0; j < K; ++j) {
        x[j] = 0.0f;
        w[j] = 0.0f;
      }
      load_ggml_block(in + e0, n, b, x);
      for (int j = 0; j < n; ++j) w[j] = s_.col_weights ? s_.col_weights[(e0 + j) % s_.cols] : 1.0f;
      kref_quantize(s_.ggml, x, bytes);
      kblock_unpack(s_.ggml, bytes, kb);
      if (!std::isfinite(half_to_float(kb.d)) || !std::isfinite(half_to_float(kb.dmin)))
        fail(Errc::invalid_argument,
             "block " + std::to_string(b) + " needs a scale beyond the fp16 range of " + ggml_format_name(s_.ggml));
      if (s_.search) {
        KSearch(F_, x, w).run(kb);
        kblock_pack(s_.ggml, kb, bytes);
      }
      const int nsub = (n + F_.sub - 1) / F_.sub;
      if (out) {
        std::memcpy(out->ggml_blocks.data() + static_cast<std::size_t>(b) * nbytes, bytes, nbytes);
        const std::int64_t c0 = e0 * s_.bits / 8,
                           c1 = std::min<std::int64_t>(static_cast<std::int64_t>(out->codes.size()),
                                                       (e0 + K) * s_.bits / 8);
        std::fill(out->codes.begin() + c0, out->codes.begin() + c1, std::uint8_t{0});
        pack_codes(out->codes.data(), e0, kb.q, n, s_.bits);
        const std::size_t sb0 = static_cast<std::size_t>(e0 / F_.sub);
        for (int i = 0; i < nsub; ++i) {
          out->scales[sb0 + static_cast<std::size_t>(i)] = kblock_scale(kb, i);
          if (has_min) out->mins[sb0 + static_cast<std::size_t>(i)] = kblock_min(kb, i);
        }
      }
      if (deq) {
        for (int i = 0; i < nsub; ++i) {
          // As dequantize_flat<Scalar> computes it: for float, ggml's value.
          const Scalar s = static_cast<Scalar>(kblock_scale(kb, i)), mn = static_cast<Scalar>(kblock_min(kb, i));
          for (int j = i * F_.sub; j < std::min(n, (i + 1) * F_.sub); ++j) {
            const Scalar p = opaque_scalar(static_cast<Scalar>(levels_[kb.q[j]]) * s);
            const Scalar q = has_min ? p - mn : p;
            deq[e0 + j] = minuend ? minuend[e0 + j] - q : q;
          }
        }
      }
    }
  }

 private:
  const QuantSpec& s_;
  KFormat F_;
  const std::vector<float>& levels_;
};

}  // namespace detail
}  // namespace loftq
