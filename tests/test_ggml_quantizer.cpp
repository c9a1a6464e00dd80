// The ggml block quantizers (ggml_quantizer.hpp): ggml's own scale choice on
// inputs with known answers, the fp16 grid of every value, the search never
// losing to ggml's block, and LoftQ with each format.
#include <loftq/loftq.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

namespace {

using RowMatrixF = loftq::RowMatrix<float>;

// IEEE binary16 -> float written out here (not the library's), for the checks.
float half_bits_to_float(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -24) : std::ldexp(static_cast<float>(1024 + m), e - 25);
  return s ? -v : v;
}
bool is_half(float d) {
  // Every finite fp16 value is an 11-bit integer times 2^k, k >= -24.
  if (d == 0.0f) return true;
  int e;
  std::frexp(std::fabs(d), &e);  // |d| < 2^e
  const float q = std::ldexp(std::fabs(d), -std::max(e - 11, -24));
  return std::fabs(d) <= 65504.0f && q == std::floor(q);
}

RowMatrixF random_matrix(int m, int n, unsigned seed, float scale = 0.02f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> N(0.0f, scale);
  RowMatrixF W(m, n);
  for (int i = 0; i < W.size(); ++i) W.data()[i] = N(g);
  return W;
}

double sq_err(const RowMatrixF& a, const RowMatrixF& b) { return (a - b).cast<double>().squaredNorm(); }

template <class Q>
void check_grid(const RowMatrixF& W, const Q& q, bool search) {
  loftq::QuantizeOptions o;
  o.scale_search = search;
  const loftq::PackedMatrix P = loftq::quantize(W, q, o);
  const RowMatrixF F = loftq::fake_quantize(W, q, o);
  const RowMatrixF D = loftq::dequantize(P);
  REQUIRE(F.size() == D.size());
  CHECK(std::memcmp(F.data(), D.data(), sizeof(float) * static_cast<std::size_t>(F.size())) == 0);
  for (std::size_t b = 0; b < P.scales.size(); ++b) CHECK(is_half(P.scales[b]));
}

}  // namespace

TEST_CASE("Q4_0, ggml's choice: d = max / -8, codes trunc(x / d + 8.5) clamped to 15") {
  RowMatrixF W(1, 32);
  for (int j = 0; j < 32; ++j) W(0, j) = static_cast<float>(j - 16);  // max = -16, d = 2
  loftq::QuantizeOptions o;
  o.scale_search = false;
  const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQ4_0{}, o);
  CHECK(P.scales[0] == 2.0f);
  const RowMatrixF Q = loftq::dequantize(P);
  for (int j = 0; j < 32; ++j) {
    const float x = static_cast<float>(j - 16);
    const int c = std::min(15, static_cast<int>(x * 0.5f + 8.5f));
    CHECK(Q(0, j) == 2.0f * static_cast<float>(c - 8));
  }
  CHECK(Q(0, 0) == -16.0f);
  CHECK(Q(0, 31) == 14.0f);  // 15 would need code 15.5: clamped
}

TEST_CASE("Q8_0, ggml's choice: integers up to 127 come back exactly") {
  RowMatrixF W(2, 32);
  for (int j = 0; j < 64; ++j) W.data()[j] = static_cast<float>((j * 37) % 255 - 127);
  W(0, 5) = 127.0f;
  W(1, 7) = -127.0f;
  loftq::QuantizeOptions o;
  o.scale_search = false;
  const RowMatrixF Q = loftq::fake_quantize(W, loftq::GgmlQ8_0{}, o);
  CHECK(std::memcmp(Q.data(), W.data(), sizeof(float) * 64) == 0);
}

TEST_CASE("IQ4_NL, ggml's choice: a block on the grid at an fp16 scale comes back exactly") {
  RowMatrixF W(1, 64);
  for (int j = 0; j < 64; ++j) W(0, j) = 0.5f * loftq::kIq4nlValues[static_cast<std::size_t>((j * 7) % 16)];
  loftq::QuantizeOptions o;
  o.scale_search = false;
  const RowMatrixF Q = loftq::fake_quantize(W, loftq::GgmlIQ4NL{}, o);
  CHECK(std::memcmp(Q.data(), W.data(), sizeof(float) * 64) == 0);
  // A zero block: d = 0, every value +0.
  const RowMatrixF Z = loftq::fake_quantize(RowMatrixF::Zero(1, 32), loftq::GgmlIQ4NL{}, o);
  for (int j = 0; j < 32; ++j) CHECK((Z(0, j) == 0.0f && !std::signbit(Z(0, j))));
}

TEST_CASE("every value is fp16(d) * level, and quantize/fake_quantize/dequantize agree bit for bit") {
  const RowMatrixF W = random_matrix(7, 96, 3);
  for (bool search : {false, true}) {
    check_grid(W, loftq::GgmlQ4_0{}, search);
    check_grid(W, loftq::GgmlQ8_0{}, search);
    check_grid(W, loftq::GgmlIQ4NL{}, search);
  }
  // Odd shapes: the last block is shorter.
  check_grid(random_matrix(3, 45, 4), loftq::GgmlIQ4NL{}, true);
  check_grid(random_matrix(5, 7, 5), loftq::GgmlQ4_0{}, false);
}

TEST_CASE("the searched scale never loses to ggml's block, block by block") {
  const RowMatrixF W = random_matrix(16, 256, 9);
  auto per_block = [](const RowMatrixF& X, const RowMatrixF& Q, int b) {
    double e = 0;
    for (int j = 0; j < 32; ++j) {
      const double d = static_cast<double>(X.data()[b * 32 + j]) - Q.data()[b * 32 + j];
      e += d * d;
    }
    return e;
  };
  auto run = [&](const auto& q) {
    loftq::QuantizeOptions plain, search;
    plain.scale_search = false;
    search.scale_search = true;
    const RowMatrixF A = loftq::fake_quantize(W, q, plain), B = loftq::fake_quantize(W, q, search);
    int better = 0;
    for (int b = 0; b < W.size() / 32; ++b) {
      CHECK(per_block(W, B, b) <= per_block(W, A, b));
      better += per_block(W, B, b) < per_block(W, A, b);
    }
    CHECK(better > 0);
    return sq_err(W, B) / sq_err(W, A);
  };
  MESSAGE("searched / ggml squared error: q4_0 " << run(loftq::GgmlQ4_0{}) << ", iq4_nl " << run(loftq::GgmlIQ4NL{})
                                                 << ", q8_0 " << run(loftq::GgmlQ8_0{}));
}

TEST_CASE("LoftQ in each format: Q is the format's, beats q(W), and does not depend on threads") {
  const RowMatrixF W = random_matrix(64, 96, 11) + random_matrix(64, 4, 12, 0.5f) * random_matrix(4, 96, 13, 0.5f);
  loftq::Options opt;
  opt.rank = 4;
  opt.iterations = 3;
  auto run = [&](const auto& q) {
    opt.threads = 1;
    const auto r1 = loftq::initialize(W, q, opt);
    opt.threads = 2;
    const auto r2 = loftq::initialize(W, q, opt);
    CHECK(std::memcmp(r1.Q.data(), r2.Q.data(), sizeof(float) * static_cast<std::size_t>(W.size())) == 0);
    CHECK(r1.packed.codes == r2.packed.codes);
    const RowMatrixF D = loftq::dequantize(r1.packed);
    CHECK(std::memcmp(r1.Q.data(), D.data(), sizeof(float) * static_cast<std::size_t>(W.size())) == 0);
    CHECK(r1.error() < r1.qlora_error);
    for (float s : r1.packed.scales) CHECK(is_half(s));
  };
  run(loftq::GgmlQ4_0{});
  run(loftq::GgmlQ8_0{});
  run(loftq::GgmlIQ4NL{});
  run(loftq::GgmlQuantizer(loftq::GgmlFormat::iq4_nl));
  opt.scale_search = false;
  run(loftq::GgmlIQ4NL{});
}

TEST_CASE("fp16 helpers used by the tests agree with the library's conversion") {
  for (std::uint32_t h = 0; h < 0x7c00u; h += 7) {
    const float f = half_bits_to_float(static_cast<std::uint16_t>(h));
    CHECK(loftq::detail::half_to_float(static_cast<std::uint16_t>(h)) == f);
    CHECK(loftq::detail::float_to_half(f) == h);
    CHECK(is_half(f));
  }
  CHECK_FALSE(is_half(0.1f));
}

TEST_CASE("data-aware LoftQ in a ggml format: Q is the format's, and the output error beats q(W)") {
  const RowMatrixF W = random_matrix(32, 64, 21);
  RowMatrixF X = random_matrix(200, 64, 22, 1.0f);
  for (int j = 0; j < 8; ++j) X.col(j) *= 10.0f;  // a few loud input channels
  for (auto mode : {loftq::StatsMode::full, loftq::StatsMode::diagonal}) {
    loftq::InputStatistics stats(64, mode);
    stats.add(X);
    loftq::Options opt;
    opt.rank = 4;
    opt.iterations = 3;
    const auto r = loftq::initialize(W, loftq::GgmlIQ4NL{}, stats, opt);
    const RowMatrixF D = loftq::dequantize(r.packed);
    CHECK(std::memcmp(r.Q.data(), D.data(), sizeof(float) * static_cast<std::size_t>(W.size())) == 0);
    for (float s : r.packed.scales) CHECK(is_half(s));
    CHECK(r.error() < r.qlora_error);
  }
}
