// loftq/bnb_double_quant.hpp: bitsandbytes' nested quantization of block
// scales. The reader's arithmetic (dequantize_blockwise, then + offset, each in
// fp32) is written out here again, and the encoder's choices are checked
// against every one of the 256 codes.
#include <doctest/doctest.h>

#include <loftq/bnb_double_quant.hpp>
#include <loftq/double_quant.hpp>
#include <loftq/initialize.hpp>
#include <loftq/quantizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "support.hpp"

using loftq::BnbNestedScales;
using loftq_test::code_of;

namespace {

// create_dynamic_map() as torch 1.13 (CPU) computes it, fp32 bit patterns.
const std::uint32_t kTorchDynamicMap[256] = {
    0xbf7e3333u, 0xbf7a9999u, 0xbf770000u, 0xbf736666u, 0xbf6fccccu, 0xbf6c3333u, 0xbf68999au, 0xbf650000u, 0xbf616666u,
    0xbf5dccccu, 0xbf5a3333u, 0xbf569999u, 0xbf530000u, 0xbf4f6666u, 0xbf4bccccu, 0xbf483333u, 0xbf44999au, 0xbf410000u,
    0xbf3d6667u, 0xbf39cccdu, 0xbf363334u, 0xbf32999au, 0xbf2f0000u, 0xbf2b6667u, 0xbf27cccdu, 0xbf243333u, 0xbf20999au,
    0xbf1d0000u, 0xbf196666u, 0xbf15cccdu, 0xbf123334u, 0xbf0e999au, 0xbf0b0000u, 0xbf076666u, 0xbf03cccdu, 0xbf003333u,
    0xbef93334u, 0xbef20000u, 0xbeeaccccu, 0xbee3999au, 0xbedc6666u, 0xbed53332u, 0xbece0000u, 0xbec6ccccu, 0xbebf999au,
    0xbeb86666u, 0xbeb13332u, 0xbeaa0000u, 0xbea2ccccu, 0xbe9b999au, 0xbe946666u, 0xbe8d3334u, 0xbe860000u, 0xbe7d999au,
    0xbe6f3334u, 0xbe60cccdu, 0xbe526666u, 0xbe440000u, 0xbe359999u, 0xbe273333u, 0xbe18cccdu, 0xbe0a6666u, 0xbdf80000u,
    0xbddb3334u, 0xbdc9eb85u, 0xbdc428f5u, 0xbdbe6667u, 0xbdb8a3d7u, 0xbdb2e148u, 0xbdad1eb8u, 0xbda75c28u, 0xbda1999au,
    0xbd9bd70au, 0xbd96147bu, 0xbd9051ebu, 0xbd8a8f5du, 0xbd84cccdu, 0xbd7e147au, 0xbd728f5du, 0xbd670a3du, 0xbd5b851fu,
    0xbd500000u, 0xbd447ae1u, 0xbd38f5c3u, 0xbd2d70a3u, 0xbd21eb85u, 0xbd166667u, 0xbd0ae147u, 0xbcfeb852u, 0xbce7ae13u,
    0xbcd0a3d7u, 0xbcb9999au, 0xbca28f5cu, 0xbc8b851fu, 0xbc68f5c3u, 0xbc3ae148u, 0xbc1f3b64u, 0xbc160418u, 0xbc0ccccdu,
    0xbc039581u, 0xbbf4bc6au, 0xbbe24dd3u, 0xbbcfdf3bu, 0xbbbd70a4u, 0xbbab020du, 0xbb989374u, 0xbb8624ddu, 0xbb676c8au,
    0xbb428f5cu, 0xbb1db22du, 0xbaf1a9fcu, 0xbaa7ef9du, 0xba7765ffu, 0xba59e83eu, 0xba3c6a80u, 0xba1eecc1u, 0xba016f01u,
    0xb9c7e283u, 0xb98ce705u, 0xb923d70bu, 0xb8ba1f4bu, 0xb88aefb3u, 0xb8378034u, 0xb7b24206u, 0xb70205ffu, 0xb65a1a94u,
    0xb513a3b7u, 0x00000000u, 0x3513a3b7u, 0x365a1a94u, 0x370205ffu, 0x37b24206u, 0x38378034u, 0x388aefb3u, 0x38ba1f4bu,
    0x3923d70bu, 0x398ce705u, 0x39c7e283u, 0x3a016f01u, 0x3a1eecc1u, 0x3a3c6a80u, 0x3a59e83eu, 0x3a7765ffu, 0x3aa7ef9du,
    0x3af1a9fcu, 0x3b1db22du, 0x3b428f5cu, 0x3b676c8au, 0x3b8624ddu, 0x3b989374u, 0x3bab020du, 0x3bbd70a4u, 0x3bcfdf3bu,
    0x3be24dd3u, 0x3bf4bc6au, 0x3c039581u, 0x3c0ccccdu, 0x3c160418u, 0x3c1f3b64u, 0x3c3ae148u, 0x3c68f5c3u, 0x3c8b851fu,
    0x3ca28f5cu, 0x3cb9999au, 0x3cd0a3d7u, 0x3ce7ae13u, 0x3cfeb852u, 0x3d0ae147u, 0x3d166667u, 0x3d21eb85u, 0x3d2d70a3u,
    0x3d38f5c3u, 0x3d447ae1u, 0x3d500000u, 0x3d5b851fu, 0x3d670a3du, 0x3d728f5du, 0x3d7e147au, 0x3d84cccdu, 0x3d8a8f5du,
    0x3d9051ebu, 0x3d96147bu, 0x3d9bd70au, 0x3da1999au, 0x3da75c28u, 0x3dad1eb8u, 0x3db2e148u, 0x3db8a3d7u, 0x3dbe6667u,
    0x3dc428f5u, 0x3dc9eb85u, 0x3ddb3334u, 0x3df80000u, 0x3e0a6666u, 0x3e18cccdu, 0x3e273333u, 0x3e359999u, 0x3e440000u,
    0x3e526666u, 0x3e60cccdu, 0x3e6f3334u, 0x3e7d999au, 0x3e860000u, 0x3e8d3334u, 0x3e946666u, 0x3e9b999au, 0x3ea2ccccu,
    0x3eaa0000u, 0x3eb13332u, 0x3eb86666u, 0x3ebf999au, 0x3ec6ccccu, 0x3ece0000u, 0x3ed53332u, 0x3edc6666u, 0x3ee3999au,
    0x3eeaccccu, 0x3ef20000u, 0x3ef93334u, 0x3f003333u, 0x3f03cccdu, 0x3f076666u, 0x3f0b0000u, 0x3f0e999au, 0x3f123334u,
    0x3f15cccdu, 0x3f196666u, 0x3f1d0000u, 0x3f20999au, 0x3f243333u, 0x3f27cccdu, 0x3f2b6667u, 0x3f2f0000u, 0x3f32999au,
    0x3f363334u, 0x3f39cccdu, 0x3f3d6667u, 0x3f410000u, 0x3f44999au, 0x3f483333u, 0x3f4bccccu, 0x3f4f6666u, 0x3f530000u,
    0x3f569999u, 0x3f5a3333u, 0x3f5dccccu, 0x3f616666u, 0x3f650000u, 0x3f68999au, 0x3f6c3333u, 0x3f6fccccu, 0x3f736666u,
    0x3f770000u, 0x3f7a9999u, 0x3f7e3333u, 0x3f800000u,
};

float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// What bitsandbytes' reader makes of code c in a nested block of absmax amax.
float reader_value(std::uint8_t c, float amax, float offset) {
  volatile float prod = bits_to_float(kTorchDynamicMap[c]) * amax;
  return prod + offset;
}

// Block scales as a 4-bit absmax quantizer leaves them: positive, a few large,
// some exactly zero (all-zero blocks).
std::vector<float> spread_scales(std::size_t n, std::uint64_t seed) {
  const Eigen::MatrixXf g = loftq_test::gaussian(static_cast<Eigen::Index>(n), 1, seed);
  std::vector<float> s(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float x = std::abs(g(static_cast<Eigen::Index>(i), 0));
    s[i] = i % 97 == 5 ? 0.0f : 0.02f * x * (i % 31 == 0 ? 9.0f : 1.0f);
  }
  return s;
}

}  // namespace

TEST_CASE("bnb dynamic map: create_dynamic_map() as torch builds it, bit for bit") {
  const std::vector<float>& map = loftq::bnb_dynamic_map();
  REQUIRE(map.size() == 256);
  for (std::size_t i = 0; i < 256; ++i) CHECK(float_bits(map[i]) == kTorchDynamicMap[i]);
  CHECK(bits_to_float(kTorchDynamicMap[255]) == 1.0f);
  CHECK(std::is_sorted(map.begin(), map.end()));
  // Signed map: 127 negative values mirrored by 127 positive ones, then 0 and 1.
  CHECK(std::count(map.begin(), map.end(), 0.0f) == 1);
  for (std::size_t i = 0; i < 127; ++i) CHECK(map[i] == -map[254 - i]);
}

TEST_CASE("bnb nested scales: the layout bitsandbytes stores, each code the nearest the reader allows") {
  for (const std::size_t n : {std::size_t{1}, std::size_t{255}, std::size_t{256}, std::size_t{700}}) {
    CAPTURE(n);
    const std::vector<float> s = spread_scales(n, 40 + n);
    const BnbNestedScales D = loftq::bnb_double_quantize_scales(s);
    REQUIRE(D.codes.size() == n);
    REQUIRE(D.absmax.size() == (n + 255) / 256);
    double sum = 0;
    for (float x : s) sum += x;
    CHECK(D.offset == static_cast<float>(sum / static_cast<double>(n)));
    for (std::size_t k = 0; k < D.absmax.size(); ++k) {
      float amax = 0.0f;
      for (std::size_t i = 256 * k; i < std::min(n, 256 * k + 256); ++i)
        amax = std::max(amax, std::abs(s[i] - D.offset));
      CHECK(D.absmax[k] == amax);
    }
    const std::vector<float> rec = loftq::recover_scales(D);
    std::size_t not_nearest = 0, not_read_back = 0, sign_flips = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float amax = D.absmax[i / 256];
      const float v = reader_value(D.codes[i], amax, D.offset);
      not_read_back += float_bits(rec[i]) != float_bits(v) || float_bits(D.scale(i)) != float_bits(v);
      sign_flips += s[i] > 0.0f ? !(v > 0.0f) : !(v >= 0.0f);
      // Brute force: no code the reader turns into an admissible scale comes closer.
      float best = std::numeric_limits<float>::infinity();
      for (int c = 0; c < 256; ++c) {
        const float w = reader_value(static_cast<std::uint8_t>(c), amax, D.offset);
        if (s[i] > 0.0f ? w > 0.0f : w >= 0.0f) best = std::min(best, std::abs(w - s[i]));
      }
      not_nearest += std::abs(v - s[i]) != best;
    }
    CHECK(not_read_back == 0);
    CHECK(sign_flips == 0);
    CHECK(not_nearest == 0);
  }
}

TEST_CASE("bnb nested scales: equal scales are recovered exactly, a zero scale as zero") {
  // All equal: every deviation from the mean is 0, the absmax is 0 and the
  // code is the map's 0, so each scale is the offset itself.
  const BnbNestedScales D = loftq::bnb_double_quantize_scales(std::vector<float>(300, 0.125f));
  CHECK(D.offset == 0.125f);
  CHECK(D.absmax == std::vector<float>{0.0f, 0.0f});
  for (std::uint8_t c : D.codes) CHECK(loftq::bnb_dynamic_map()[c] == 0.0f);
  for (float r : loftq::recover_scales(D)) CHECK(r == 0.125f);
  const BnbNestedScales Z = loftq::bnb_double_quantize_scales({0.0f, 0.0f, 0.0f});
  for (float r : loftq::recover_scales(Z)) CHECK(float_bits(r) == float_bits(0.0f));
}

TEST_CASE("bnb nested scales: positive scales stay positive near a large mean") {
  std::vector<float> s(600);
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = i % 50 == 0 ? 2.0f : 0.001f * static_cast<float>(1 + i % 7);
  s[3] = 0.0f;
  const BnbNestedScales D = loftq::bnb_double_quantize_scales(s);
  REQUIRE(D.absmax.size() == 3);
  const std::vector<float> rec = loftq::recover_scales(D);
  for (std::size_t i = 0; i < s.size(); ++i) {
    CAPTURE(i);
    CHECK(rec[i] >= 0.0f);
    if (s[i] > 0.0f) CHECK(rec[i] > 0.0f);
  }
}

TEST_CASE("bnb nested scales: bad input is refused with its error code") {
  CHECK(code_of([] { (void)loftq::bnb_double_quantize_scales({1.0f, -1.0f}); }) == loftq::Errc::invalid_argument);
  CHECK(code_of([] { (void)loftq::bnb_double_quantize_scales({}); }) == loftq::Errc::invalid_argument);
  CHECK(code_of([] { (void)loftq::bnb_double_quantize_scales({1.0f, std::nanf("")}); }) == loftq::Errc::non_finite);
  CHECK(code_of([] { (void)loftq::bnb_double_quantize_scales({INFINITY}); }) == loftq::Errc::non_finite);
  BnbNestedScales D = loftq::bnb_double_quantize_scales(std::vector<float>(257, 1.0f));
  D.absmax.pop_back();  // 257 codes need two nested blocks
  CHECK(code_of([&] { (void)loftq::recover_scales(D); }) == loftq::Errc::invalid_argument);
}

TEST_CASE("bnb_double_quantize(W, result): the stored bits and the scales bitsandbytes recovers") {
  const Eigen::MatrixXf W = loftq_test::structured(96, 128, 7);
  loftq::Options opt;
  opt.rank = 4;
  opt.iterations = 2;
  const loftq::Quantizer nf4(loftq::Quantizer::Kind::normal_float, 4, 64);
  loftq::Result<float> r = loftq::initialize(W, nf4, opt);
  const std::vector<float> before = r.packed.scales;
  BnbNestedScales nested;
  const loftq::DoubleQuantEffect eff = loftq::bnb_double_quantize(W, r, nested, opt);
  CHECK(nested.codes.size() == before.size());
  CHECK(r.packed.scales == loftq::recover_scales(nested));
  CHECK(!r.packed.double_quantized());  // the recovered fp32 scales, not this project's int8 scheme
  // 96 x 128 weights: 4 bits each, one byte per 64-weight block, one fp32
  // nested absmax (192 blocks < 256) and the fp32 offset.
  const double n = 96.0 * 128.0;
  CHECK(eff.bits_per_weight_after == (4.0 * n + 8.0 * (n / 64) + 32.0 * 2) / n);
  CHECK(eff.bits_per_weight_after < eff.bits_per_weight_before);
  CHECK(r.error() == eff.error_after);
  CHECK(eff.error_after <= eff.error_rounded);

  // Minmax scales, or scales already in this project's int8 scheme: refused.
  BnbNestedScales other;
  loftq::Result<float> asym =
      loftq::initialize(W, loftq::Quantizer(loftq::Quantizer::Kind::uniform, 4, 64, false), opt);
  CHECK(code_of([&] { (void)loftq::bnb_double_quantize(W, asym, other, opt); }) == loftq::Errc::unsupported);
  loftq::Result<float> dq = loftq::initialize(W, nf4, opt);
  (void)loftq::double_quantize(W, dq, opt);
  CHECK(code_of([&] { (void)loftq::bnb_double_quantize(W, dq, other, opt); }) == loftq::Errc::invalid_argument);
}
