#pragma once
// The block kernel of the ggml formats (ggml_quantizer.hpp): one 32-element
// block -> an fp16 scale and 32 codes, either as ggml chooses them or with
// the library's error-optimal search under the same format. Same interface
// as BlockQuantizer (run), so the flat passes and the LoftQ sweeps use either.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../ggml_format.hpp"
#include "../packed.hpp"
#include "ggml_block_input.hpp"
#include "half.hpp"
#include "quant_spec.hpp"

namespace loftq {
namespace detail {

// A product rounded to float before anything is added to it: ggml's C code
// read without FP contraction, whatever -ffp-contract this is built with.
inline float rounded_mul(float a, float b) {
  volatile float p = a * b;
  return p;
}

// ggml's best_index_int8: the index of the level nearest x in a sorted table
// of n = 2^k int8 levels, the upper one at an exact midpoint; NaN gives 0.
inline int ggml_best_index(int n, const std::int8_t* val, float x) {
  const float x2 = x + x;
  int idx = 0;
  for (int step = n >> 1; step > 0; step >>= 1) {
    const int j = idx + step;
    idx = (x2 >= static_cast<float>(val[j - 1] + val[j])) ? j : idx;
  }
  return idx;
}

// float -> int with C's truncation, saturated (no UB on NaN, Inf or range).
inline int trunc_sat(float v, int lo, int hi) {
  if (!(v >= static_cast<float>(lo))) return lo;  // NaN too
  if (v >= static_cast<float>(hi)) return hi;
  return static_cast<int>(v);
}

struct GgmlBlock {
  std::uint16_t dh = 0;  // fp16 scale
  std::uint8_t codes[kGgmlBlock] = {};
};

// quantize_row_q4_0_ref on n <= 32 values (codes 0..15).
inline void ggml_q4_0_block(const float* x, int n, GgmlBlock& b) {
  const float d = signed_absmax(x, n) / -8;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.dh = float_to_half(d);
  for (int j = 0; j < n; ++j)
    b.codes[j] = static_cast<std::uint8_t>(std::min(15, trunc_sat(rounded_mul(x[j], id) + 8.5f, -128, 127)));
}

// quantize_row_q8_0_ref (codes q + 128).
inline void ggml_q8_0_block(const float* x, int n, GgmlBlock& b) {
  float amax = 0.0f;
  for (int j = 0; j < n; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / ((1 << 7) - 1);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  b.dh = float_to_half(d);
  for (int j = 0; j < n; ++j) {
    const float r = std::round(x[j] * id);
    b.codes[j] = static_cast<std::uint8_t>(trunc_sat(r, -128, 127) + 128);
  }
}

// quantize_iq4_nl on one block without quant_weights (ntry = 7, weights x^2).
inline void ggml_iq4_nl_block(const float* x, int n, GgmlBlock& b) {
  const std::int8_t* values = kIq4nlValues.data();
  float weight[kGgmlBlock];
  for (int j = 0; j < n; ++j) weight[j] = rounded_mul(x[j], x[j]);
  const float max = signed_absmax(x, n);
  float d = 0.0f;
  if (!(std::fabs(max) < 1e-15f)) {
    auto sums = [&](float id, float& sumqx, float& sumq2) {
      sumqx = sumq2 = 0.0f;
      for (int j = 0; j < n; ++j) {
        const int l = ggml_best_index(16, values, rounded_mul(id, x[j]));
        const float q = values[l], w = weight[j];
        sumqx += rounded_mul(rounded_mul(w, q), x[j]);
        sumq2 += rounded_mul(rounded_mul(w, q), q);
      }
    };
    d = -max / values[0];
    float sumqx, sumq2;
    sums(1 / d, sumqx, sumq2);
    d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
    float best = rounded_mul(d, sumqx);
    for (int itry = -7; itry <= 7; ++itry) {
      sums(static_cast<float>(itry + values[0]) / max, sumqx, sumq2);
      if (sumq2 > 0 && rounded_mul(sumqx, sumqx) > rounded_mul(best, sumq2)) {
        d = sumqx / sumq2;
        best = rounded_mul(d, sumqx);
      }
    }
  }
  b.dh = float_to_half(d);
  const float id = d != 0.0f ? 1 / d : 0.0f;
  for (int j = 0; j < n; ++j)
    b.codes[j] = static_cast<std::uint8_t>(ggml_best_index(16, values, rounded_mul(id, x[j])));
}

// The library's choice: the lowest sum w (x - fp16(d) level)^2 (in double)
// over ggml's own block and candidate scales, each with its nearest codes at
// the rounded scale. Candidates are fractions of ggml's scale and of the
// opposite-sign scale that puts the extreme element on the other end of the
// table, then Lloyd steps (best scale for fixed codes) and the fp16
// neighbours of the best.
class GgmlSearch {
 public:
  GgmlSearch(GgmlFormat f, const float* x, const float* w, int n)
      : f_(f), x_(x), w_(w), n_(n), levels_(ggml_levels(f)), lo_(levels_.front()), hi_(levels_.back()) {}

  void run(GgmlBlock& b) {
    best_ = b;
    best_err_ = error(b);
    // ggml picks its codes at the unrounded scale: at the stored one the
    // nearest codes can only do better.
    consider(half_to_float(b.dh), true);
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n_; ++j)
      if (std::fabs(x_[j]) > amax) {
        amax = std::fabs(x_[j]);
        max = x_[j];
      }
    if (!(amax > 0.0f)) return;
    // The extreme element on the lowest and on the highest level.
    const double ends[2] = {static_cast<double>(max) / lo_, static_cast<double>(max) / hi_};
    static const double fractions[] = {1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.8};
    for (double e : ends)
      for (double fr : fractions) consider(e * fr);
    for (int step = 0; step < 3; ++step) {
      double sxl = 0, sll = 0;
      for (int j = 0; j < n_; ++j) {
        const double l = levels_[best_.codes[j]], w = w_ ? w_[j] : 1.0;
        sxl += w * x_[j] * l;
        sll += w * l * l;
      }
      if (!(sll > 0) || !consider(sxl / sll)) break;
    }
    for (int k = 0; k < 2; ++k) {
      const std::uint16_t h = best_.dh;
      if ((h & 0x7fffu) < 0x7bffu) consider(half_to_float(static_cast<std::uint16_t>(h + 1)));
      if ((h & 0x7fffu) > 0u) consider(half_to_float(static_cast<std::uint16_t>(h - 1)));
      if (best_.dh == h) break;
    }
  }
  const GgmlBlock& best() const { return best_; }

 private:
  double error(const GgmlBlock& b) const {
    const double d = half_to_float(b.dh);
    double e = 0;
    for (int j = 0; j < n_; ++j) {
      // In float, as ggml dequantizes.
      const double v = static_cast<double>(x_[j]) - static_cast<double>(levels_[b.codes[j]] * static_cast<float>(d));
      e += (w_ ? w_[j] : 1.0) * v * v;
    }
    return e;
  }
  // Tries scale d (rounded to fp16) with its nearest codes; true when it
  // became the best. A scale already the best's is skipped unless `again`.
  bool consider(double d, bool again = false) {
    if (!std::isfinite(d)) return false;
    GgmlBlock c;
    c.dh = float_to_half(static_cast<float>(d));
    const float ds = half_to_float(c.dh);
    if (!std::isfinite(ds) || ds == 0.0f || (c.dh == best_.dh && !again)) return false;
    for (int j = 0; j < n_; ++j) c.codes[j] = nearest(static_cast<double>(x_[j]) / ds);
    const double e = error(c);
    if (!(e < best_err_)) return false;
    best_ = c;
    best_err_ = e;
    return true;
  }
  std::uint8_t nearest(double t) const {
    if (f_ == GgmlFormat::iq4_nl) {
      int c = 0;
      for (int i = 1; i < 16; ++i)
        if (std::fabs(t - levels_[i]) < std::fabs(t - levels_[c])) c = i;
      return static_cast<std::uint8_t>(c);
    }
    const double r = std::nearbyint(std::min(std::max(t, static_cast<double>(lo_)), static_cast<double>(hi_)));
    return static_cast<std::uint8_t>(static_cast<int>(r) - static_cast<int>(lo_));
  }

  GgmlFormat f_;
  const float* x_;
  const float* w_;
  int n_;
  const std::vector<float>& levels_;
  float lo_, hi_;
  GgmlBlock best_;
  double best_err_ = 0;
};

// One ggml block of n <= 32 finite floats; w (optional) weighs the search.
inline void ggml_quantize_block(GgmlFormat f, const float* x, const float* w, int n, bool search, GgmlBlock& b) {
  switch (f) {
    case GgmlFormat::q4_0:
      ggml_q4_0_block(x, n, b);
      break;
    case GgmlFormat::q8_0:
      ggml_q8_0_block(x, n, b);
      break;
    case GgmlFormat::iq4_nl:
      ggml_iq4_nl_block(x, n, b);
      break;
    default:
      fail(Errc::invalid_argument, "ggml_quantize_block: not a 32-element ggml format");
  }
  if (search) {
    GgmlSearch s(f, x, w, n);
    s.run(b);
    b = s.best();
  }
}

template <class Scalar>
class GgmlBlockQuantizer {
 public:
  explicit GgmlBlockQuantizer(const QuantSpec& s) : s_(s), levels_(ggml_levels(s.ggml)) {
    require(s.block_size == kGgmlBlock, Errc::invalid_argument, "ggml formats have blocks of 32");
    require(s.mode == ScaleMode::absmax, Errc::invalid_argument, "ggml formats scale by absmax");
    if (s.col_weights) require(s.cols >= 1, Errc::invalid_argument, "column weights need the column count");
  }

  // As BlockQuantizer::run: blocks [b0, b1) of in -> (deq, out); deq may
  // alias in; with a minuend deq = minuend - q(in).
  void run(const Scalar* in, Scalar* deq, PackedMatrix* out, std::int64_t N, std::int64_t b0, std::int64_t b1,
           const Scalar* minuend) const {
    float x[kGgmlBlock], w[kGgmlBlock];
    GgmlBlock blk;
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t e0 = b * kGgmlBlock;
      const int n = static_cast<int>(std::min<std::int64_t>(kGgmlBlock, N - e0));
      load_ggml_block(in + e0, n, b, x);
      const bool weighted = s_.search && s_.col_weights;
      if (weighted)
        for (int j = 0; j < n; ++j) w[j] = s_.col_weights[(e0 + j) % s_.cols];
      ggml_quantize_block(s_.ggml, x, weighted ? w : nullptr, n, s_.search, blk);
      const float d = half_to_float(blk.dh);
      if (!std::isfinite(d))
        fail(Errc::invalid_argument, "block " + std::to_string(b) + " needs a scale beyond the fp16 range of " +
                                         ggml_format_name(s_.ggml) + " (|w| up to about " +
                                         std::to_string(65504.0 * (s_.ggml == GgmlFormat::q8_0 ? 127 : 8)) + ")");
      if (out) {
        out->scales[static_cast<std::size_t>(b)] = d;
        pack_codes(out->codes.data(), e0, blk.codes, n, s_.bits);
      }
      if (deq)
        for (int j = 0; j < n; ++j) {
          // float, as ggml dequantizes; exact in double too.
          const Scalar q = static_cast<Scalar>(levels_[blk.codes[j]]) * static_cast<Scalar>(d);
          deq[e0 + j] = minuend ? minuend[e0 + j] - q : q;
        }
    }
  }

 private:
  const QuantSpec& s_;
  const std::vector<float>& levels_;
};

}  // namespace detail
}  // namespace loftq
