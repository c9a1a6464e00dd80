#include <doctest/doctest.h>

#include <loftq/mixed_precision.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "support.hpp"
#include "support/time_bound.hpp"

using loftq::BitAllocation;
using loftq::MatrixErrors;

namespace {

struct Brute {
  double error = INFINITY;
  std::vector<int> bits;
};

// Every assignment, feasibility checked in exact integer bits.
Brute brute_force(const std::vector<MatrixErrors>& mats, const std::vector<int>& cand, double budget) {
  const std::size_t K = mats.size(), J = cand.size();
  std::int64_t total = 0;
  for (const auto& m : mats) total += m.numel;
  Brute best;
  std::vector<std::size_t> idx(K, 0);
  for (;;) {
    std::int64_t bits = 0;
    double err = 0;
    for (std::size_t i = 0; i < K; ++i) {
      bits += mats[i].numel * cand[idx[i]];
      err += mats[i].sq_error[idx[i]];
    }
    if (static_cast<double>(bits) <= budget * static_cast<double>(total) && err < best.error) {
      best.error = err;
      best.bits.clear();
      for (std::size_t i = 0; i < K; ++i) best.bits.push_back(cand[idx[i]]);
    }
    std::size_t i = 0;
    while (i < K && ++idx[i] == J) idx[i++] = 0;
    if (i == K) break;
  }
  return best;
}

double avg_bits(const std::vector<MatrixErrors>& mats, const std::vector<int>& bits) {
  double b = 0, n = 0;
  for (std::size_t i = 0; i < mats.size(); ++i) {
    b += static_cast<double>(mats[i].numel) * bits[i];
    n += static_cast<double>(mats[i].numel);
  }
  return b / n;
}

// Random instances: element counts that share factors or not, errors that
// fall with the width (as LoftQ's do) or are arbitrary.
std::vector<MatrixErrors> random_instance(std::mt19937_64& g, std::size_t K, std::size_t J, bool monotone) {
  std::uniform_int_distribution<int> kind(0, 2), small(1, 40);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<MatrixErrors> mats(K);
  for (auto& m : mats) {
    const int k = kind(g);
    m.numel = k == 0 ? 64 * small(g) : k == 1 ? small(g) * small(g) : 4096;
    double e = 1 + 100 * u(g);
    for (std::size_t j = 0; j < J; ++j) {
      m.sq_error.push_back(monotone ? e : 100 * u(g));
      e *= 0.2 + 0.6 * u(g);
    }
  }
  return mats;
}

}  // namespace

TEST_CASE("allocate_bits: equals brute-force enumeration") {
  std::mt19937_64 g(42);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const std::vector<std::vector<int>> cands = {{2, 3, 4}, {2, 4, 8}, {2, 3}, {1, 2, 3, 4}};
  int cases = 0;
  for (const auto& cand : cands)
    for (std::size_t K = 1; K <= (cand.size() > 3 ? 6u : 7u); ++K)
      for (int rep = 0; rep < 25; ++rep) {
        const auto mats = random_instance(g, K, cand.size(), rep % 3 != 0);
        double budget = cand.front() + (cand.back() - cand.front()) * u(g);
        if (rep == 1) budget = cand.front();
        if (rep == 2) budget = cand.back();
        const BitAllocation a = loftq::allocate_bits(mats, cand, budget);
        const Brute b = brute_force(mats, cand, budget);
        CAPTURE(K);
        CAPTURE(budget);
        REQUIRE(a.exact);
        CHECK(a.gap_bits == 0.0);
        CHECK(a.average_bits <= budget);
        CHECK(a.average_bits == doctest::Approx(avg_bits(mats, a.bits)));
        CHECK(a.total_sq_error == doctest::Approx(b.error).epsilon(1e-12));
        double err = 0;
        for (std::size_t i = 0; i < K; ++i) {
          const auto it = std::find(cand.begin(), cand.end(), a.bits[i]);
          REQUIRE(it != cand.end());
          err += mats[i].sq_error[static_cast<std::size_t>(it - cand.begin())];
        }
        CHECK(err == doctest::Approx(a.total_sq_error).epsilon(1e-12));
        ++cases;
      }
  CHECK(cases > 500);
}

TEST_CASE("allocate_bits: a coarsened table stays within its reported gap") {
  // max_cells far below the exact table forces coarse units: the result must
  // still meet the budget, and be at least as good as the exact optimum for
  // the budget lowered by gap_bits.
  std::mt19937_64 g(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const std::vector<int> cand = {2, 3, 4};
  int coarse = 0;
  for (int rep = 0; rep < 200; ++rep) {
    const std::size_t K = 2 + rep % 5;
    const auto mats = random_instance(g, K, 3, true);
    const double budget = 2 + 2 * u(g);
    loftq::AllocateOptions ao;
    ao.max_cells = K * (3 + rep % 7);
    const BitAllocation a = loftq::allocate_bits(mats, cand, budget, ao);
    CAPTURE(rep);
    CHECK(a.average_bits <= budget);
    if (a.exact) continue;
    ++coarse;
    CHECK(a.gap_bits > 0);
    const double lowered = budget - a.gap_bits;
    if (lowered >= 2) CHECK(a.total_sq_error <= brute_force(mats, cand, lowered).error * (1 + 1e-12));
    CHECK(a.total_sq_error >= brute_force(mats, cand, budget).error * (1 - 1e-12));
  }
  CHECK(coarse > 100);
}

TEST_CASE("allocate_bits: budget ends, ties, shapes of real models") {
  std::vector<MatrixErrors> mats = {{4096, {9, 4, 1}}, {2048, {8, 3, 2}}, {11008, {7, 5, 3}}};
  const std::vector<int> cand = {2, 3, 4};
  CHECK(loftq::allocate_bits(mats, cand, 4.0).bits == std::vector<int>{4, 4, 4});
  CHECK(loftq::allocate_bits(mats, cand, 2.0).bits == std::vector<int>{2, 2, 2});
  // Equal errors: the fewer bits win.
  const std::vector<MatrixErrors> flat = {{64, {1, 1, 1}}, {64, {2, 2, 2}}};
  CHECK(loftq::allocate_bits(flat, cand, 4.0).bits == std::vector<int>{2, 2});
  // A Llama-7B-like layout (32 layers x 7 projections): the gcd of the
  // element counts is 2^20, so the exact table is small and fast.
  std::vector<MatrixErrors> big;
  std::mt19937_64 g(1);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  for (int l = 0; l < 32; ++l)
    for (int p = 0; p < 7; ++p) {
      const std::int64_t n = p < 4 ? 4096LL * 4096 : 4096LL * 11008;
      const double e2 = static_cast<double>(n) * 1e-4 * u(g);
      big.push_back({n, {e2, e2 * 0.3 * u(g), e2 * 0.08 * u(g)}});
    }
  const auto t0 = std::chrono::steady_clock::now();
  const BitAllocation a = loftq::allocate_bits(big, cand, 2.5);
  const double s = loftq_test::seconds_since(t0);
  CHECK(a.exact);
  CHECK(a.average_bits <= 2.5);
  CHECK(a.average_bits > 2.45);
  CHECK(s < loftq_test::time_bound(5.0));
  int widths[5] = {};
  for (int b : a.bits) ++widths[b];
  CHECK(widths[2] + widths[3] + widths[4] == 224);
  CHECK((widths[2] > 0) + (widths[3] > 0) + (widths[4] > 0) >= 2);
}

TEST_CASE("allocate_bits: bad input is a loftq::Error") {
  const std::vector<int> cand = {2, 3, 4};
  const std::vector<MatrixErrors> mats = {{64, {3, 2, 1}}};
  CHECK_THROWS_AS(loftq::allocate_bits({}, cand, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, cand, 1.99), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, cand, 4.01), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, cand, NAN), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, cand, INFINITY), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, {}, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, {3, 2, 4}, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits(mats, {2, 2, 4}, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits({{64, {3, NAN, 1}}}, cand, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits({{64, {3, INFINITY, 1}}}, cand, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits({{64, {3, -1, 1}}}, cand, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits({{64, {3, 1}}}, cand, 3), loftq::Error);
  CHECK_THROWS_AS(loftq::allocate_bits({{0, {3, 2, 1}}}, cand, 3), loftq::Error);
  CHECK_NOTHROW(loftq::allocate_bits(mats, cand, 2));
  CHECK_NOTHROW(loftq::allocate_bits(mats, cand, 4));
}

TEST_CASE("measure_errors: one LoftQ run per width, absolute squared errors") {
  const std::vector<Eigen::MatrixXf> Ws = {loftq_test::structured(64, 96, 3), loftq_test::structured(32, 64, 4)};
  loftq::Options opt;
  opt.rank = 4;
  opt.iterations = 2;
  const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, 4, 32);
  const std::vector<int> cand = {2, 3, 4};
  const auto me = loftq::measure_errors(Ws, q, cand, opt);
  REQUIRE(me.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(me[i].numel == Ws[i].size());
    REQUIRE(me[i].sq_error.size() == 3);
    CHECK(me[i].sq_error[0] > me[i].sq_error[1]);
    CHECK(me[i].sq_error[1] > me[i].sq_error[2]);
    for (std::size_t j = 0; j < 3; ++j) {
      const auto r = loftq::initialize(Ws[i], loftq::Quantizer(q.kind, cand[j], 32), opt);
      const double direct = (Ws[i] - r.Q - r.A * r.B.transpose()).squaredNorm();
      CHECK(me[i].sq_error[j] == doctest::Approx(direct).epsilon(1e-4));
    }
  }
  // Mixed widths under 3 bits beat all-2-bit and use the budget.
  const auto a = loftq::allocate_bits(me, cand, 3.0);
  CHECK(a.average_bits <= 3.0);
  CHECK(a.total_sq_error < me[0].sq_error[0] + me[1].sq_error[0]);
}

namespace {

// Every assignment of choices; the lowest total error within the budget (INFINITY when none fits).
double brute_choices(const std::vector<loftq::MatrixChoices>& mats, std::int64_t budget) {
  double best = INFINITY;
  std::vector<std::size_t> idx(mats.size(), 0);
  for (;;) {
    std::int64_t cost = 0;
    double err = 0;
    for (std::size_t i = 0; i < mats.size(); ++i) {
      cost += mats[i].cost[idx[i]];
      err += mats[i].sq_error[idx[i]];
    }
    if (cost <= budget) best = std::min(best, err);
    std::size_t i = 0;
    while (i < mats.size() && ++idx[i] == mats[i].cost.size()) idx[i++] = 0;
    if (i == mats.size()) return best;
  }
}

// ggml-like choices: costs of blocks of 256 weights at 84, 110, 144, 176, 210 bytes (Q2_K..Q6_K), or of 32 at 18 and
// 34 (Q4_0, Q8_0), in bits, plus a shared adapter cost; errors falling with the cost, with noise.
std::vector<loftq::MatrixChoices> ggml_like(std::mt19937_64& g, std::size_t K) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<loftq::MatrixChoices> mats(K);
  for (auto& m : mats) {
    const std::int64_t blocks = 1 + static_cast<std::int64_t>(g() % 8),
                       adapter = 16 * static_cast<std::int64_t>(g() % 50);
    const bool k = g() % 3 != 0;
    const std::vector<std::int64_t> bytes =
        k ? std::vector<std::int64_t>{84, 110, 144, 176, 210} : std::vector<std::int64_t>{8 * 18, 8 * 34};
    double e = 10 * u(g) + 1;
    for (std::int64_t b : bytes) {
      m.cost.push_back(8 * b * blocks + adapter);
      m.sq_error.push_back(e);
      e *= 0.3 + 0.6 * u(g);
    }
    if (g() % 4 == 0) std::swap(m.cost.front(), m.cost.back());  // choices need not come in cost order
  }
  return mats;
}

}  // namespace

TEST_CASE("allocate_choices: equals brute-force enumeration, within the budget") {
  std::mt19937_64 g(3);
  int cases = 0;
  for (std::size_t K = 1; K <= 6; ++K)
    for (int rep = 0; rep < 40; ++rep) {
      const auto mats = ggml_like(g, K);
      std::int64_t lo = 0, hi = 0;
      for (const auto& m : mats) {
        lo += *std::min_element(m.cost.begin(), m.cost.end());
        hi += *std::max_element(m.cost.begin(), m.cost.end());
      }
      const std::int64_t budget = rep == 0 ? lo : rep == 1 ? hi : lo + static_cast<std::int64_t>(g() % (hi - lo + 1));
      const loftq::ChoiceAllocation a = loftq::allocate_choices(mats, budget);
      CAPTURE(K);
      CAPTURE(budget);
      REQUIRE(a.exact);
      CHECK(a.gap_cost == 0);
      CHECK(a.total_cost <= budget);
      std::int64_t cost = 0;
      double err = 0;
      for (std::size_t i = 0; i < K; ++i) {
        cost += mats[i].cost[a.choice[i]];
        err += mats[i].sq_error[a.choice[i]];
      }
      CHECK(cost == a.total_cost);
      CHECK(err == doctest::Approx(a.total_sq_error).epsilon(1e-12));
      CHECK(a.total_sq_error == doctest::Approx(brute_choices(mats, budget)).epsilon(1e-12));
      ++cases;
    }
  CHECK(cases == 240);
}

TEST_CASE("allocate_choices: a coarsened table meets the budget and stays within its gap") {
  std::mt19937_64 g(8);
  int coarse = 0;
  for (int rep = 0; rep < 150; ++rep) {
    const std::size_t K = 2 + rep % 4;
    const auto mats = ggml_like(g, K);
    std::int64_t lo = 0, hi = 0;
    for (const auto& m : mats) {
      lo += *std::min_element(m.cost.begin(), m.cost.end());
      hi += *std::max_element(m.cost.begin(), m.cost.end());
    }
    const std::int64_t budget = lo + static_cast<std::int64_t>(g() % (hi - lo + 1));
    loftq::AllocateOptions ao;
    ao.max_cells = K * (2 + rep % 5);
    const loftq::ChoiceAllocation a = loftq::allocate_choices(mats, budget, ao);
    CAPTURE(rep);
    CHECK(a.total_cost <= budget);
    if (a.exact) continue;
    ++coarse;
    CHECK(a.gap_cost > 0);
    if (budget - a.gap_cost >= lo) CHECK(a.total_sq_error <= brute_choices(mats, budget - a.gap_cost) * (1 + 1e-12));
    CHECK(a.total_sq_error >= brute_choices(mats, budget) * (1 - 1e-12));
  }
  CHECK(coarse > 50);
}

TEST_CASE("allocate_choices: known answers, ties and bad input") {
  // Two matrices: {cost 10 err 5, cost 20 err 1}, {cost 10 err 4, cost 30 err 0}.
  const std::vector<loftq::MatrixChoices> m = {{{10, 20}, {5, 1}}, {{10, 30}, {4, 0}}};
  CHECK(loftq::allocate_choices(m, 20).choice == std::vector<std::size_t>{0, 0});
  CHECK(loftq::allocate_choices(m, 30).choice == std::vector<std::size_t>{1, 0});  // 1 + 4 < 5 + 4
  // At 40, {0, 1} (cost 40) ties {1, 0} (cost 30) at 5: the cheaper total wins.
  CHECK(loftq::allocate_choices(m, 40).choice == std::vector<std::size_t>{1, 0});
  CHECK(loftq::allocate_choices(m, 50).choice == std::vector<std::size_t>{1, 1});
  CHECK(loftq::allocate_choices(m, 50).total_cost == 50);
  // Equal errors: the cheaper total wins.
  const std::vector<loftq::MatrixChoices> tie = {{{8, 16}, {2, 2}}};
  CHECK(loftq::allocate_choices(tie, 100).choice == std::vector<std::size_t>{0});
  // Every choice of the same cost: the lowest error.
  CHECK(loftq::allocate_choices({{{7, 7, 7}, {3, 1, 2}}}, 7).choice == std::vector<std::size_t>{1});
  auto code = [](const std::vector<loftq::MatrixChoices>& mats, std::int64_t budget) {
    try {
      loftq::allocate_choices(mats, budget);
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return loftq::Errc::cancelled;  // no error: fails the checks below
  };
  CHECK(code({}, 10) == loftq::Errc::invalid_argument);
  CHECK(code(m, 19) == loftq::Errc::invalid_argument);  // below 10 + 10
  CHECK(code({{{}, {}}}, 10) == loftq::Errc::invalid_argument);
  CHECK(code({{{1, 2}, {1}}}, 10) == loftq::Errc::invalid_argument);
  CHECK(code({{{-1}, {1}}}, 10) == loftq::Errc::invalid_argument);
  CHECK(code({{{1}, {NAN}}}, 10) == loftq::Errc::non_finite);
  CHECK(code({{{1}, {-1}}}, 10) == loftq::Errc::non_finite);
}
