#pragma once
// A ggml block's input as ggml's reference quantizers read it, shared by the
// 32-element formats (ggml_blocks.hpp) and the K formats
// (ggml_kquant_ref.hpp, ggml_kquant_block.hpp).

#include <cmath>
#include <cstdint>
#include <string>

#include "../error.hpp"

namespace loftq {
namespace detail {

// The element of largest magnitude, the first of equals, sign kept: the
// `if (ax > amax) { amax = ax; max = x[j]; }` loop of ggml-quants.c. Its
// magnitude is that loop's amax; 0 for n = 0.
inline float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float ax = std::fabs(x[j]);
    if (ax > amax) {
      amax = ax;
      max = x[j];
    }
  }
  return max;
}

// x[0, n) = block `block`'s n elements from `in` as float, which is what ggml
// quantizes: NaN and Inf, and values beyond the float range, are refused
// naming the block.
template <class Scalar>
void load_ggml_block(const Scalar* in, int n, std::int64_t block, float* x) {
  for (int j = 0; j < n; ++j) {
    const Scalar v = in[j];
    if (!std::isfinite(v))
      fail(Errc::non_finite, "the matrix contains NaN or Inf (block " + std::to_string(block) + ")");
    x[j] = static_cast<float>(v);
    if (!std::isfinite(x[j]))
      fail(Errc::invalid_argument, "block " + std::to_string(block) + " has magnitude beyond the float range");
  }
}

}  // namespace detail
}  // namespace loftq
