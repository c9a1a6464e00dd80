// The run-time kernel choice (loftq/simd.hpp, detail/dispatch.hpp) and the
// agreement docs/design.md promises across kernel families: on the detected path
// (AVX2+FMA, NEON) and on the portable loops, quantizer codes, scales and
// values are bit-identical, and so are the skinny products; the LoftQ result
// agrees to rounding, and each path is bit-identical for 1 and 2 threads.
#include <doctest/doctest.h>

#include <cstring>
#include <loftq/initialize.hpp>
#include <loftq/quantizer.hpp>
#include <loftq/simd.hpp>
#include <random>
#include <string>
#include <vector>

#include "support.hpp"

using loftq::detail::PortableScope;

namespace {

// memcmp of nothing: empty vectors may hand out null pointers.
bool same_bits(const float* a, const float* b, std::size_t n) {
  return n == 0 || std::memcmp(a, b, n * sizeof(float)) == 0;
}

void check_same(const loftq::PackedMatrix& a, const loftq::PackedMatrix& b) {
  CHECK(a.codes == b.codes);
  REQUIRE(a.scales.size() == b.scales.size());
  CHECK(same_bits(a.scales.data(), b.scales.data(), a.scales.size()));
  REQUIRE(a.mins.size() == b.mins.size());
  CHECK(same_bits(a.mins.data(), b.mins.data(), a.mins.size()));
}

// Heavy-tailed rows with a few large columns, so the scale search has real
// choices to make.
Eigen::MatrixXf test_matrix(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  Eigen::MatrixXf W = loftq_test::gaussian(m, n, seed);
  for (Eigen::Index j = 0; j < n; j += 17) W.col(j) *= 6.0f;
  return W.array() * W.array().abs().sqrt();
}

}  // namespace

TEST_CASE("simd_path names the detected family and force_portable switches to the portable loops and back") {
  const std::string detected = loftq::simd_path();
  CHECK((detected == "avx2+fma" || detected == "neon" || detected == "portable"));
  {
    PortableScope portable;
    CHECK(std::string(loftq::simd_path()) == "portable");
    CHECK_FALSE(loftq::detail::use_avx2());
    CHECK_FALSE(loftq::detail::use_neon());
  }
  CHECK(std::string(loftq::simd_path()) == detected);
  MESSAGE("kernel family: " << detected);
}

TEST_CASE("quantizer codes and scales and values are bit-identical on the detected and the portable path") {
  const Eigen::MatrixXf W = test_matrix(96, 200, 3);
  // Blocks of 60 leave a scalar tail after the vector lanes in every block.
  for (Eigen::Index block : {64, 60})
    for (bool search : {false, true})
      for (int bits : {2, 3, 4}) {
        CAPTURE(block);
        CAPTURE(search);
        CAPTURE(bits);
        const loftq::Quantizer nf{loftq::Quantizer::Kind::normal_float, bits, block};
        loftq::QuantizeOptions opt;
        opt.scale_search = search;
        const loftq::PackedMatrix fast = loftq::quantize(W, nf, opt);
        const auto fast_deq = loftq::fake_quantize(W, nf, opt);
        const auto fast_back = loftq::dequantize<float>(fast);
        PortableScope portable;
        const loftq::PackedMatrix slow = loftq::quantize(W, nf, opt);
        check_same(fast, slow);
        const auto slow_deq = loftq::fake_quantize(W, nf, opt);
        CHECK(same_bits(fast_deq.data(), slow_deq.data(), static_cast<std::size_t>(W.size())));
        const auto slow_back = loftq::dequantize<float>(slow);
        CHECK(same_bits(fast_back.data(), slow_back.data(), static_cast<std::size_t>(W.size())));
      }
  // Uniform (min-max) codes.
  const loftq::Quantizer un{loftq::Quantizer::Kind::uniform, 4, 64};
  const loftq::PackedMatrix fast = loftq::quantize(W, un);
  PortableScope portable;
  check_same(fast, loftq::quantize(W, un));
}

TEST_CASE("the fused pass with a minuend and column-weighted scale search agree bit for bit across paths") {
  // M - q(x), the LoftQ sweep's form, and the data-aware search's weights.
  const Eigen::Index m = 64, n = 136;
  const loftq::RowMatrix<float> X = test_matrix(m, n, 5), M = test_matrix(m, n, 6);
  std::vector<float> weights(static_cast<std::size_t>(n));
  std::mt19937 rng(9);
  for (float& w : weights) w = 0.1f + static_cast<float>(rng() % 1000) / 100.0f;
  const loftq::NormalFloat<4> nf4;
  auto run = [&](bool weighted) {
    loftq::detail::QuantSpec s = loftq::detail::spec_of(nf4);
    s.search = true;
    if (weighted) {
      s.col_weights = weights.data();
      s.cols = n;
    }
    loftq::PackedMatrix P = loftq::detail::make_packed(m, n, s);
    std::vector<float> out(static_cast<std::size_t>(m * n));
    loftq::detail::quantize_flat(X.data(), out.data(), &P, m * n, s, 2, M.data());
    return std::make_pair(P, out);
  };
  for (bool weighted : {false, true}) {
    CAPTURE(weighted);
    const auto fast = run(weighted);
    PortableScope portable;
    const auto slow = run(weighted);
    check_same(fast.first, slow.first);
    CHECK(same_bits(fast.second.data(), slow.second.data(), fast.second.size()));
  }
}

TEST_CASE("skinny products: the vector kernels equal the scalar fused multiply-add loops bit for bit") {
  std::mt19937 rng(11);
  std::normal_distribution<float> g;
  // 8, 12 (of 13), 16 + 4, 16 + 8, 32 + 8: every tile width of the AVX2 (24, 16, 8) and NEON (16, 12, 8, 4) kernels.
  for (std::ptrdiff_t w : {8, 13, 20, 24, 40}) {
    CAPTURE(w);
    const std::ptrdiff_t rows = 37, depth = 301;
    std::vector<float> a(static_cast<std::size_t>(rows * depth)), x(static_cast<std::size_t>(depth * w));
    for (float& v : a) v = g(rng);
    for (float& v : x) v = g(rng);
    std::vector<float> fast(static_cast<std::size_t>(rows * w)), slow(fast.size());
    std::vector<float> fast_t(static_cast<std::size_t>(depth * w)), slow_t(fast_t.size()), y(fast.size());
    for (float& v : y) v = g(rng);
    loftq::detail::skinny_gemm(a.data(), depth, 1, x.data(), w, depth, rows, w, fast.data(), w);
    loftq::detail::skinny_gemm_t(a.data(), depth, rows, depth, y.data(), w, w, fast_t.data(), w);
    PortableScope portable;
    loftq::detail::skinny_gemm(a.data(), depth, 1, x.data(), w, depth, rows, w, slow.data(), w);
    loftq::detail::skinny_gemm_t(a.data(), depth, rows, depth, y.data(), w, w, slow_t.data(), w);
    CHECK(same_bits(fast.data(), slow.data(), fast.size()));
    CHECK(same_bits(fast_t.data(), slow_t.data(), fast_t.size()));
  }
}

TEST_CASE("initialize is bit-identical for 1 and 2 threads on each path and the paths agree to rounding") {
  const Eigen::MatrixXf W = loftq_test::structured(160, 136, 21);
  const loftq::NormalFloat<4> nf4;
  auto run = [&](int threads) {
    loftq::Options o;
    o.rank = 8;
    o.iterations = 3;
    o.threads = threads;
    return loftq::initialize(W, nf4, o);
  };
  const auto fast1 = run(1), fast2 = run(2);
  CHECK(fast1.packed.codes == fast2.packed.codes);
  CHECK(same_bits(fast1.A.data(), fast2.A.data(), static_cast<std::size_t>(fast1.A.size())));
  CHECK(same_bits(fast1.B.data(), fast2.B.data(), static_cast<std::size_t>(fast1.B.size())));
  PortableScope portable;
  const auto slow1 = run(1), slow2 = run(2);
  CHECK(slow1.packed.codes == slow2.packed.codes);
  CHECK(same_bits(slow1.A.data(), slow2.A.data(), static_cast<std::size_t>(slow1.A.size())));
  CHECK(same_bits(slow1.B.data(), slow2.B.data(), static_cast<std::size_t>(slow1.B.size())));
  // Different products round differently, so the iterates drift apart by
  // rounding only: the errors agree closely.
  CHECK(slow1.error() == doctest::Approx(fast1.error()).epsilon(1e-3));
  const Eigen::MatrixXf fast_approx = fast1.Q + fast1.A * fast1.B.transpose();
  const Eigen::MatrixXf slow_approx = slow1.Q + slow1.A * slow1.B.transpose();
  CHECK((fast_approx - slow_approx).norm() <= 1e-2 * W.norm());
}
