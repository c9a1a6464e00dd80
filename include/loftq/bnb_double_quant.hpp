#pragma once
// bitsandbytes' double quantization of block scales ("nested" quant state,
// compress_statistics=True), as a second scheme beside double_quant.hpp's.
//
// bitsandbytes (functional.py, quantize_4bit with compress_statistics) takes
// the fp32 absmax scales s, subtracts their mean (offset = s.mean(), fp32),
// and quantizes s - offset with quantize_blockwise(blocksize=256) over the
// 8-bit signed dynamic map create_dynamic_map(): one fp32 absmax per 256
// scales, one byte per scale indexing the map. Its readers recover
//
//   scale[b] = fl(fl(map[code[b]] * nested_absmax[b / 256]) + offset)      (fp32)
//
// (dequantize_blockwise, then `absmax += offset`). Any codes are valid input
// to that reader, so the encoder here picks, per scale, the code whose
// recovered value is nearest the scale itself, in the reader's own fp32
// arithmetic, rather than bitsandbytes' nearest normalized value; a positive
// scale never recovers as <= 0 and a zero scale never as < 0 (either would
// flip or scale its block the wrong way).
//
// The map differs from this project's int8 grid (double_quant.hpp): dynamic
// exponent, so fine near zero and coarse (steps of ~0.014 * absmax) near the
// block's extreme.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "double_quant.hpp"
#include "error.hpp"
#include "initialize.hpp"
#include "packed.hpp"

namespace loftq {

constexpr Eigen::Index kBnbNestedBlock = 256;  // quantize_4bit's blocksize for the nested absmax

namespace detail {

// torch.linspace(start, end, steps) in float32 as torch's CPU kernel computes
// it on x86 with AVX2: the scalar path start + step * i (end - step * (steps -
// 1 - i) past the middle) contracted to an FMA, and runs of 16 elements as
// two 8-lane vectors, base (by the scalar rule) + lane * step without an FMA.
// Checked against torch 1.13 on every size the dynamic map uses; builds with
// other vector widths differ in the last bit of some entries, which is why the
// map is stored in the file (nested_quant_map) and read from there.
inline float torch_linspace_avx2(float start, float end, int steps, int i) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  auto scalar = [&](int k) {
    return k < halfway ? std::fma(step, static_cast<float>(k), start)
                       : std::fma(-step, static_cast<float>(steps - k - 1), end);
  };
  if (i >= (steps / 16) * 16) return scalar(i);
  const int base = i - i % 8;
  volatile float lane = step * static_cast<float>(i - base);
  return scalar(base) + lane;
}

}  // namespace detail

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), the
// 256 sorted fp32 values. bitsandbytes builds it with float32
// torch.linspace(0.1, 1, 2^i + 1) for i = 0..6, midpoints of neighbours,
// times +-10^(i - 6) (a float32 multiply by the rounded power), plus 0 and 1.
inline const std::vector<float>& bnb_dynamic_map() {
  static const std::vector<float> map = [] {
    std::vector<float> v;
    v.reserve(256);
    for (int i = 0; i < 7; ++i) {
      const int items = (1 << i) + 1;
      const float p = static_cast<float>(std::pow(10.0, i - 6));
      for (int j = 0; j + 1 < items; ++j) {
        const float lo = detail::torch_linspace_avx2(0.1f, 1.0f, items, j);
        const float hi = detail::torch_linspace_avx2(0.1f, 1.0f, items, j + 1);
        volatile float sum = lo + hi;  // no contraction into the products below
        const float mean = sum / 2.0f;
        volatile float prod = p * mean;
        const float pos = prod;
        v.push_back(pos);
        v.push_back(-pos);
      }
    }
    v.push_back(0.0f);
    v.push_back(1.0f);
    std::sort(v.begin(), v.end());
    return v;
  }();
  return map;
}

// The nested quant state of one matrix's scales.
struct BnbNestedScales {
  float offset = 0.0f;              // nested_offset
  std::vector<std::uint8_t> codes;  // absmax (U8): one per block scale, an index into bnb_dynamic_map()
  std::vector<float> absmax;        // nested_absmax: one per kBnbNestedBlock scales

  // Scale i as bitsandbytes recovers it: two fp32 roundings, kept apart.
  float scale(std::size_t i) const {
    volatile float prod = bnb_dynamic_map()[codes[i]] * absmax[i / static_cast<std::size_t>(kBnbNestedBlock)];
    return prod + offset;
  }
};

namespace detail {

inline float bnb_recovered(float level, float amax, float offset) {
  volatile float prod = level * amax;
  return prod + offset;
}

}  // namespace detail

// Quantizes non-negative fp32 scales in bitsandbytes' nested scheme.
inline BnbNestedScales bnb_double_quantize_scales(const std::vector<float>& scales) {
  detail::require(!scales.empty(), Errc::invalid_argument, "bnb_double_quantize_scales: no scales");
  double sum = 0;
  for (std::size_t i = 0; i < scales.size(); ++i) {
    const float s = scales[i];
    if (!std::isfinite(s))
      detail::fail(Errc::non_finite, "bnb_double_quantize_scales: scale " + std::to_string(i) + " is not finite");
    if (s < 0.0f)
      detail::fail(Errc::invalid_argument, "bnb_double_quantize_scales: scale " + std::to_string(i) + " is negative");
    sum += s;
  }
  const std::vector<float>& map = bnb_dynamic_map();
  const int zero_code = static_cast<int>(std::lower_bound(map.begin(), map.end(), 0.0f) - map.begin());
  BnbNestedScales D;
  D.offset = static_cast<float>(sum / static_cast<double>(scales.size()));
  D.codes.resize(scales.size());
  const std::size_t bs = static_cast<std::size_t>(kBnbNestedBlock);
  D.absmax.resize((scales.size() + bs - 1) / bs);
  for (std::size_t k = 0; k < D.absmax.size(); ++k) {
    const std::size_t i0 = k * bs, i1 = std::min(scales.size(), i0 + bs);
    float amax = 0.0f;
    for (std::size_t i = i0; i < i1; ++i) amax = std::max(amax, std::abs(scales[i] - D.offset));
    D.absmax[k] = amax;
    for (std::size_t i = i0; i < i1; ++i) {
      const float s = scales[i];
      auto ok = [&](int c) {
        const float v = detail::bnb_recovered(map[static_cast<std::size_t>(c)], amax, D.offset);
        return s > 0.0f ? v > 0.0f : v >= 0.0f;
      };
      int best = zero_code;
      if (amax > 0.0f) {
        const float x = (s - D.offset) / amax;
        const int hi = static_cast<int>(std::lower_bound(map.begin(), map.end(), x) - map.begin());
        float best_err = INFINITY;
        best = -1;
        for (int c = std::max(0, hi - 2); c <= std::min(255, hi + 1); ++c) {
          if (!ok(c)) continue;
          const float err = std::abs(detail::bnb_recovered(map[static_cast<std::size_t>(c)], amax, D.offset) - s);
          if (err < best_err) best_err = err, best = c;
        }
        // Nearest codes all recover a non-positive scale: take the least
        // code above them that does not (the map's 1.0 always does, as
        // offset + amax >= s).
        if (best < 0) {
          best = std::min(255, hi + 2);
          while (best < 255 && !ok(best)) ++best;
        }
      }
      D.codes[i] = static_cast<std::uint8_t>(best);
    }
  }
  return D;
}

inline std::vector<float> recover_scales(const BnbNestedScales& D) {
  detail::require(D.absmax.size() == (D.codes.size() + static_cast<std::size_t>(kBnbNestedBlock) - 1) /
                                         static_cast<std::size_t>(kBnbNestedBlock),
                  Errc::invalid_argument,
                  "recover_scales: expected one nested absmax per " + std::to_string(kBnbNestedBlock) + " codes");
  std::vector<float> s(D.codes.size());
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = D.scale(i);
  return s;
}

// bitsandbytes' double quantization of a LoftQ result: r.packed's scales
// become the ones bitsandbytes recovers from `nested` (which receives the
// payload to store), r.Q is that Q, and with `refit` A, B are refit to it once,
// exactly as double_quantize(W, r, ...) does for the int8 scheme. Only absmax
// scales of a non-double-quantized result qualify.
template <class Derived>
DoubleQuantEffect bnb_double_quantize(const Eigen::MatrixBase<Derived>& W, Result<typename Derived::Scalar>& r,
                                      BnbNestedScales& nested, const Options& opt = {}, bool refit = true) {
  DoubleQuantEffect eff =
      detail::replace_scales_and_refit(W, r, opt, refit, "bnb_double_quantize", [&](PackedMatrix& P) {
        detail::validate(P);
        detail::require(!P.double_quantized(), Errc::invalid_argument,
                        "bnb_double_quantize: the scales are already double-quantized");
        detail::require(P.scale_mode == ScaleMode::absmax, Errc::unsupported,
                        "bnb_double_quantize: only absmax scales can be double-quantized");
        nested = bnb_double_quantize_scales(P.scales);
        P.scales = recover_scales(nested);
      });
  // Codes, one byte per block scale, the nested absmax and the offset.
  const double n = static_cast<double>(r.packed.size());
  eff.bits_per_weight_after = (8.0 * static_cast<double>(r.packed.codes.size() + nested.codes.size()) +
                               32.0 * static_cast<double>(nested.absmax.size() + 1)) /
                              n;
  return eff;
}

}  // namespace loftq
