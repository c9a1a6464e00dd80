#include <doctest/doctest.h>

#include <functional>
#include <vector>

#include <loftq/quantizer.hpp>
#include <random>

#include "support.hpp"

using loftq::PackedMatrix;

TEST_CASE("documented bit order: LSB first") {
  Eigen::Matrix<float, 1, 8> W;
  W << 1.0f, -1.0f, 0.0f, 1.0f, -1.0f, -1.0f, 1.0f, 0.0f;
  // NF2 levels {-1, 0, 0.3379, 1}: codes 3 0 1 3 0 0 3 1.
  const auto P2 = loftq::quantize(W, loftq::NormalFloat<2>{});
  REQUIRE(P2.codes.size() == 2);
  CHECK(P2.codes[0] == (3 | 0 << 2 | 1 << 4 | 3 << 6));
  CHECK(P2.codes[1] == (0 | 0 << 2 | 3 << 4 | 1 << 6));
  // NF4: -1 is code 0, 0 is code 7, 1 is code 15; element 2k is the low nibble.
  const auto P4 = loftq::quantize(W, loftq::NormalFloat<4>{});
  REQUIRE(P4.codes.size() == 4);
  CHECK(P4.codes[0] == (15 | 0 << 4));
  CHECK(P4.codes[1] == (7 | 15 << 4));
  // NF3: -1 is 0, 0 is 3, 1 is 7; a dense 24-bit stream.
  const auto P3 = loftq::quantize(W, loftq::NormalFloat<3>{});
  REQUIRE(P3.codes.size() == 3);
  const std::uint32_t stream = P3.codes[0] | P3.codes[1] << 8 | P3.codes[2] << 16;
  const int expect[8] = {7, 0, 3, 7, 0, 0, 7, 3};
  for (int e = 0; e < 8; ++e) CHECK(static_cast<int>((stream >> (3 * e)) & 7) == expect[e]);
  for (int e = 0; e < 8; ++e) CHECK(P3.code(e) == expect[e]);
}

TEST_CASE("pack/unpack round trip for every width and start offset") {
  std::mt19937 g(1);
  for (int bits = 1; bits <= 8; ++bits) {
    for (std::int64_t first : {0, 1, 3, 8, 13}) {
      const std::int64_t n = 1001;
      std::vector<std::uint8_t> codes(n), back(n);
      for (auto& c : codes) c = static_cast<std::uint8_t>(g() & ((1u << bits) - 1));
      std::vector<std::uint8_t> stream(loftq::detail::packed_bytes(first + n, bits), 0);
      loftq::detail::pack_codes(stream.data(), first, codes.data(), n, bits);
      loftq::detail::unpack_codes(stream.data(), stream.size(), first, back.data(), n, bits);
      CHECK(back == codes);
      // Nothing before `first` was touched.
      for (std::int64_t b = 0; b < first * bits / 8; ++b) CHECK(stream[static_cast<std::size_t>(b)] == 0);
    }
  }
}

TEST_CASE("storage size: bits plus 32 bits of scale per block") {
  const Eigen::MatrixXf W = loftq_test::gaussian(128, 256, 2);
  for (int bits : {2, 3, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits, 64);
    const auto P = loftq::quantize(W, q);
    CHECK(P.codes.size() == static_cast<std::size_t>(128 * 256 * bits / 8));
    CHECK(P.bits_per_weight() == doctest::Approx(bits + 32.0 / 64));
  }
}

TEST_CASE("dequantize validates a PackedMatrix before trusting it") {
  const Eigen::MatrixXf W = loftq_test::gaussian(8, 64, 3);
  const auto good = loftq::quantize(W, loftq::NormalFloat<4>{});
  // Each corruption alone makes the matrix inconsistent.
  const std::vector<std::function<void(PackedMatrix&)>> corruptions = {
      [](PackedMatrix& P) { P.codes.pop_back(); },
      [](PackedMatrix& P) { P.scales.push_back(1.0f); },
      [](PackedMatrix& P) { P.block_size = 0; },
      [](PackedMatrix& P) { P.bits = 3; },
      [](PackedMatrix& P) { P.codebook.resize(4); },
      [](PackedMatrix& P) { P.rows = 9; },
      [](PackedMatrix& P) { P.mins.assign(P.scales.size(), 0.0f); },
  };
  for (const auto& corrupt : corruptions) {
    PackedMatrix P = good;
    corrupt(P);
    CHECK_THROWS_AS(loftq::dequantize(P), loftq::Error);
  }
  CHECK(loftq::dequantize(good) == loftq::fake_quantize(W, loftq::NormalFloat<4>{}));
}
