#pragma once
// Mixed precision under a bit budget: choose a bit width per matrix (from
// candidates such as 2, 3, 4) to minimize the total LoftQ error subject to an
// average number of code bits per weight.
//
//   minimize   sum_i e_i(b_i)                 e_i(b) = ||W_i - Q_i - A_i B_i^T||^2 at width b
//   subject to sum_i n_i b_i <= budget * sum_i n_i,   b_i in candidates
//
// The errors are absolute squared Frobenius errors, so they add across
// matrices (the total is ||W - Q - A B^T||^2 over the whole model), and each
// matrix is weighted by its element count n_i.
//
// What the budget counts: code bits only, the "2.5 bits" of the usual
// shorthand. The block scales add the same 32 / block_size bits to every
// matrix whatever its width (0.5 at block 64; 0.127 with double quantization),
// so they shift the storage cost by a constant and do not change the choice;
// storage bits per weight = average code bits + that overhead.
//
// Solver: an exact multiple-choice knapsack by dynamic programming over the
// extra bits above the smallest candidate, in units of
//   g = gcd(n_i) * gcd(b_j - b_min),
// so every cost is a whole number of units and the DP is exact (not a
// discretisation). Weight matrices share large factors (4096 x 4096 and
// 4096 x 11008 have gcd 2^20), so the table stays small. When it would exceed
// `max_cells` entries (matrices x budget units), the costs are rounded up to a
// coarser unit U: the result still meets the budget, and its error is at most
// the optimum for the budget reduced by gap_bits = K * U / sum n_i (K
// matrices); BitAllocation::gap_bits reports it (0 when exact). The LoftQ
// authors' own mixed precision simply makes the first layers 4-bit; LQ-LoRA
// solves the same kind of problem with an integer-programming solver.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "error.hpp"
#include "initialize.hpp"
#include "quantizer.hpp"

namespace loftq {

// One matrix of the problem.
struct MatrixErrors {
  std::int64_t numel = 0;        // number of weights
  std::vector<double> sq_error;  // ||W - Q - A B^T||^2 at each candidate width, in candidate order
};

struct BitAllocation {
  std::vector<int> bits;      // chosen width per matrix
  double total_sq_error = 0;  // sum of the chosen errors
  double average_bits = 0;    // code bits per weight: sum n_i b_i / sum n_i
  bool exact = true;          // the DP ran in exact units (the optimum)
  double gap_bits = 0;        // when not exact: optimal for a budget this much lower
};

struct AllocateOptions {
  std::size_t max_cells = std::size_t{1} << 24;  // DP table size limit (bytes of backtracking state)
};

namespace detail {

// The smallest multiple of g (the costs' common unit) whose table of
// cap / unit + 1 states per matrix fits cells_per_matrix: exact when g fits.
inline std::int64_t knapsack_unit(std::int64_t g, std::int64_t cap, std::int64_t cells_per_matrix) {
  std::int64_t unit = g;
  if (cap / unit + 1 > cells_per_matrix) {
    const std::int64_t d = std::max<std::int64_t>(1, cells_per_matrix - 1);
    unit = g * std::max<std::int64_t>(1, (cap / g + d - 1) / d);
    while (cap / unit + 1 > cells_per_matrix) unit += g;
  }
  return unit;
}

// The exact multiple-choice knapsack: choice j of matrix i costs w[i][j]
// units and mats[i].sq_error[j]; the pick of lowest total error within S - 1
// units. Among equal totals the earlier choice and the fewer units stay.
template <class Matrices>
std::vector<std::size_t> knapsack_pick(const Matrices& mats, const std::vector<std::vector<std::int64_t>>& w,
                                       std::int64_t S) {
  const std::size_t K = w.size();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> dp(static_cast<std::size_t>(S), inf), next(static_cast<std::size_t>(S));
  std::vector<std::uint8_t> choice(K * static_cast<std::size_t>(S));
  dp[0] = 0;
  for (std::size_t i = 0; i < K; ++i) {
    std::fill(next.begin(), next.end(), inf);
    std::uint8_t* ch = choice.data() + i * static_cast<std::size_t>(S);
    for (std::size_t j = 0; j < w[i].size(); ++j) {
      const std::int64_t wj = w[i][j];
      const double e = mats[i].sq_error[j];
      for (std::int64_t c = wj; c < S; ++c) {
        const double v = dp[static_cast<std::size_t>(c - wj)] + e;
        // Strictly better only: among equal totals the fewer bits (smaller j) stay.
        if (v < next[static_cast<std::size_t>(c)]) {
          next[static_cast<std::size_t>(c)] = v;
          ch[c] = static_cast<std::uint8_t>(j);
        }
      }
    }
    dp.swap(next);
  }
  std::int64_t best = 0;
  for (std::int64_t c = 1; c < S; ++c)
    if (dp[static_cast<std::size_t>(c)] < dp[static_cast<std::size_t>(best)]) best = c;
  std::vector<std::size_t> pick(K);
  for (std::size_t i = K; i-- > 0;) {
    const std::size_t j = choice[i * static_cast<std::size_t>(S) + static_cast<std::size_t>(best)];
    pick[i] = j;
    best -= w[i][j];
  }
  return pick;
}

inline void check_candidates(const std::vector<int>& bits) {
  require(!bits.empty(), Errc::invalid_argument, "allocate_bits: no candidate bit widths");
  for (std::size_t j = 0; j < bits.size(); ++j) {
    require(bits[j] >= 1 && bits[j] <= 32, Errc::invalid_argument,
            "allocate_bits: candidate width " + std::to_string(bits[j]) + " is outside 1..32");
    require(j == 0 || bits[j] > bits[j - 1], Errc::invalid_argument,
            "allocate_bits: candidate widths must be strictly increasing");
  }
}

}  // namespace detail

// The width per matrix (an entry of `candidates`) minimizing the total error
// with average code bits per weight <= budget. Throws loftq::Error for an
// empty problem, a budget outside [min, max] candidate or not finite,
// non-finite or negative errors, or a row of errors of the wrong length. Ties
// go to fewer bits.
inline BitAllocation allocate_bits(const std::vector<MatrixErrors>& mats, const std::vector<int>& candidates,
                                   double budget, const AllocateOptions& ao = {}) {
  detail::check_candidates(candidates);
  detail::require(!mats.empty(), Errc::invalid_argument, "allocate_bits: no matrices");
  const int bmin = candidates.front(), bmax = candidates.back();
  detail::require(std::isfinite(budget) && budget >= bmin && budget <= bmax, Errc::invalid_argument,
                  "allocate_bits: budget " + std::to_string(budget) +
                      " bits per weight is outside the candidate range " + std::to_string(bmin) + ".." +
                      std::to_string(bmax));
  detail::require(ao.max_cells >= mats.size(), Errc::invalid_argument,
                  "allocate_bits: max_cells is below the matrix count");
  const std::size_t K = mats.size(), J = candidates.size();
  std::int64_t total = 0, gn = 0;
  for (std::size_t i = 0; i < K; ++i) {
    const MatrixErrors& M = mats[i];
    detail::require(M.numel >= 1, Errc::invalid_argument,
                    "allocate_bits: matrix " + std::to_string(i) + " has no elements");
    detail::require(M.sq_error.size() == J, Errc::invalid_argument,
                    "allocate_bits: matrix " + std::to_string(i) + " has " + std::to_string(M.sq_error.size()) +
                        " errors for " + std::to_string(J) + " candidate widths");
    for (double e : M.sq_error)
      detail::require(std::isfinite(e) && e >= 0, Errc::non_finite,
                      "allocate_bits: matrix " + std::to_string(i) + " has a non-finite or negative error");
    detail::require(total <= std::numeric_limits<std::int64_t>::max() / 64 - M.numel, Errc::invalid_argument,
                    "allocate_bits: too many weights");
    total += M.numel;
    gn = std::gcd(gn, M.numel);
  }
  std::int64_t gb = 0;
  for (int b : candidates) gb = std::gcd<std::int64_t>(gb, b - bmin);

  BitAllocation out;
  out.bits.assign(K, bmin);
  auto finish = [&](const std::vector<std::size_t>& pick) {
    double err = 0, bits_sum = 0;
    for (std::size_t i = 0; i < K; ++i) {
      out.bits[i] = candidates[pick[i]];
      err += mats[i].sq_error[pick[i]];
      bits_sum += static_cast<double>(mats[i].numel) * out.bits[i];
    }
    out.total_sq_error = err;
    out.average_bits = bits_sum / static_cast<double>(total);
    return out;
  };
  if (J == 1) return finish(std::vector<std::size_t>(K, 0));

  // Extra bits allowed over all-bmin; lowered until the average computed the
  // way it is reported cannot exceed the budget through rounding.
  std::int64_t cap = static_cast<std::int64_t>(std::floor((budget - bmin) * static_cast<double>(total)));
  while (cap > 0 && (static_cast<double>(bmin) * static_cast<double>(total) + static_cast<double>(cap)) /
                            static_cast<double>(total) >
                        budget)
    --cap;
  // Spending more than every matrix at bmax is pointless: cap the table there.
  cap = std::min<std::int64_t>(cap, (bmax - bmin) * total);

  // Unit: exact when the table fits, else the smallest multiple of g that fits.
  const std::int64_t g = gn * gb;
  const std::int64_t cells_per_matrix = static_cast<std::int64_t>(ao.max_cells / K);
  const std::int64_t unit = detail::knapsack_unit(g, cap, cells_per_matrix);
  out.exact = unit == g;
  out.gap_bits = out.exact ? 0.0 : static_cast<double>(K) * static_cast<double>(unit) / static_cast<double>(total);
  const std::int64_t S = cap / unit + 1;  // states: extra units spent 0..S-1

  std::vector<std::vector<std::int64_t>> w(K, std::vector<std::int64_t>(J));
  for (std::size_t i = 0; i < K; ++i)
    for (std::size_t j = 0; j < J; ++j) {
      const std::int64_t cost = mats[i].numel * (candidates[j] - bmin);  // < 64 * total: no overflow
      w[i][j] = (cost + unit - 1) / unit;                                // rounded up: the budget holds in exact bits
    }
  return finish(detail::knapsack_pick(mats, w, S));
}

// The same knapsack over choices of arbitrary storage cost: formats whose
// bits per weight are not whole numbers and whose block fields differ (ggml's
// types: 84 bytes per 256 weights for Q2_K, 34 per 32 for Q8_0, ...), with a
// per-matrix cost that every choice shares (a LoRA adapter) counted as well.
//
//   minimize sum_i e_i(c_i)   subject to sum_i cost_i(c_i) <= budget
//
// Costs are whole units (bits). Exact by dynamic programming in units of the
// gcd of the costs above each matrix's cheapest choice; past `max_cells` the
// extra costs are rounded up to a coarser unit U as in allocate_bits (the
// budget still holds; the error is at most the optimum for a budget lower by
// gap_cost = K * U).
struct MatrixChoices {
  std::vector<std::int64_t> cost;  // what each choice stores, >= 0
  std::vector<double> sq_error;    // its error, in the same order
};

struct ChoiceAllocation {
  std::vector<std::size_t> choice;  // per matrix, an index into its choices
  double total_sq_error = 0;
  std::int64_t total_cost = 0;
  bool exact = true;
  std::int64_t gap_cost = 0;  // when not exact: optimal for a budget this much lower
};

// The choice per matrix minimizing the total error with total cost <= budget.
// Throws loftq::Error for no matrices, a matrix without choices or with more
// than 255, mismatched or negative costs, non-finite or negative errors, or
// a budget below the cheapest choices' total. Ties go to the lower total
// cost, then to the earlier choice.
inline ChoiceAllocation allocate_choices(const std::vector<MatrixChoices>& mats, std::int64_t budget,
                                         const AllocateOptions& ao = {}) {
  detail::require(!mats.empty(), Errc::invalid_argument, "allocate_choices: no matrices");
  detail::require(ao.max_cells >= mats.size(), Errc::invalid_argument,
                  "allocate_choices: max_cells is below the matrix count");
  const std::size_t K = mats.size();
  const std::int64_t big = std::numeric_limits<std::int64_t>::max() / 4;
  std::int64_t base = 0, extra_max = 0, g = 0;
  std::vector<std::int64_t> lo(K);
  for (std::size_t i = 0; i < K; ++i) {
    const MatrixChoices& M = mats[i];
    const std::string what = "allocate_choices: matrix " + std::to_string(i);
    detail::require(!M.cost.empty() && M.cost.size() <= 255, Errc::invalid_argument,
                    what + " has 0 or over 255 choices");
    detail::require(M.sq_error.size() == M.cost.size(), Errc::invalid_argument,
                    what + " has " + std::to_string(M.sq_error.size()) + " errors for " +
                        std::to_string(M.cost.size()) + " choices");
    for (std::size_t j = 0; j < M.cost.size(); ++j) {
      detail::require(M.cost[j] >= 0 && M.cost[j] <= big, Errc::invalid_argument, what + " has a cost out of range");
      detail::require(std::isfinite(M.sq_error[j]) && M.sq_error[j] >= 0, Errc::non_finite,
                      what + " has a non-finite or negative error");
    }
    lo[i] = *std::min_element(M.cost.begin(), M.cost.end());
    const std::int64_t hi = *std::max_element(M.cost.begin(), M.cost.end());
    detail::require(base <= big - lo[i] && extra_max <= big - (hi - lo[i]), Errc::invalid_argument,
                    "allocate_choices: the costs overflow");
    base += lo[i];
    extra_max += hi - lo[i];
    for (std::int64_t c : M.cost) g = std::gcd(g, c - lo[i]);
  }
  detail::require(budget >= base, Errc::invalid_argument,
                  "allocate_choices: budget " + std::to_string(budget) + " is below the cheapest choices' total " +
                      std::to_string(base));
  const std::int64_t cap = std::min(budget - base, extra_max);

  ChoiceAllocation out;
  auto finish = [&](const std::vector<std::size_t>& pick) {
    out.choice = pick;
    out.total_sq_error = 0;
    out.total_cost = 0;
    for (std::size_t i = 0; i < K; ++i) {
      out.total_sq_error += mats[i].sq_error[pick[i]];
      out.total_cost += mats[i].cost[pick[i]];
    }
    return out;
  };
  if (g == 0) {  // every matrix's choices cost the same: the lowest error each
    std::vector<std::size_t> pick(K);
    for (std::size_t i = 0; i < K; ++i)
      pick[i] = static_cast<std::size_t>(std::min_element(mats[i].sq_error.begin(), mats[i].sq_error.end()) -
                                         mats[i].sq_error.begin());
    return finish(pick);
  }
  const std::int64_t cells_per_matrix = static_cast<std::int64_t>(ao.max_cells / K);
  const std::int64_t unit = detail::knapsack_unit(g, cap, cells_per_matrix);
  out.exact = unit == g;
  out.gap_cost = out.exact ? 0 : static_cast<std::int64_t>(K) * unit;
  const std::int64_t S = cap / unit + 1;
  std::vector<std::vector<std::int64_t>> w(K);
  for (std::size_t i = 0; i < K; ++i)
    for (const std::int64_t cost : mats[i].cost) w[i].push_back((cost - lo[i] + unit - 1) / unit);  // rounded up
  return finish(detail::knapsack_pick(mats, w, S));
}

// ||W - Q - A B^T||^2 of a result, from its relative error and ||W||^2.
template <class Scalar>
double squared_error(const Result<Scalar>& r, double w_squared_norm) {
  return r.error() * r.error() * w_squared_norm;
}

// Runs LoftQ on W at each candidate width (quantizer kind, block size and
// symmetry from q; its bit width is ignored) and collects the squared errors.
// Costs one initialize per candidate; the results are deterministic, so the
// chosen width can be recomputed later instead of kept.
template <class Derived>
MatrixErrors measure_errors(const Eigen::MatrixBase<Derived>& W, const Quantizer& q, const std::vector<int>& candidates,
                            const Options& opt = {}) {
  detail::check_candidates(candidates);
  MatrixErrors me;
  me.numel = static_cast<std::int64_t>(W.rows()) * W.cols();
  const double w2 = W.template cast<double>().squaredNorm();
  for (int b : candidates) {
    const Quantizer qb(q.kind, b, q.block_size, q.symmetric);
    me.sq_error.push_back(squared_error(initialize(W, qb, opt), w2));
  }
  return me;
}

// The same over a list of matrices.
template <class MatrixT>
std::vector<MatrixErrors> measure_errors(const std::vector<MatrixT>& Ws, const Quantizer& q,
                                         const std::vector<int>& candidates, const Options& opt = {}) {
  std::vector<MatrixErrors> out;
  out.reserve(Ws.size());
  for (const MatrixT& W : Ws) out.push_back(measure_errors(W, q, candidates, opt));
  return out;
}

}  // namespace loftq
