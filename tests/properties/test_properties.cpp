// Property tests: random shapes (1x1 to tall, wide and non-multiple-of-block),
// bit widths 2..8, NormalFloat and Uniform (symmetric and asymmetric) via the
// runtime loftq::Quantizer, block sizes 1..300, ranks 1..min(m, n), float and
// double. Every case is seeded, and a failure prints the case that broke.
//
//   * quantize then dequantize equals fake_quantize, bit for bit;
//   * requantizing the dequantized matrix gives the same codes, scales, mins;
//   * each code is the brute-force nearest level (argmin over the codebook of
//     |y - t| in the scalar type, ties to the lower index), y = x / scale for
//     absmax and y = (x - min) / (max - min) for minmax, with the fp32 scales;
//   * initialize never returns NaN/Inf, and with keep_best its error is never
//     above qlora_init's;
//   * threads = 1 and threads = 2 give bit-identical results.
#include <doctest/doctest.h>

#include <loftq/loftq.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using loftq::Quantizer;
using loftq::RowMatrix;

struct Case {
  Eigen::Index m = 1, n = 1;
  Quantizer q;
  std::uint64_t seed = 0;
  int dist = 0;  // 0 gaussian, 1 uniform positive, 2 heavy tailed, 3 few distinct values
  std::string str() const {
    std::ostringstream s;
    s << m << "x" << n << " " << q.name() << " block " << q.block_size << " seed " << seed << " dist " << dist;
    return s.str();
  }
};

// Shapes: the corners first, then random ones biased to small, tall and wide.
std::vector<std::pair<Eigen::Index, Eigen::Index>> shapes(std::mt19937_64& g, int count) {
  std::vector<std::pair<Eigen::Index, Eigen::Index>> s = {{1, 1},   {1, 7},   {7, 1},   {2, 3},   {300, 3},
                                                          {3, 300}, {65, 63}, {64, 64}, {1, 301}, {129, 2}};
  std::uniform_int_distribution<int> kind(0, 3), small(1, 40), big(41, 260), thin(1, 6);
  while (static_cast<int>(s.size()) < count) {
    switch (kind(g)) {
      case 0:
        s.emplace_back(small(g), small(g));
        break;
      case 1:
        s.emplace_back(big(g), thin(g));
        break;
      case 2:
        s.emplace_back(thin(g), big(g));
        break;
      default:
        s.emplace_back(small(g) + 20, small(g) + 20);
        break;
    }
  }
  return s;
}

template <class Scalar>
RowMatrix<Scalar> make_matrix(const Case& c) {
  std::mt19937_64 g(c.seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::uniform_real_distribution<double> ud(0.25, 3.0);
  std::uniform_int_distribution<int> few(-2, 2);
  RowMatrix<Scalar> W(c.m, c.n);
  for (Eigen::Index i = 0; i < W.size(); ++i) {
    double v = 0;
    switch (c.dist) {
      case 0:
        v = nd(g);
        break;
      case 1:
        v = ud(g);
        break;
      case 2:
        v = nd(g) / std::max(0.05, std::abs(nd(g)));
        break;
      default:
        v = 0.5 * few(g);
        break;
    }
    W.data()[i] = static_cast<Scalar>(v);
  }
  return W;
}

Quantizer random_quantizer(std::mt19937_64& g) {
  std::uniform_int_distribution<int> bits(2, 8), kind(0, 2), block(1, 300), smallblock(1, 9);
  const int k = kind(g);
  const Eigen::Index bs = (g() % 3 == 0) ? smallblock(g) : block(g);
  return Quantizer(k == 0 ? Quantizer::Kind::normal_float : Quantizer::Kind::uniform, bits(g), bs, k != 2);
}

// A case of shape m x n with a random quantizer, seed and one of the first
// `dists` input distributions, drawn from g in that order.
Case random_case(std::mt19937_64& g, Eigen::Index m, Eigen::Index n, int dists) {
  Case c;
  c.m = m;
  c.n = n;
  c.q = random_quantizer(g);
  c.seed = g();
  c.dist = static_cast<int>(g() % static_cast<std::uint64_t>(dists));
  return c;
}

template <class Scalar>
bool bit_equal(const RowMatrix<Scalar>& a, const RowMatrix<Scalar>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());  // no NaN here: == is exact
}

bool same_packed(const loftq::PackedMatrix& a, const loftq::PackedMatrix& b) {
  return a.rows == b.rows && a.cols == b.cols && a.bits == b.bits && a.block_size == b.block_size &&
         a.scale_mode == b.scale_mode && a.codes == b.codes && a.scales == b.scales && a.mins == b.mins;
}

// The reference rule, written the slow way.
template <class Scalar>
int brute_code(Scalar y, const std::vector<float>& cb) {
  int best = 0;
  Scalar bd = std::abs(y - static_cast<Scalar>(cb[0]));
  for (std::size_t i = 1; i < cb.size(); ++i) {
    const Scalar d = std::abs(y - static_cast<Scalar>(cb[i]));
    if (d < bd) {
      bd = d;
      best = static_cast<int>(i);
    }
  }
  return best;
}

template <class Scalar>
void check_quantizer_properties(const Case& c) {
  CAPTURE(c.str());
  const RowMatrix<Scalar> W = make_matrix<Scalar>(c);
  const loftq::PackedMatrix P = loftq::quantize(W, c.q, 1);
  const RowMatrix<Scalar> D = loftq::dequantize<Scalar>(P, 1);
  const RowMatrix<Scalar> F = loftq::fake_quantize(W, c.q, 1);
  REQUIRE(D.allFinite());
  CHECK(bit_equal(D, F));

  // Idempotence of the codes.
  const loftq::PackedMatrix P2 = loftq::quantize(D, c.q, 1);
  CHECK(same_packed(P, P2));

  // Brute-force nearest code, block by block, in the scalar type.
  const auto& cb = c.q.codebook();
  const Eigen::Index N = W.size(), bs = c.q.block_size;
  int mismatches = 0;
  for (Eigen::Index b = 0; b * bs < N; ++b) {
    const Eigen::Index e0 = b * bs, e1 = std::min(N, e0 + bs);
    Scalar off = 0, den = 0;
    if (c.q.scale_mode() == loftq::ScaleMode::absmax) {
      Scalar amax = 0;
      for (Eigen::Index e = e0; e < e1; ++e) amax = std::max(amax, std::abs(W.data()[e]));
      den = static_cast<Scalar>(static_cast<float>(amax));
      CHECK(P.scales[static_cast<std::size_t>(b)] == static_cast<float>(amax));
    } else {
      Scalar lo = W.data()[e0], hi = W.data()[e0];
      for (Eigen::Index e = e0; e < e1; ++e) {
        lo = std::min(lo, W.data()[e]);
        hi = std::max(hi, W.data()[e]);
      }
      off = static_cast<Scalar>(static_cast<float>(lo));
      den = static_cast<Scalar>(static_cast<float>(hi)) - off;
      CHECK(P.mins[static_cast<std::size_t>(b)] == static_cast<float>(lo));
      CHECK(P.scales[static_cast<std::size_t>(b)] == static_cast<float>(hi));
    }
    for (Eigen::Index e = e0; e < e1; ++e) {
      const Scalar y = den == Scalar(0) ? Scalar(0) : (W.data()[e] - off) / den;
      if (P.code(e) != brute_code(y, cb)) ++mismatches;
    }
  }
  CHECK(mismatches == 0);

  // Threads do not change anything.
  const loftq::PackedMatrix Pt = loftq::quantize(W, c.q, 2);
  CHECK(same_packed(P, Pt));
  CHECK(bit_equal(F, loftq::fake_quantize(W, c.q, 2)));
}

template <class Scalar>
void run_quantizer_properties(std::uint64_t seed, int count) {
  std::mt19937_64 g(seed);
  for (const auto& [m, n] : shapes(g, count)) {
    check_quantizer_properties<Scalar>(random_case(g, m, n, 4));
  }
}

template <class Scalar>
void check_initialize_properties(const Case& c, const loftq::Options& base) {
  CAPTURE(c.str());
  CAPTURE(base.rank);
  CAPTURE(static_cast<int>(base.svd.method));
  CAPTURE(base.iterations);
  const RowMatrix<Scalar> W = make_matrix<Scalar>(c);
  loftq::Options o1 = base, o2 = base;
  o1.threads = 1;
  o2.threads = 2;
  const auto r1 = loftq::initialize(W, c.q, o1);
  const auto r2 = loftq::initialize(W, c.q, o2);
  REQUIRE(r1.Q.allFinite());
  REQUIRE(r1.A.allFinite());
  REQUIRE(r1.B.allFinite());
  CHECK(r1.A.cols() == base.rank);
  CHECK(r1.B.cols() == base.rank);
  for (double h : r1.history) CHECK(std::isfinite(h));
  CHECK(std::isfinite(r1.qlora_error));

  // Bit-identical across thread counts.
  CHECK(bit_equal(r1.Q, r2.Q));
  CHECK(r1.A == r2.A);
  CHECK(r1.B == r2.B);
  CHECK(r1.history == r2.history);
  CHECK(same_packed(r1.packed, r2.packed));

  // Q is exactly the dequantized packed codes.
  CHECK(bit_equal(r1.Q, loftq::dequantize<Scalar>(r1.packed, 1)));

  const auto base_q = loftq::qlora_init(W, c.q, o1);
  CHECK(base_q.qlora_error == r1.qlora_error);
  if (base.keep_best) {
    // Iteration 1 already projects W - q(W) onto its top-r singular subspace,
    // which cannot increase its norm; the slack covers summation rounding only.
    CHECK(r1.error() <= base_q.qlora_error * (1 + 1e-6) + 1e-12);
    CHECK(r1.error() == *std::min_element(r1.history.begin(), r1.history.end()));
  }
}

template <class Scalar>
void run_initialize_properties(std::uint64_t seed, int count) {
  std::mt19937_64 g(seed);
  std::vector<std::pair<Eigen::Index, Eigen::Index>> s = {{1, 1}, {1, 9}, {9, 1}, {70, 3}, {3, 90}, {33, 47}};
  std::uniform_int_distribution<int> dim(1, 48);
  while (static_cast<int>(s.size()) < count) s.emplace_back(dim(g), dim(g));
  for (const auto& [m, n] : s) {
    const Case c = random_case(g, m, n, 3);
    loftq::Options o;
    const Eigen::Index mn = std::min(m, n);
    std::uniform_int_distribution<Eigen::Index> rank(1, mn);
    o.rank = (g() % 4 == 0) ? mn : rank(g);
    o.iterations = 1 + static_cast<int>(g() % 3);
    o.svd.method = g() % 2 ? loftq::SVDMethod::exact : loftq::SVDMethod::randomized;
    o.svd.seed = g();
    o.start = g() % 4 == 0 ? loftq::Start::svd : loftq::Start::zero;
    o.keep_best = g() % 4 != 0;
    check_initialize_properties<Scalar>(c, o);
  }
}

}  // namespace

TEST_CASE("properties: quantize round trip, idempotence, brute-force codes, threads (float)") {
  run_quantizer_properties<float>(0x5eed0001, 160);
}

TEST_CASE("properties: quantize round trip, idempotence, brute-force codes, threads (double)") {
  run_quantizer_properties<double>(0x5eed0002, 160);
}

TEST_CASE("properties: every bit width and kind on one non-multiple-of-block shape") {
  for (int bits = 2; bits <= 8; ++bits)
    for (int k = 0; k < 3; ++k)
      for (Eigen::Index bs : {1, 5, 64, 300}) {
        Case c;
        c.m = 37;
        c.n = 29;
        c.q = Quantizer(k == 0 ? Quantizer::Kind::normal_float : Quantizer::Kind::uniform, bits, bs, k != 2);
        c.seed = static_cast<std::uint64_t>(bits * 100 + k * 10) + static_cast<std::uint64_t>(bs);
        c.dist = bits % 4;
        check_quantizer_properties<float>(c);
        check_quantizer_properties<double>(c);
      }
}

TEST_CASE("properties: initialize is finite, thread-independent and no worse than qlora_init (float)") {
  run_initialize_properties<float>(0x5eed0003, 40);
}

TEST_CASE("properties: initialize is finite, thread-independent and no worse than qlora_init (double)") {
  run_initialize_properties<double>(0x5eed0004, 25);
}
