#pragma once
// Deterministic sums in double precision. Every error the library reports is
// one of these: fixed partial-sum orders and fixed chunks, added in chunk
// order, so results do not depend on the thread count.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel.hpp"

namespace loftq {
namespace detail {

// sum_i term(i) for i < n in double, in 8 interleaved partial sums (a fixed
// order, so deterministic) that the compiler can vectorize.
template <class F>
double interleaved_sum(std::int64_t n, F&& term) {
  double acc[8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += term(i + k);
  for (int k = 0; i < n; ++i, ++k) acc[k] += term(i);
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

// interleaved_sum over the rows x n elements of a row-major range, as
// term(row, col): the same order and so the same bits as interleaved_sum of
// the flat range (data-aware sums then match data-free ones where the
// weights are all 1).
template <class F>
double interleaved_row_sum(Eigen::Index rows, Eigen::Index n, F&& term) {
  double acc[8] = {};
  if (n % 8 == 0) {
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < n; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += term(i, j + k);
  } else {
    // Element e of the flat range goes to partial sum e % 8, as in
    // interleaved_sum; the lane is carried across rows.
    int lane = 0;
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < n; ++j) {
        acc[lane] += term(i, j);
        lane = (lane + 1) & 7;
      }
  }
  double s = 0;
  for (double a : acc) s += a;
  return s;
}

// sum (x_i - y_i)^2 in double.
template <class Scalar>
double squared_distance(const Scalar* x, const Scalar* y, std::int64_t n) {
  return interleaved_sum(n, [&](std::int64_t i) {
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    return d * d;
  });
}

// sum_c part(c) over fixed chunks, computed in parallel, added in chunk order.
template <class F>
double chunked_sum(std::int64_t chunks, int threads, F&& part) {
  std::vector<double> parts(static_cast<std::size_t>(chunks), 0.0);
  parallel_for(chunks, threads, [&](std::int64_t c) { parts[static_cast<std::size_t>(c)] = part(c); });
  double s = 0;
  for (double p : parts) s += p;
  return s;
}

// sum x_i^2 over N elements, in chunks of 2^16.
template <class Scalar>
double squared_norm(const Scalar* x, std::int64_t N, int threads) {
  const std::int64_t chunk = 1 << 16, chunks = (N + chunk - 1) / chunk;
  return chunked_sum(chunks, threads, [&](std::int64_t c) {
    const std::int64_t b = c * chunk, e = std::min(N, b + chunk);
    return interleaved_sum(e - b, [&](std::int64_t i) {
      const double v = static_cast<double>(x[b + i]);
      return v * v;
    });
  });
}

// sqrt(sq / norm_sq), the relative error; 0 for a zero reference.
inline double relative(double sq, double norm_sq) { return norm_sq > 0 ? std::sqrt(sq / norm_sq) : 0.0; }

}  // namespace detail
}  // namespace loftq
