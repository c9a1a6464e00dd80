#pragma once
// ggml's own choice of a K-format super-block: quantize_row_q2_K_ref ...
// quantize_row_q6_K_ref and quantize_iq4_xs without an importance matrix
// (ggml-quants.c), which is what ggml_quantize_chunk and llama-quantize
// write when no imatrix is given. Reproduced operation for operation in
// float: every product goes through kmul, rounded before anything is added
// to it, as C without FP contraction computes it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "../ggml_format.hpp"
#include "ggml_block_input.hpp"
#include "ggml_kquant_layout.hpp"
#include "half.hpp"
#include "simd.hpp"

namespace loftq {
namespace detail {

constexpr float kGroupMaxEps = 1e-15f;  // GROUP_MAX_EPS

inline float kmul(float a, float b) { return opaque(a * b); }

// ggml's nearest_int: round half to even through the float's bits (exact for
// |x| < 2^22; beyond that the same bits as ggml's, however meaningless).
inline int knearest(float fval) {
  const float val = fval + 12582912.f;
  std::int32_t i;
  std::memcpy(&i, &val, sizeof(i));
  return (i & 0x007fffff) - 0x00400000;
}

// ggml's best_index_int8 (this revision: bisection, then the nearer of two).
inline int kbest_index(int n, const std::int8_t* val, float x) {
  if (x <= val[0]) return 0;
  if (x >= val[n - 1]) return n - 1;
  int ml = 0, mu = n - 1;
  while (mu - ml > 1) {
    const int mav = (ml + mu) / 2;
    if (x < val[mav])
      mu = mav;
    else
      ml = mav;
  }
  return x - val[mu - 1] < val[mu] - x ? mu - 1 : mu;
}

// make_qx_quants with rmse_type 1 and no quant weights (weights x^2).
inline float kmake_qx_quants(int n, int nmax, const float* x, std::int8_t* L) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = knearest(kmul(iscale, x[i]));
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l + nmax);
    const float w = kmul(x[i], x[i]), fl = static_cast<float>(l);
    sumlx += kmul(kmul(w, x[i]), fl);
    suml2 += kmul(kmul(w, fl), fl);
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = kmul(scale, sumlx);
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(static_cast<float>(nmax) + kmul(0.1f, static_cast<float>(is))) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = knearest(kmul(iscale, x[i]));
      l = std::max(-nmax, std::min(nmax - 1, l));
      const float w = kmul(x[i], x[i]), fl = static_cast<float>(l);
      sumlx += kmul(kmul(w, x[i]), fl);
      suml2 += kmul(kmul(w, fl), fl);
    }
    if (suml2 > 0 && kmul(sumlx, sumlx) > kmul(best, suml2)) {
      for (int i = 0; i < n; ++i) {
        const int l = knearest(kmul(iscale, x[i]));
        L[i] = static_cast<std::int8_t>(nmax + std::max(-nmax, std::min(nmax - 1, l)));
      }
      scale = sumlx / suml2;
      best = kmul(scale, sumlx);
    }
  }
  return scale;
}

// make_q3_quants with do_rmse.
inline float kmake_q3_quants(int n, int nmax, const float* x, std::int8_t* L) {
  const float max = signed_absmax(x, n);
  if (std::fabs(max) < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = static_cast<float>(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = knearest(kmul(iscale, x[i]));
    l = std::max(-nmax, std::min(nmax - 1, l));
    L[i] = static_cast<std::int8_t>(l);
    const float w = kmul(x[i], x[i]), fl = static_cast<float>(l);
    sumlx += kmul(kmul(w, x[i]), fl);
    suml2 += kmul(kmul(w, fl), fl);
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = kmul(x[i], x[i]), li = static_cast<float>(L[i]);
      float slx = sumlx - kmul(kmul(w, x[i]), li);
      if (slx > 0) {
        float sl2 = suml2 - kmul(kmul(w, li), li);
        int new_l = knearest(kmul(x[i], sl2) / slx);
        new_l = std::max(-nmax, std::min(nmax - 1, new_l));
        if (new_l != L[i]) {
          const float fl = static_cast<float>(new_l);
          slx += kmul(kmul(w, x[i]), fl);
          sl2 += kmul(kmul(w, fl), fl);
          if (sl2 > 0 && kmul(kmul(slx, slx), suml2) > kmul(kmul(sumlx, sumlx), sl2)) {
            L[i] = static_cast<std::int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<std::int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// make_qkx2_quants: scale and (negated) minimum of one sub-block.
inline float kmake_qkx2_quants(int n, int nmax, const float* x, const float* weights, std::uint8_t* L, float* the_min,
                               std::uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = kmul(sum_w, x[0]);
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += kmul(w, x[i]);
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  auto err = [&](float s, float mn, float l, float xi) {
    const float diff = (kmul(s, l) + mn) - xi;
    return use_mad ? std::fabs(diff) : kmul(diff, diff);
  };
  for (int i = 0; i < n; ++i) {
    const int l = knearest(kmul(iscale, x[i] - min));
    L[i] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    best_error += kmul(weights[i], err(scale, min, static_cast<float>(L[i]), x[i]));
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = ((rmin + kmul(rdelta, static_cast<float>(is))) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      int l = knearest(kmul(iscale, x[i] - min));
      l = std::max(0, std::min(nmax, l));
      Laux[i] = static_cast<std::uint8_t>(l);
      const float w = weights[i], wl = kmul(w, static_cast<float>(l));
      sum_l += wl;
      sum_l2 += kmul(wl, static_cast<float>(l));
      sum_xl += kmul(wl, x[i]);
    }
    const float D = kmul(sum_w, sum_l2) - kmul(sum_l, sum_l);
    if (D > 0) {
      float this_scale = (kmul(sum_w, sum_xl) - kmul(sum_x, sum_l)) / D;
      float this_min = (kmul(sum_l2, sum_x) - kmul(sum_l, sum_xl)) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i)
        cur_error += kmul(weights[i], err(this_scale, this_min, static_cast<float>(Laux[i]), x[i]));
      if (cur_error < best_error) {
        for (int i = 0; i < n; ++i) L[i] = Laux[i];
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// The codes planes and d, dmin through kblock_pack; the scale bytes are
// then written over exactly as ggml computes them.
inline void kref_pack(GgmlFormat f, const std::uint8_t* L, std::uint16_t d, std::uint16_t dmin, unsigned char* p) {
  KBlock k;
  k.d = d;
  k.dmin = dmin;
  std::memcpy(k.q, L, kGgmlSuperBlock);
  kblock_pack(f, k, p);
}

// quantize_row_q2_K_ref on one super-block.
inline void kref_q2_K(const float* x, unsigned char* p) {
  std::uint8_t L[256], Laux[16], sc[16];
  float weights[16], mins[16], scales[16];
  const float q4scale = 15.f;
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = kmake_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  std::uint16_t dh = 0, dmh = 0;
  if (max_scale > 0) {
    const float iscale = q4scale / max_scale;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<std::uint8_t>(knearest(kmul(iscale, scales[j])));
    dh = float_to_half(max_scale / q4scale);
  } else {
    for (auto& s : sc) s = 0;
    dh = float_to_half(0.f);
  }
  if (max_min > 0) {
    const float iscale = q4scale / max_min;
    for (int j = 0; j < 16; ++j) sc[j] = static_cast<std::uint8_t>(sc[j] | (knearest(kmul(iscale, mins[j])) << 4));
    dmh = float_to_half(max_min / q4scale);
  } else {
    dmh = float_to_half(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    const float d = half_to_float(dh) * static_cast<float>(sc[j] & 0xF);
    if (d == 0.0f) continue;
    const float dm = kmul(half_to_float(dmh), static_cast<float>(sc[j] >> 4));
    for (int ii = 0; ii < 16; ++ii) {
      const int l = knearest((x[16 * j + ii] + dm) / d);
      L[16 * j + ii] = static_cast<std::uint8_t>(std::max(0, std::min(3, l)));
    }
  }
  kref_pack(GgmlFormat::q2_K, L, dh, dmh, p);
  std::memcpy(p, sc, 16);
}

// quantize_row_q3_K_ref on one super-block.
inline void kref_q3_K(const float* x, unsigned char* p) {
  std::int8_t L[256];
  float scales[16];
  for (int j = 0; j < 16; ++j) scales[j] = kmake_q3_quants(16, 4, x + 16 * j, L + 16 * j);
  const float max_scale = signed_absmax(scales, 16);
  std::uint8_t s[12] = {};
  std::uint16_t dh = 0;
  if (max_scale != 0.0f) {
    const float iscale = -32.f / max_scale;
    for (int j = 0; j < 16; ++j) {
      std::int8_t l = static_cast<std::int8_t>(knearest(kmul(iscale, scales[j])));
      l = static_cast<std::int8_t>(std::max<int>(-32, std::min<int>(31, l)) + 32);
      if (j < 8)
        s[j] = static_cast<std::uint8_t>(l & 0xF);
      else
        s[j - 8] = static_cast<std::uint8_t>(s[j - 8] | ((l & 0xF) << 4));
      l = static_cast<std::int8_t>(l >> 4);
      s[j % 4 + 8] = static_cast<std::uint8_t>(s[j % 4 + 8] | (l << (2 * (j / 4))));
    }
    dh = float_to_half(1 / iscale);
  } else {
    dh = float_to_half(0.f);
  }
  for (int j = 0; j < 16; ++j) {
    int sc = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    sc = static_cast<std::int8_t>(sc | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
    const float d = half_to_float(dh) * static_cast<float>(sc);
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = knearest(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<std::int8_t>(std::max(-4, std::min(3, l)) + 4);
    }
  }
  std::uint8_t U[256];
  for (int j = 0; j < 256; ++j) U[j] = static_cast<std::uint8_t>(L[j]);
  kref_pack(GgmlFormat::q3_K, U, dh, 0, p);
  std::memcpy(p + 96, s, 12);
}

// quantize_row_q4_K_ref (nmax 15) and quantize_row_q5_K_ref (nmax 31) on one
// super-block: the same algorithm with different search settings.
inline void kref_q45_K(GgmlFormat f, const float* x, unsigned char* p) {
  const bool five = f == GgmlFormat::q5_K;
  const int nmax = five ? 31 : 15;
  std::uint8_t L[256], Laux[32];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += kmul(x[32 * j + l], x[32 * j + l]);
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = five
                    ? kmake_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false)
                    : kmake_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  int ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = std::min<int>(63, static_cast<std::uint8_t>(knearest(kmul(inv_scale, scales[j]))));
    lm[j] = std::min<int>(63, static_cast<std::uint8_t>(knearest(kmul(inv_min, mins[j]))));
  }
  const std::uint16_t dh = float_to_half(max_scale / 63.f), dmh = float_to_half(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    const float d = half_to_float(dh) * static_cast<float>(ls[j]);
    if (d == 0.0f) continue;
    const float dm = kmul(half_to_float(dmh), static_cast<float>(lm[j]));
    for (int ii = 0; ii < 32; ++ii) {
      const int l = knearest((x[32 * j + ii] + dm) / d);
      L[32 * j + ii] = static_cast<std::uint8_t>(std::max(0, std::min(nmax, l)));
    }
  }
  KBlock k;
  k.d = dh;
  k.dmin = dmh;
  std::copy(ls, ls + 8, k.sc);
  std::copy(lm, lm + 8, k.m);
  std::memcpy(k.q, L, 256);
  kblock_pack(f, k, p);
}

// quantize_row_q6_K_ref on one super-block.
inline void kref_q6_K(const float* x, unsigned char* p) {
  std::int8_t L[256];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    const float scale = kmake_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
    scales[ib] = scale;
    if (std::fabs(scale) > max_abs_scale) {
      max_abs_scale = std::fabs(scale);
      max_scale = scale;
    }
  }
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(p, 0, 210);
    return;
  }
  const float iscale = -128.f / max_scale;
  const std::uint16_t dh = float_to_half(1 / iscale);
  std::int8_t sc[16];
  for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<std::int8_t>(std::min(127, knearest(kmul(iscale, scales[ib]))));
  for (int j = 0; j < 16; ++j) {
    const float d = half_to_float(dh) * static_cast<float>(sc[j]);
    if (d == 0.0f) continue;
    for (int ii = 0; ii < 16; ++ii) {
      const int l = knearest(x[16 * j + ii] / d);
      L[16 * j + ii] = static_cast<std::int8_t>(std::max(-32, std::min(31, l)) + 32);
    }
  }
  std::uint8_t U[256];
  for (int j = 0; j < 256; ++j) U[j] = static_cast<std::uint8_t>(L[j]);
  kref_pack(GgmlFormat::q6_K, U, dh, 0, p);
  std::memcpy(p + 192, sc, 16);
}

// quantize_row_iq4_nl_impl(QK_K, 32, ...) with ntry 7 and no quant weights:
// quantize_iq4_xs without an imatrix.
inline void kref_iq4_xs(const float* x, unsigned char* p) {
  const std::int8_t* values = kIq4nlValues.data();
  std::uint8_t L[256] = {};
  float scales[8], weight[32];
  for (int ib = 0; ib < 8; ++ib) {
    const float* xb = x + ib * 32;
    std::uint8_t* Lb = L + ib * 32;
    for (int j = 0; j < 32; ++j) weight[j] = kmul(xb[j], xb[j]);
    const float max = signed_absmax(xb, 32);
    if (std::fabs(max) < kGroupMaxEps) {
      scales[ib] = 0;
      continue;
    }
    float d = -max / static_cast<float>(values[0]);
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const int l = kbest_index(16, values, kmul(id, xb[j]));
      Lb[j] = static_cast<std::uint8_t>(l);
      const float q = values[l], wq = kmul(weight[j], q);
      sumqx += kmul(wq, xb[j]);
      sumq2 += kmul(wq, q);
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
    float best = kmul(d, sumqx);
    for (int itry = -7; itry <= 7; ++itry) {
      id = static_cast<float>(itry + values[0]) / max;
      sumqx = sumq2 = 0;
      for (int j = 0; j < 32; ++j) {
        const int l = kbest_index(16, values, kmul(id, xb[j]));
        const float q = values[l], wq = kmul(weight[j], q);
        sumqx += kmul(wq, xb[j]);
        sumq2 += kmul(wq, q);
      }
      if (sumq2 > 0 && kmul(sumqx, sumqx) > kmul(best, sumq2)) {
        d = sumqx / sumq2;
        best = kmul(d, sumqx);
      }
    }
    scales[ib] = d;
  }
  const float max_scale = signed_absmax(scales, 8);
  KBlock k;
  const float d = -max_scale / 32;
  k.d = float_to_half(d);
  const float id = d != 0.0f ? 1 / d : 0.f;
  for (int ib = 0; ib < 8; ++ib) {
    int l = knearest(kmul(id, scales[ib]));
    l = std::max(-32, std::min(31, l));
    const float dl = kmul(d, static_cast<float>(l));
    const float idl = dl != 0.0f ? 1 / dl : 0.f;
    for (int j = 0; j < 32; ++j)
      L[ib * 32 + j] = static_cast<std::uint8_t>(kbest_index(16, values, kmul(idl, x[ib * 32 + j])));
    k.sc[ib] = l;
  }
  std::memcpy(k.q, L, 256);
  kblock_pack(GgmlFormat::iq4_xs, k, p);
}

// ggml's super-block of 256 finite floats, as bytes.
inline void kref_quantize(GgmlFormat f, const float* x, unsigned char* p) {
  switch (f) {
    case GgmlFormat::q2_K:
      return kref_q2_K(x, p);
    case GgmlFormat::q3_K:
      return kref_q3_K(x, p);
    case GgmlFormat::q4_K:
    case GgmlFormat::q5_K:
      return kref_q45_K(f, x, p);
    case GgmlFormat::q6_K:
      return kref_q6_K(x, p);
    case GgmlFormat::iq4_xs:
      return kref_iq4_xs(x, p);
    default:
      fail(Errc::invalid_argument, "kref_quantize: not a K format");
  }
}

}  // namespace detail
}  // namespace loftq
