#pragma once
// Realistic test matrices for the tests, the benchmarks and the examples.
// This is support code for the project's own programs, not part of the loftq
// API: it lives in namespace loftq_common and may change at any time.
//
//   realistic_matrix(m, n, seed)  a synthetic "trained weight" (row-major float)
//
// realistic_matrix is deterministic. Its random stream is the same on every
// platform and standard library: a fixed engine (std::mt19937_64, whose output
// the standard pins down) and an own Box-Muller transform, never
// std::*_distribution (implementation-defined). Work is split into fixed
// 64-row chunks with a seed each, and Eigen is held serial while it runs, so
// the result is bit-identical for any thread count. Across builds the last
// bits may differ (SIMD width, FMA contraction in the GEMM and the vectorized
// log / sin / cos).

#include <Eigen/Core>
#include <loftq/threads.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace loftq_common {

using Index = Eigen::Index;
using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Parameters of the synthetic weight model. The defaults aim at the look of an
// LLM projection matrix: std ~0.02, a decaying top of the spectrum, heavy-tailed
// entries and a few large input channels.
struct RealisticSpec {
  Index structure_rank = 64;                     // rank of the smooth low-rank part U diag(s) V^T
  double decay = 0.8;                            // s_i ~ i^-decay
  double low_rank_energy = 0.3;                  // share of the (pre-outlier) variance in the low-rank part;
                                                 // the rest is Student-t noise with nu = 4 (heavy tails)
  double outlier_fraction = 0.01;                // share of input channels (columns) that are scaled up...
  double outlier_min = 5.0, outlier_max = 10.0;  // ...by a factor drawn uniformly from this range
  double target_std = 0.02;                      // expected entry standard deviation of the result
};

namespace detail {

// splitmix64 finalizer: turns (seed, stream id) into well-mixed independent seeds.
inline std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline std::uint64_t stream_seed(std::uint64_t seed, std::uint64_t stream) {
  return mix(mix(seed) ^ mix(stream + 0x51ed27ull));
}

// Uniform in (0, 1), never 0 or 1, from 53 random bits.
inline double uniform53(std::uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
// Uniform in (0, 1), never 0, from 24 random bits: two per 64-bit draw.
inline float uniform24(std::uint32_t bits) { return (static_cast<float>(bits >> 8) + 0.5f) * (1.0f / 16777216.0f); }

// Standard normals by Box-Muller, fixed algorithm.
class Normal {
 public:
  explicit Normal(std::uint64_t seed) : gen_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u = uniform53(gen_()), v = uniform53(gen_());
    const double r = std::sqrt(-2.0 * std::log(u)), th = 6.283185307179586 * v;
    spare_ = r * std::sin(th);
    has_spare_ = true;
    return r * std::cos(th);
  }
  std::mt19937_64& engine() { return gen_; }

 private:
  std::mt19937_64 gen_;
  double spare_ = 0;
  bool has_spare_ = false;
};

// Student-t(nu = 4) noise for one row, scaled to unit variance, written to
// out[0..n). t = z / sqrt(chi2_4 / 4) with chi2_4 = -2 log(u u') (a sum of two
// exponentials), and Var(t_4) = 2; z comes from Box-Muller. Each pair of
// outputs takes three 64-bit draws; u u' >= 2^-48, so every log is finite.
// The draws are staged and then transformed with Eigen's vectorized array
// functions (std::log / std::sqrt in a loop do not vectorize because of errno).
//
// The staging arrays must be Eigen-allocated (aligned to the packet size):
// Eigen peels unaligned leading elements off to its scalar path (std::log
// rather than its own plog), so over a misaligned buffer, e.g. a
// std::vector's, the result would depend on the heap layout.
struct NoiseWorkspace {
  Eigen::ArrayXf ur, th, c0, c1, o0, o1;
  void resize(Index pairs) {
    for (Eigen::ArrayXf* a : {&ur, &th, &c0, &c1, &o0, &o1}) a->resize(pairs);
  }
};

inline void student_t4_row(std::mt19937_64& gen, float* out, Index n, NoiseWorkspace& ws) {
  const Index pairs = (n + 1) / 2;
  ws.resize(pairs);
  for (Index p = 0; p < pairs; ++p) {
    const std::uint64_t a = gen(), b = gen(), c = gen();
    ws.ur[p] = uniform24(static_cast<std::uint32_t>(a));  // Box-Muller radius uniform
    ws.th[p] = (uniform24(static_cast<std::uint32_t>(a >> 32)) - 0.5f) * 6.28318530717958648f;  // angle
    ws.c0[p] = uniform24(static_cast<std::uint32_t>(b)) * uniform24(static_cast<std::uint32_t>(b >> 32));
    ws.c1[p] = uniform24(static_cast<std::uint32_t>(c)) * uniform24(static_cast<std::uint32_t>(c >> 32));
  }
  // 1 / sqrt(chi2 / 4) = 1 / sqrt(-0.5 log(u u')); Var(t_4) = 2 -> * 1/sqrt(2).
  const float inv_sqrt2 = 0.70710678118654752f;
  ws.ur = (-2.0f * ws.ur.log()).sqrt();
  ws.o0 = ws.ur * ws.th.cos() * (inv_sqrt2 * (-0.5f * ws.c0.log()).rsqrt());
  ws.o1 = ws.ur * ws.th.sin() * (inv_sqrt2 * (-0.5f * ws.c1.log()).rsqrt());
  const Index full = n / 2;
  for (Index p = 0; p < full; ++p) {
    out[2 * p] = ws.o0[p];
    out[2 * p + 1] = ws.o1[p];
  }
  if (n & 1) out[n - 1] = ws.o0[pairs - 1];
}

template <class F>
void for_chunks(Index chunks, F&& f) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
  for (Index c = 0; c < chunks; ++c) f(c);
#else
  for (Index c = 0; c < chunks; ++c) f(c);
#endif
}

// The outlier channels of a synthetic matrix or input set: round(fraction * n)
// of the n channels (at least one when fraction > 0), chosen by a partial
// Fisher-Yates shuffle driven by g, each with a factor uniform in [lo, hi);
// visit(channel, factor) is called for each, in the order drawn.
template <class Visit>
void outlier_channels(Index n, double fraction, double lo, double hi, std::mt19937_64& g, Visit&& visit) {
  const double f = std::clamp(fraction, 0.0, 1.0);
  const Index count = f > 0 ? std::max<Index>(1, static_cast<Index>(std::llround(f * static_cast<double>(n)))) : 0;
  std::vector<Index> idx(static_cast<std::size_t>(n));
  for (Index j = 0; j < n; ++j) idx[static_cast<std::size_t>(j)] = j;
  for (Index t = 0; t < count; ++t) {
    const Index pick = t + static_cast<Index>(g() % static_cast<std::uint64_t>(n - t));
    std::swap(idx[static_cast<std::size_t>(t)], idx[static_cast<std::size_t>(pick)]);
    const double u = uniform53(g());
    visit(idx[static_cast<std::size_t>(t)], static_cast<float>(lo + (hi - lo) * u));
  }
}

}  // namespace detail

// A deterministic synthetic weight matrix, m x n (PyTorch layout: out x in).
//
//   W = the sum of
//       L = U diag(s) V^T        U (m x k), V (n x k) Gaussian with N(0, 1/dim)
//                                entries (nearly orthonormal columns for
//                                dim >> k), s_i ~ i^-decay, k = structure_rank;
//       E                        i.i.d. Student-t(4) noise;
//   scaled so that L carries low_rank_energy of the variance, then a random 1%
//   of the columns ("outlier input channels") is multiplied by 5..10, and the
//   whole matrix by a constant so that the expected entry std is target_std.
//
// Cost: one rank-k GEMM and one pass of noise generation; 4096 x 11008 takes
// well under a second on two cores. No SVD or QR is involved.
inline RowMatrixXf realistic_matrix(Index m, Index n, std::uint64_t seed, const RealisticSpec& spec = {}) {
  RowMatrixXf W(m, n);
  if (m <= 0 || n <= 0) return W;
  loftq::EigenSerialScope serial;
  const Index k = std::max<Index>(1, std::min({spec.structure_rank, m, n}));

  // Spectrum: s_i = i^-decay, normalized so that ||L||_F^2 ~ sum s_i^2 equals
  // low_rank_energy * m * n (unit total variance before outliers and scaling).
  Eigen::VectorXf s(k);
  double ss = 0;
  for (Index i = 0; i < k; ++i) {
    const double v = std::pow(static_cast<double>(i + 1), -spec.decay);
    s(i) = static_cast<float>(v);
    ss += v * v;
  }
  const double lr = std::clamp(spec.low_rank_energy, 0.0, 1.0);
  s *= static_cast<float>(std::sqrt(lr * static_cast<double>(m) * static_cast<double>(n) / ss));
  const float noise_std = static_cast<float>(std::sqrt(1.0 - lr));

  // Factors: U (m x k) row-major so each row chunk is contiguous; SVt = diag(s) V^T (k x n).
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> U(m, k), SVt(k, n);
  {
    detail::Normal g(detail::stream_seed(seed, 0xfac70u));
    const float su = static_cast<float>(1.0 / std::sqrt(static_cast<double>(m)));
    const float sv = static_cast<float>(1.0 / std::sqrt(static_cast<double>(n)));
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < k; ++j) U(i, j) = static_cast<float>(g()) * su;
    for (Index i = 0; i < k; ++i)
      for (Index j = 0; j < n; ++j) SVt(i, j) = static_cast<float>(g()) * sv * s(i);
  }

  // Outlier columns: a fixed count (at least one when the fraction is > 0),
  // chosen by a partial Fisher-Yates shuffle, each with its own factor.
  Eigen::VectorXf colscale = Eigen::VectorXf::Ones(n);
  {
    std::mt19937_64 g(detail::stream_seed(seed, 0x0077u));
    detail::outlier_channels(n, spec.outlier_fraction, spec.outlier_min, spec.outlier_max, g,
                             [&](Index j, float factor) { colscale(j) = factor; });
  }
  // Expected variance is mean(colscale^2) (unit variance before scaling).
  const double mean_c2 = static_cast<double>(colscale.squaredNorm()) / static_cast<double>(n);
  const float global = static_cast<float>(spec.target_std / std::sqrt(mean_c2));
  colscale *= global;
  const Eigen::VectorXf noise_scale = colscale * noise_std;

  constexpr Index kRows = 64;
  const Index chunks = (m + kRows - 1) / kRows;
  detail::for_chunks(chunks, [&](Index c) {
    const Index r0 = c * kRows, len = std::min(kRows, m - r0);
    W.middleRows(r0, len).noalias() = U.middleRows(r0, len) * SVt;
    std::mt19937_64 gen(detail::stream_seed(seed, 0x100000u + static_cast<std::uint64_t>(c)));
    Eigen::ArrayXf noise(n);  // Eigen-allocated, like the workspace: alignment never varies
    detail::NoiseWorkspace ws;
    for (Index i = r0; i < r0 + len; ++i) {
      detail::student_t4_row(gen, noise.data(), n, ws);
      float* w = W.data() + i * n;
      const float* cs = colscale.data();
      const float* ns = noise_scale.data();
      const float* z = noise.data();
      for (Index j = 0; j < n; ++j) w[j] = w[j] * cs[j] + z[j] * ns[j];
    }
  });
  return W;
}

}  // namespace loftq_common
