#include <doctest/doctest.h>

#include <cmath>
#include <loftq/codebook.hpp>
#include <random>

using loftq::normal_float_codebook;

TEST_CASE("NF4 equals the bitsandbytes constants bit for bit") {
  const float bnb[16] = {-1.0f,
                         -0.6961928009986877f,
                         -0.5250730514526367f,
                         -0.39491748809814453f,
                         -0.28444138169288635f,
                         -0.18477343022823334f,
                         -0.09105003625154495f,
                         0.0f,
                         0.07958029955625534f,
                         0.16093020141124725f,
                         0.24611230194568634f,
                         0.33791524171829224f,
                         0.44070982933044434f,
                         0.5626170039176941f,
                         0.7229568362236023f,
                         1.0f};
  const auto& t = normal_float_codebook(4);
  REQUIRE(t.size() == 16);
  for (int i = 0; i < 16; ++i) {
    CHECK(std::abs(t[i] - bnb[i]) <= 1e-6f);
    CHECK(t[i] == bnb[i]);  // the reference's float32 arithmetic, reproduced exactly
  }
}

TEST_CASE("NF2 and NF3 match the reference values") {
  const auto& t2 = normal_float_codebook(2);
  REQUIRE(t2.size() == 4);
  CHECK(t2[0] == -1.0f);
  CHECK(t2[1] == 0.0f);
  CHECK(t2[2] == doctest::Approx(0.337915).epsilon(1e-6));
  CHECK(t2[3] == 1.0f);
  const float nf3[8] = {-1.0f, -0.478629f, -0.217142f, 0.0f, 0.16093f, 0.337915f, 0.562617f, 1.0f};
  const auto& t3 = normal_float_codebook(3);
  REQUIRE(t3.size() == 8);
  for (int i = 0; i < 8; ++i) CHECK(t3[i] == doctest::Approx(nf3[i]).epsilon(2e-6));
}

TEST_CASE("NF tables are sorted, span [-1, 1] and contain an exact zero for every width") {
  for (int b = 2; b <= 8; ++b) {
    const auto& t = normal_float_codebook(b);
    REQUIRE(t.size() == (std::size_t{1} << b));
    CHECK(t.front() == -1.0f);
    CHECK(t.back() == 1.0f);
    CHECK(std::is_sorted(t.begin(), t.end()));
    CHECK(std::adjacent_find(t.begin(), t.end()) == t.end());
    CHECK(std::count(t.begin(), t.end(), 0.0f) == 1);
    // Asymmetric: one more positive level than negative ones.
    CHECK(std::count_if(t.begin(), t.end(), [](float x) { return x > 0; }) ==
          std::count_if(t.begin(), t.end(), [](float x) { return x < 0; }) + 1);
  }
}

TEST_CASE("inverse normal CDF agrees with the forward CDF to double precision") {
  for (double p : {1e-10, 1e-5, 0.01, 0.02425, 0.1, 0.3, 0.5, 0.7, 0.9677083, 0.99, 1 - 1e-7}) {
    const double x = loftq::detail::inv_norm_cdf(p);
    const double back = 0.5 * std::erfc(-x / std::sqrt(2.0));
    CHECK(std::abs(back - p) <= 1e-14 * std::max(1.0, p / 1e-3) + 1e-15 * p / 1e-10);
  }
  CHECK(loftq::detail::inv_norm_cdf(0.5) == 0.0);
  CHECK(loftq::detail::inv_norm_cdf(0.975) == doctest::Approx(1.959963984540054).epsilon(1e-15));
}

TEST_CASE("uniform codebooks") {
  for (int b = 2; b <= 8; ++b) {
    const auto& s = loftq::uniform_codebook(b, true);
    const auto& a = loftq::uniform_codebook(b, false);
    const int L = 1 << b;
    REQUIRE(static_cast<int>(s.size()) == L);
    CHECK(s.front() == -1.0f);
    CHECK(s.back() == 1.0f);
    CHECK(a.front() == 0.0f);
    CHECK(a.back() == 1.0f);
    for (int i = 0; i < L; ++i) {
      CHECK(s[i] == -s[L - 1 - i]);
      CHECK(a[i] == doctest::Approx(static_cast<double>(i) / (L - 1)).epsilon(1e-7));
    }
  }
}

TEST_CASE("unsupported widths are rejected with a typed error") {
  for (int b : {-1, 0, 1, 9, 16}) {
    CHECK_THROWS_AS(normal_float_codebook(b), loftq::Error);
    CHECK_THROWS_AS(loftq::uniform_codebook(b, true), loftq::Error);
  }
  try {
    normal_float_codebook(9);
  } catch (const loftq::Error& e) {
    CHECK(e.code() == loftq::Errc::unsupported);
  }
}

TEST_CASE("decision thresholds reproduce the brute-force argmin on every float near each boundary") {
  for (int b = 2; b <= 4; ++b) {
    const auto& t = normal_float_codebook(b);
    const auto thr = loftq::detail::decision_thresholds<float>(t);
    REQUIRE(thr.size() == t.size() - 1);
    auto brute = [&](float y) {
      int best = 0;
      for (int i = 1; i < static_cast<int>(t.size()); ++i)
        if (std::abs(y - t[i]) < std::abs(y - t[best])) best = i;
      return best;
    };
    auto count = [&](float y) {
      int c = 0;
      for (float th : thr) c += y >= th;
      return c;
    };
    for (std::size_t i = 0; i < thr.size(); ++i) {
      float y = thr[i];
      for (int k = 0; k < 64; ++k) y = std::nextafter(y, -2.0f);
      for (int k = 0; k < 128; ++k, y = std::nextafter(y, 2.0f)) REQUIRE(count(y) == brute(y));
      const float mid = (t[i] + t[i + 1]) / 2;  // the exact float midpoint
      CHECK(count(mid) == brute(mid));
    }
  }
}
