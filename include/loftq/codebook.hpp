#pragma once
// Codebooks: the normalized levels a block's values are rounded to.
//
// NormalFloat tables are computed from QLoRA's formula rather than pasted in,
// but with the exact float32 arithmetic of the reference (PEFT's NFQuantizer on
// torch CPU), so the NF4 table is bit-identical to bitsandbytes' constants and
// the codes we pick are the codes the reference picks.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace loftq {
namespace detail {

// Inverse standard normal CDF: Acklam's rational approximation (rel. error
// ~1e-9) polished by one Halley step on erfc, which brings it to double
// precision. Double precision matters: each level is rounded to float32 and
// a 1e-9 error would flip that rounding for some levels.
inline double inv_norm_cdf(double p) {
  if (!(p > 0.0 && p < 1.0)) {
    if (p == 0.0) return -std::numeric_limits<double>::infinity();
    if (p == 1.0) return std::numeric_limits<double>::infinity();
    return std::numeric_limits<double>::quiet_NaN();
  }
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double plow = 0.02425;
  double x;
  if (p < plow) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= 1 - plow) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  // Two Halley steps: the second costs nothing and guards the tails.
  for (int it = 0; it < 2; ++it) {
    const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
    const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
    x = x - u / (1 + x * u / 2);
  }
  return x;
}

// torch.linspace(start, end, steps) for float32 on CPU, element i. Torch fills
// from both ends toward the middle; the products are forced through a
// volatile so no FMA contraction changes the rounding.
inline float torch_linspace_f32(float start, float end, int steps, int i) {
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  if (i < halfway) {
    volatile float prod = step * static_cast<float>(i);
    return start + prod;
  }
  volatile float prod = step * static_cast<float>(steps - i - 1);
  return end - prod;
}

// Map a float/double to an integer whose order matches the numeric order,
// so a bisection over representable values is a bisection over integers.
template <class Scalar>
struct OrderedBits {
  static_assert(std::is_same<Scalar, float>::value || std::is_same<Scalar, double>::value, "float or double");
  using U = std::conditional_t<sizeof(Scalar) == 4, std::uint32_t, std::uint64_t>;
  using I = std::int64_t;
  static constexpr U kSign = U{1} << (8 * sizeof(U) - 1);
  static I to(Scalar x) {
    U u;
    std::memcpy(&u, &x, sizeof u);
    const I v = static_cast<I>(u & ~kSign);
    return (u & kSign) ? -v : v;
  }
  static Scalar from(I v) {
    U u = v < 0 ? (static_cast<U>(-v) | kSign) : static_cast<U>(v);
    Scalar x;
    std::memcpy(&x, &u, sizeof x);
    return x;
  }
};

// Decision thresholds for a sorted table: code(y) = #{i : y >= thr[i]}.
//
// thr[i] is the smallest representable y for which the reference's argmin,
// computed as fl(|y - t|) with ties to the lower index, prefers t[i+1] over
// t[i]. Searching for it in the scalar's own arithmetic (instead of taking
// the real midpoint) makes the branch-free count agree with a brute-force
// argmin for every input, exact midpoints included.
template <class Scalar>
std::vector<Scalar> decision_thresholds(const std::vector<float>& table) {
  std::vector<Scalar> thr;
  if (table.size() < 2) return thr;
  thr.reserve(table.size() - 1);
  using OB = OrderedBits<Scalar>;
  for (std::size_t i = 0; i + 1 < table.size(); ++i) {
    const Scalar lo_t = static_cast<Scalar>(table[i]), hi_t = static_cast<Scalar>(table[i + 1]);
    auto prefers_upper = [&](Scalar y) { return std::abs(y - hi_t) < std::abs(y - lo_t); };
    typename OB::I lo = OB::to(lo_t), hi = OB::to(hi_t);  // invariant: !P(lo), P(hi)
    // The distance in unsigned arithmetic: for doubles of opposite signs it
    // can exceed the signed range (e.g. between -10 and 1), though never 2^64.
    auto distance = [&] { return static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo); };
    while (distance() > 1) {
      const typename OB::I mid = lo + static_cast<typename OB::I>(distance() / 2);
      if (prefers_upper(OB::from(mid)))
        hi = mid;
      else
        lo = mid;
    }
    thr.push_back(OB::from(hi));
  }
  return thr;
}

inline void check_bits(int bits, int lo, int hi, const char* what) {
  require(bits >= lo && bits <= hi, Errc::unsupported,
          std::string(what) + ": unsupported bit width " + std::to_string(bits) + " (supported: " + std::to_string(lo) +
              ".." + std::to_string(hi) + ")");
}

}  // namespace detail

// NF-k levels, sorted, spanning [-1, 1] with an exact 0 (2^bits entries).
// Bits 2..8. Computed once per bit width and cached.
inline const std::vector<float>& normal_float_codebook(int bits) {
  detail::check_bits(bits, 2, 8, "NormalFloat");
  static std::array<std::vector<float>, 9> cache;
  static std::array<std::once_flag, 9> once;
  std::call_once(once[bits], [bits] {
    const float offset = 0.9677083f, half = 0.5f;
    const int V = 1 << bits;
    std::vector<float> v;
    v.reserve(V);
    // v1: V/2 positive levels from linspace(offset, 0.5, V/2 + 1)[:-1]
    for (int i = 0; i < V / 2; ++i)
      v.push_back(static_cast<float>(detail::inv_norm_cdf(detail::torch_linspace_f32(offset, half, V / 2 + 1, i))));
    v.push_back(0.0f);
    // v3: V/2 - 1 negative levels from linspace(offset, 0.5, V/2)[:-1]
    for (int i = 0; i < V / 2 - 1; ++i)
      v.push_back(-static_cast<float>(detail::inv_norm_cdf(detail::torch_linspace_f32(offset, half, V / 2, i))));
    std::sort(v.begin(), v.end());
    const float mx = v.back();
    for (float& x : v) x = x / mx;
    cache[bits] = std::move(v);
  });
  return cache[bits];
}

// Uniform levels. symmetric: linspace(-1, 1, 2^bits), used with an absmax
// scale. asymmetric: linspace(0, 1, 2^bits), used with a per-block [min, max].
// Bits 2..8.
inline const std::vector<float>& uniform_codebook(int bits, bool symmetric) {
  detail::check_bits(bits, 2, 8, "Uniform");
  static std::array<std::array<std::vector<float>, 9>, 2> cache;
  static std::array<std::array<std::once_flag, 9>, 2> once;
  std::call_once(once[symmetric][bits], [bits, symmetric] {
    const int L = 1 << bits;
    std::vector<float> v(L);
    for (int i = 0; i < L; ++i) {
      const double t = static_cast<double>(i) / (L - 1);
      v[i] = static_cast<float>(symmetric ? 2 * t - 1 : t);
    }
    // The closed form leaves the endpoints exact; make the symmetric table's
    // mirror pairs exact negatives of each other as well.
    if (symmetric)
      for (int i = 0; i < L / 2; ++i) v[i] = -v[L - 1 - i];
    cache[symmetric][bits] = std::move(v);
  });
  return cache[symmetric][bits];
}

}  // namespace loftq
